package node

import (
	"context"
	"fmt"

	"github.com/mdsync/mdsync/engine"
)

// Settle waits until every partition this node serves (Owned) has applied
// every record appended to the log before Settle was called; then reads of
// the store (Devices, Timeline, Digest, …) reflect all of them.
//
// It waits on the projector (WaitApplied, which wakes when a batch
// commits), not by polling. It returns nil at once on an empty log. It
// returns ctx's error when ctx ends first; the projector's error when it
// stopped; an error when the node closes or, with a Group, when a
// partition moves away while Settle waits for it (an error naming the
// owner, as Submit's). Partitions other nodes serve are not waited for.
//
// Settle does not wait for the relay: the fan-out copies it appends for
// the records Settle covered are appended after the call, so Settle does
// not cover them. With one partition the copies are applied inline and
// Settle covers them; with more, waiting for them needs a signal from the
// relay (projections has none yet).
func (n *Node) Settle(ctx context.Context) error {
	owned := n.Owned()
	ends := make([]int64, len(owned))
	for i, p := range owned {
		end, err := n.Log.End(ctx, p)
		if err != nil {
			return fmt.Errorf("node: settle: end of partition %d: %w", p, err)
		}
		ends[i] = end
	}
	wait := n.Store.WaitApplied
	if n.group != nil {
		wait = n.group.WaitApplied
	}
	for i, p := range owned {
		if ends[i] == 0 {
			continue
		}
		if err := wait(ctx, engine.Position{Partition: p, Offset: ends[i] - 1}); err != nil {
			return fmt.Errorf("node: settle partition %d: %w", p, err)
		}
	}
	return nil
}

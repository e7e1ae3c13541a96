package node

import (
	"context"
	"fmt"
	"slices"

	"github.com/mdsync/mdsync/engine"
)

// Settle waits until the log is at a fixed point for the partitions this
// node serves (Owned): every record appended to them before Settle
// returns is applied, and every fan-out copy those records produce is
// relayed to its recipient's partition and applied there. Reads of the
// store (Devices, Timeline, Digest, …) then reflect all of them.
//
// It reads every served partition's end, waits until each is applied
// (WaitApplied) and relayed (WaitRelayed), and repeats while the ends
// grew (the relay's copies, or new appends), until a round finds them
// unchanged. Every wait is on a signal of the projector or the relay,
// not a poll. It returns nil at once on an empty log. It returns ctx's
// error when ctx ends first; the projector's or the relay's error when
// it stopped; an error when the node closes or, with a Group, when a
// partition moves away while Settle waits for it (an error naming the
// owner, as Submit's). Partitions other nodes serve are not waited for,
// so copies relayed to them are not either. Under a steady stream of
// appends Settle returns only once they pause.
func (n *Node) Settle(ctx context.Context) error {
	waitApplied, waitRelayed := n.Store.WaitApplied, n.Store.WaitRelayed
	if n.group != nil {
		waitApplied, waitRelayed = n.group.WaitApplied, n.group.WaitRelayed
	}
	var prev []int64
	for {
		owned := n.Owned()
		ends := make([]int64, n.Log.Partitions())
		for _, p := range owned {
			end, err := n.Log.End(ctx, p)
			if err != nil {
				return fmt.Errorf("node: settle: end of partition %d: %w", p, err)
			}
			ends[p] = end
		}
		if slices.Equal(ends, prev) {
			return nil
		}
		for _, p := range owned {
			if ends[p] == 0 {
				continue
			}
			if err := waitApplied(ctx, engine.Position{Partition: p, Offset: ends[p] - 1}); err != nil {
				return fmt.Errorf("node: settle partition %d: %w", p, err)
			}
			if err := waitRelayed(ctx, p, ends[p]-1); err != nil {
				return fmt.Errorf("node: settle relay of partition %d: %w", p, err)
			}
		}
		prev = ends
	}
}

package engine

// TEMPORARY (branch gw): a stand-in for main's batch API (Begin, Pending,
// Resolved) with the same signatures, so the gateway builds before main's
// lands. Begin here submits the ops one after the other, waiting for each
// decision: correct (in order, durable on return) but not pipelined.
// Delete this file when merging main's Begin.

import (
	"context"

	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// Pending is one operation handed to Begin.
type Pending struct {
	done chan struct{}
	d    *pb.Decision
	err  error
}

// Wait returns the operation's decision, or the error that refused it.
func (p *Pending) Wait(ctx context.Context) (*pb.Decision, error) {
	select {
	case <-p.done:
		return p.d, p.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Resolved returns a Pending that is already decided.
func Resolved(d *pb.Decision, err error) *Pending {
	p := &Pending{done: make(chan struct{}), d: d, err: err}
	close(p.done)
	return p
}

// Begin submits ops in order (shim: one Submit after the other).
func (e *Engine) Begin(ctx context.Context, ops []*pb.Event) []*Pending {
	out := make([]*Pending, len(ops))
	for i, op := range ops {
		out[i] = Resolved(e.Submit(ctx, op))
	}
	return out
}

// Package delivery is the delivery flow of one process, wired in one
// place: what happens to the effects of a committed projection batch.
//
//	projector commits a batch          projections.Store (OnApplied)
//	  → Publisher: bus.EffectsOf       ended sessions first, then entries
//	  → bus.Bus.Publish                in-process, or a Kafka topic seen by every process
//	  → handler "gateway"              Gateway.End closes an ended session's connection;
//	                                   Gateway.Deliver wakes the user's connections,
//	                                   which read their timeline from the last seq sent
//	  → handler "push" (optional)      a message for a user with no connected device,
//	                                   served here: push.Candidates → Outbox.Enqueue
//
// Effects only speed things up: the rules live in the state derived from
// the log. A lost deliver is read at the connection's next wake-up (the
// gateway's session sweep wakes every follower), a lost end is found by
// the same sweep (invariant 9), and a device's next sync brings anything it
// missed. See docs/architecture.md for the whole flow.
package delivery

import (
	"context"
	"errors"

	"github.com/mdsync/mdsync/adapters/bus"
	"github.com/mdsync/mdsync/adapters/push"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// Gateway is what the flow drives of the device gateway
// (*gateway.Gateway implements it). Every method is quick (it wakes or
// closes connections, it does not write to sockets) and safe for
// concurrent use.
type Gateway interface {
	// Deliver wakes the user's connected devices: entry was appended to
	// the user's timeline.
	Deliver(app, user string, entry *pb.TimelineEntry)
	// End closes the connection of the session e ended, after a kicked
	// frame carrying e's code.
	End(app string, e *pb.Ended)
	// Connected reports whether any device of the user is connected here.
	Connected(app, user string) bool
}

// Owner tells whether a user's partition is served here (*node.Node
// implements it).
type Owner interface {
	Owner(app, user string) (addr string, local bool)
}

// Outbox queues offline push entries durably (*push.Outbox implements
// it); Enqueue returns once they are stored.
type Outbox interface {
	Enqueue(entries ...push.Entry) error
}

// Options configure Wire. Gateway is required.
type Options struct {
	// Gateway receives deliveries and session ends. Required.
	Gateway Gateway
	// Outbox, when set, receives offline push entries. Default nil: no push.
	Outbox Outbox
	// Owner; default nil: this process serves every user.
	Owner Owner
}

// Publisher returns the projector's hook (projections.Options.OnApplied,
// node.Options.OnApplied): it publishes each committed batch's effects on
// b, then hands the batch to each observer (metrics, the console feed) in
// order. Observers must be quick; they run on the projector's goroutine.
func Publisher(b *bus.Bus, observers ...func(projections.Applied)) func(p int32, a projections.Applied) {
	return func(_ int32, a projections.Applied) {
		b.Publish(bus.EffectsOf(a)...)
		for _, o := range observers {
			o(a)
		}
	}
}

// Wire registers the flow's handlers on b, before b.Run: "gateway" always,
// "push" when o.Outbox is set. It returns an error for missing options.
func Wire(b *bus.Bus, o Options) error {
	if o.Gateway == nil {
		return errors.New("delivery: Options.Gateway is required")
	}
	b.Handle("gateway", Gatewayed(o.Gateway))
	if o.Outbox != nil {
		b.Handle("push", Pushed(o.Gateway, o.Owner, o.Outbox))
	}
	return nil
}

// Gatewayed is the "gateway" handler: an ended session's connection is
// closed (Gateway.End), a delivered entry wakes the user's connections
// (Gateway.Deliver). It never fails.
func Gatewayed(gw Gateway) func(context.Context, bus.Effect) error {
	return func(_ context.Context, e bus.Effect) error {
		switch e.Kind {
		case bus.EffectDeliver:
			gw.Deliver(e.App, e.User, e.Entry)
		case bus.EffectEnded:
			gw.End(e.App, e.Ended)
		}
		return nil
	}
}

// Pushed is the "push" handler: offline push for a delivered entry whose
// user has no device connected. Devices connect to the process that owns
// their user's partition (others answer 1018), so only the owner knows
// that none is, and only it pushes: with a Kafka bus every process sees
// every effect. owner nil means every user is served here. An Enqueue
// error is returned, so the bus retries it.
func Pushed(gw Gateway, owner Owner, out Outbox) func(context.Context, bus.Effect) error {
	return func(_ context.Context, e bus.Effect) error {
		if e.Kind != bus.EffectDeliver || gw.Connected(e.App, e.User) {
			return nil
		}
		if owner != nil {
			if _, local := owner.Owner(e.App, e.User); !local {
				return nil
			}
		}
		if pe, ok := push.Candidates(e.App, e.User, e.Entry); ok {
			return out.Enqueue(pe)
		}
		return nil
	}
}

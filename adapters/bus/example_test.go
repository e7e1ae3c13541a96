package bus_test

import (
	"context"
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mdsync/mdsync/adapters/bus"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// The wiring of a process: the projector's OnApplied publishes, the
// gateway handles (here a stand-in that prints what a gateway would do).
func Example() {
	b, err := bus.New(context.Background(), bus.Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		panic(err)
	}
	defer b.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	b.Handle("gateway", func(ctx context.Context, e bus.Effect) error {
		defer wg.Done()
		switch e.Kind {
		case bus.EffectDeliver: // gateway.Deliver(e.App, e.User, e.Entry)
			fmt.Printf("wake %s/%s at seq %d\n", e.App, e.User, e.Entry.Seq)
		case bus.EffectEnded: // gateway.End(e.App, e.Ended)
			fmt.Printf("kick %s/%s device %s code %d\n", e.App, e.User, e.Ended.Session.LoginId, e.Ended.Code)
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	<-b.Running()

	onApplied := func(_ int32, a projections.Applied) { b.Publish(bus.EffectsOf(a)...) }
	onApplied(0, projections.Applied{
		Decisions: []*pb.Decision{{App: "app", User: "alice", Ended: []*pb.Ended{{User: "alice", Code: 206, Session: &pb.Session{LoginId: "phone"}}}}},
		Entries:   []projections.AppliedEntry{{App: "app", User: "bob", Entry: &pb.TimelineEntry{Seq: 42}}},
	})
	wg.Wait()
	cancel()
	if err := <-done; err != nil {
		panic(err)
	}
	// Output:
	// kick app/alice device phone code 206
	// wake app/bob at seq 42
}

package bus

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkEffect is the bus's cost per effect in-process with the two
// handlers a server wires (gateway and push; here they only count),
// against raw: a Watermill GoChannel publish and subscribe of a
// pre-encoded message, with no bus around it. Compare bus/raw in one run.
func BenchmarkEffect(b *testing.B) {
	const batch = 64 // effects per Publish, like one projector batch
	effects := make([]Effect, batch)
	for i := range effects {
		effects[i] = deliver("u", uint64(i+1))
	}
	b.Run("raw", func(b *testing.B) {
		gc := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, watermill.NopLogger{})
		defer gc.Close()
		msgs, err := gc.Subscribe(context.Background(), "t")
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			for i := 0; i < b.N; i++ {
				(<-msgs).Ack()
			}
			close(done)
		}()
		payload := make([]byte, 200)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := gc.Publish("t", message.NewMessage("id", payload)); err != nil {
				b.Fatal(err)
			}
		}
		<-done
	})
	b.Run("bus", func(b *testing.B) {
		bus, err := New(context.Background(), Options{Registerer: prometheus.NewRegistry()})
		if err != nil {
			b.Fatal(err)
		}
		done, n := make(chan struct{}), 0
		bus.Handle("gateway", func(context.Context, Effect) error { return nil })
		bus.Handle("push", func(context.Context, Effect) error {
			if n++; n == b.N {
				close(done)
			}
			return nil
		})
		go func() { _ = bus.Run(context.Background()) }()
		defer bus.Close()
		<-bus.Running()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i += batch {
			bus.Publish(effects[:min(batch, b.N-i)]...)
		}
		<-done
	})
}

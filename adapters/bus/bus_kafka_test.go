package bus

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	kt "github.com/mdsync/mdsync/adapters/internal/testutil"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kfake"
)

// kafkaBrokers are the brokers of MDSYNC_KAFKA_BROKERS, or an in-process
// kfake cluster's.
func kafkaBrokers(t *testing.T) []string { return kt.Brokers(t) }

func uniqueTopic(t *testing.T) string { return kt.UniqueTopic(t) }

func kafkaOptions(t *testing.T, brokers []string, topic string) Options {
	// ReadMaxWait 1 s: each Close waits for the fetches in flight.
	return Options{Brokers: brokers, Topic: topic, Partitions: 4, Registerer: prometheus.NewRegistry(), ReadMaxWait: time.Second,
		Logger: slog.New(slog.NewTextHandler(newTestWriter(t), &slog.HandlerOptions{Level: slog.LevelWarn}))}
}

// testWriter logs through t while the test runs and to stderr after it:
// kafka-go's readers, closed in the background, may still warn after the
// test (one of Watermill's suite's subtests) has completed, and t.Log then
// panics. The cleanup and every t.Log hold mu, so none runs after it.
type testWriter struct {
	t    *testing.T
	mu   *sync.Mutex
	done *bool
}

func newTestWriter(t *testing.T) testWriter {
	w := testWriter{t: t, mu: new(sync.Mutex), done: new(bool)}
	t.Cleanup(func() {
		w.mu.Lock()
		*w.done = true
		w.mu.Unlock()
	})
	return w
}

func (w testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if *w.done {
		fmt.Fprintf(os.Stderr, "%s (after %s)\n", strings.TrimSpace(string(p)), w.t.Name())
		return len(p), nil
	}
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// Two processes on one topic: each one's handlers get every effect either
// published (no shared consumer group), each user's effects in order.
func TestKafkaTwoProcessesEveryEffect(t *testing.T) {
	brokers := kafkaBrokers(t)
	topic := uniqueTopic(t)
	var recs [2][2]*recorder
	var buses [2]*Bus
	for p := range buses {
		recs[p] = [2]*recorder{newRecorder(), newRecorder()}
		buses[p] = startBus(t, kafkaOptions(t, brokers, topic), func(b *Bus) {
			b.Handle("gateway", recs[p][0].handle)
			b.Handle("outbox", recs[p][1].handle)
		})
	}
	const perUser, users = 20, 5
	for seq := 1; seq <= perUser; seq++ {
		for u := range users {
			// Each user's effects come from one process (as a user's
			// partition is projected by one), alternating by user.
			buses[u%2].Publish(deliver(fmt.Sprint("u", u), uint64(seq)))
		}
	}
	for p := range recs {
		for h, r := range recs[p] {
			got := r.wait(t, perUser*users)
			last := map[string]uint64{}
			for _, e := range got {
				if e.Entry.Seq != last[e.User]+1 {
					t.Fatalf("process %d handler %d: %s seq %d after %d", p, h, e.User, e.Entry.Seq, last[e.User])
				}
				last[e.User] = e.Entry.Seq
				if e.Epoch != "ep1" || e.App != "app" || e.Entry.EntryId != fmt.Sprintf("ev-%s-%d", e.User, e.Entry.Seq) {
					t.Fatalf("effect decoded as %+v", e)
				}
			}
			if len(got) != perUser*users {
				t.Fatalf("process %d handler %d got %d effects, want %d", p, h, len(got), perUser*users)
			}
		}
	}
	// A writer learns of its ack after the readers may have the records.
	published := eventually(func() float64 {
		return testutil.ToFloat64(buses[0].m.published) + testutil.ToFloat64(buses[1].m.published)
	}, perUser*users)
	if published != perUser*users {
		t.Errorf("published_total summed %v", published)
	}
}

// The Kafka subscriber starts at the end when it subscribes, holds a
// message until it is acked and sends a nacked one again.
func TestKafkaSubscriberNackRedelivers(t *testing.T) {
	o := kafkaOptions(t, kafkaBrokers(t), uniqueTopic(t))
	o.EnsureDefaults()
	o.Partitions = 1 // one partition: a single order to check
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k, err := newKafka(ctx, &o, o.Logger)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	publish := func(seqs ...uint64) {
		t.Helper()
		for _, s := range seqs {
			m, err := encode(deliver("u", s))
			if err != nil {
				t.Fatal(err)
			}
			if err := k.pub.Publish(o.Topic, m); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(1) // before Subscribe: not this subscriber's business
	ch, err := k.sub.Subscribe(ctx, o.Topic)
	if err != nil {
		t.Fatal(err)
	}
	publish(2, 3)
	next := func() (*message.Message, Effect) {
		t.Helper()
		select {
		case m := <-ch:
			e, err := decode(m)
			if err != nil {
				t.Fatal(err)
			}
			return m, e
		case <-ctx.Done():
			t.Fatal("no message")
		}
		return nil, Effect{}
	}
	m1, first := next()
	if first.Entry.Seq != 2 {
		t.Fatalf("first message seq %d, want 2 (1 was published before Subscribe)", first.Entry.Seq)
	}
	select {
	case m := <-ch:
		t.Fatalf("message %s sent before the first was acked", m.UUID)
	case <-time.After(100 * time.Millisecond):
	}
	m1.Nack()
	m2, again := next()
	if again.Entry.Seq != 2 || m2.UUID != m1.UUID || !sameEffect(again, first) {
		t.Fatalf("after nack got seq %d id %s, want seq 2 id %s", again.Entry.Seq, m2.UUID, m1.UUID)
	}
	m2.Ack()
	m3, e := next()
	if e.Entry.Seq != 3 {
		t.Fatalf("after ack got seq %d, want 3", e.Entry.Seq)
	}
	m3.Ack()
	// Close ends the subscription: the channel is closed.
	if err := k.sub.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("message after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed after Close")
	}
}

// A topic that exists already is used with its own partition count.
func TestKafkaExistingTopic(t *testing.T) {
	brokers := kafkaBrokers(t)
	topic := uniqueTopic(t)
	o := kafkaOptions(t, brokers, topic)
	o.Partitions = 3
	r1 := newRecorder()
	startBus(t, o, func(b *Bus) { b.Handle("h", r1.handle) })
	o2 := kafkaOptions(t, brokers, topic)
	o2.Partitions = 6 // ignored: the topic has 3
	r2 := newRecorder()
	b2 := startBus(t, o2, func(b *Bus) { b.Handle("h", r2.handle) })
	b2.Publish(deliver("a", 1), deliver("b", 1), deliver("c", 1))
	r1.wait(t, 3)
	r2.wait(t, 3)
}

// With the broker gone, a publish fails within its bounds and the effects
// are counted as dropped; Publish itself never blocks on it.
func TestKafkaPublishErrorCounted(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	o := kafkaOptions(t, c.ListenAddrs(), uniqueTopic(t))
	o.RequestTimeout, o.DialTimeout = time.Second, 200*time.Millisecond
	r := newRecorder()
	b := startBus(t, o, func(b *Bus) { b.Handle("h", r.handle) })
	b.Publish(deliver("u", 1))
	r.wait(t, 1)
	if v := counterIs(b.m.published, 1); v != 1 {
		t.Fatalf("published_total = %v, want 1", v)
	}
	c.Close()
	b.Publish(deliver("u", 2), deliver("u", 3))
	deadline := time.Now().Add(20 * time.Second)
	for testutil.ToFloat64(b.m.dropped.WithLabelValues("publish_error")) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("dropped{publish_error} = %v, want 2", testutil.ToFloat64(b.m.dropped.WithLabelValues("publish_error")))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v := testutil.ToFloat64(b.m.published); v != 1 {
		t.Errorf("published_total = %v, want 1", v)
	}
}

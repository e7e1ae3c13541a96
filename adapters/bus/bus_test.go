package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/mdsync/mdsync/adapters/node"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

func deliver(user string, seq uint64) Effect {
	return Effect{Kind: EffectDeliver, App: "app", User: user, Epoch: "ep1", Entry: &pb.TimelineEntry{
		Seq: seq, EntryId: fmt.Sprintf("ev-%s-%d", user, seq), From: "someone",
		Source: &pb.Event{App: "app", Kind: pb.Kind_KIND_MESSAGE_SEND, TimeUnixMs: time.Now().UnixMilli()},
	}}
}

// recorder is a handler that keeps what it received.
type recorder struct {
	mu  sync.Mutex
	got []Effect
	ch  chan struct{} // signalled on every receipt
}

func newRecorder() *recorder { return &recorder{ch: make(chan struct{}, 1<<16)} }

func (r *recorder) handle(_ context.Context, e Effect) error {
	r.mu.Lock()
	r.got = append(r.got, e)
	r.mu.Unlock()
	r.ch <- struct{}{}
	return nil
}

func (r *recorder) effects() []Effect {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Effect(nil), r.got...)
}

// wait blocks until r holds n effects (fails after 10 s).
func (r *recorder) wait(t *testing.T, n int) []Effect {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		if got := r.effects(); len(got) >= n {
			return got
		}
		select {
		case <-r.ch:
		case <-deadline:
			t.Fatalf("received %d effects, want %d", len(r.effects()), n)
		}
	}
}

// startBus builds a bus with reg, lets add register handlers,
// runs it and waits until it runs; the bus is closed when the test ends.
func startBus(t *testing.T, o Options, add func(b *Bus)) *Bus {
	t.Helper()
	return startBusOn(t, nil, o, add)
}

// encodedInMemory is the encoded path (the one Kafka takes: encode, a
// Watermill router, decode) over Watermill's in-memory pub/sub, so that
// it is tested without a broker.
func encodedInMemory(context.Context, *Bus) (message.Publisher, message.Subscriber, func() error, error) {
	gc := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, watermill.NopLogger{})
	return gc, gc, gc.Close, nil
}

// onEachTransport runs test in-process and on the encoded path.
func onEachTransport(t *testing.T, test func(t *testing.T, tr transport)) {
	t.Run("in-process", func(t *testing.T) { test(t, nil) })
	t.Run("encoded", func(t *testing.T) { test(t, encodedInMemory) })
}

// startBusOn is startBus on tr (nil: the transport o selects).
func startBusOn(t *testing.T, tr transport, o Options, add func(b *Bus)) *Bus {
	t.Helper()
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	newB := New // in-process or Kafka, as o says
	if tr != nil {
		newB = func(ctx context.Context, o Options) (*Bus, error) { return newBus(ctx, o, tr) }
	}
	b, err := newB(ctx, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	add(b)
	runErr := make(chan error, 1)
	go func() { runErr <- b.Run(context.Background()) }()
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-b.Running():
	case err := <-runErr:
		t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("bus not running")
	}
	return b
}

// eventually returns f() once it equals want, or its last value after
// 5 s: the metrics middleware counts an effect just after its handler
// returned, so a test that saw the handler run may read the count early.
func eventually(f func() float64, want float64) float64 {
	deadline := time.Now().Add(5 * time.Second)
	for {
		v := f()
		if v == want || time.Now().After(deadline) {
			return v
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func counterIs(c prometheus.Collector, want float64) float64 {
	return eventually(func() float64 { return testutil.ToFloat64(c) }, want)
}

func sameEffect(a, b Effect) bool {
	return a.Kind == b.Kind && a.App == b.App && a.User == b.User && a.Epoch == b.Epoch &&
		proto.Equal(a.Entry, b.Entry) && proto.Equal(a.Ended, b.Ended)
}

// EffectsOf over batches a real node (engine, embedded log, projector)
// committed: logins end nothing, a message gives each side's timeline an
// entry, a kick of all devices ends both sessions with 217 — and ended
// effects come before entries within one batch.
func TestEffectsOfRealBatches(t *testing.T) {
	var mu sync.Mutex
	var batches []projections.Applied
	n, err := node.New(context.Background(), node.Options{Dir: t.TempDir(), Partitions: 2,
		OnApplied: func(_ int32, a projections.Applied) { mu.Lock(); batches = append(batches, a); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ctx := context.Background()
	submit := func(ev *pb.Event) *pb.Decision {
		t.Helper()
		d, err := n.Engine.Submit(ctx, ev)
		if err != nil || d.Code != 0 {
			t.Fatalf("submit %v: %v %v", ev.Kind, d, err)
		}
		return d
	}
	for i, id := range []string{"a1", "a2"} {
		submit(&pb.Event{App: "app", ClientOpId: "login" + id, Kind: pb.Kind_KIND_LOGIN, Actor: &pb.Actor{User: "alice"},
			Payload: &pb.Event_Login{Login: &pb.Login{Platform: int32(i + 1), LoginId: id}}})
	}
	submit(&pb.Event{App: "app", ClientOpId: "m1", Kind: pb.Kind_KIND_MESSAGE_SEND, Actor: &pb.Actor{User: "alice", LoginId: "a1"},
		Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob", ClientMsgId: "c1", Body: []byte("hi")}}})
	kick := submit(&pb.Event{App: "app", ClientOpId: "k1", Kind: pb.Kind_KIND_KICK_ALL_DEVICES, Actor: &pb.Actor{User: "alice", LoginId: "a1"}})
	if len(kick.Ended) != 2 {
		t.Fatalf("kick ended %d sessions, want 2", len(kick.Ended))
	}

	// Bob's copy goes through the relay to his partition: wait for it.
	var effects []Effect
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		effects = effects[:0]
		for _, a := range batches {
			effects = append(effects, EffectsOf(a)...)
		}
		mu.Unlock()
		var bob bool
		for _, e := range effects {
			bob = bob || (e.Kind == EffectDeliver && e.User == "bob")
		}
		if bob || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	var ended []string
	deliveries := map[string]*pb.TimelineEntry{}
	for _, e := range effects {
		switch e.Kind {
		case EffectEnded:
			if e.App != "app" || e.User != "alice" || e.Ended.Code != 217 {
				t.Errorf("ended effect %+v", e)
			}
			ended = append(ended, e.Ended.GetSession().GetLoginId())
		case EffectDeliver:
			if e.Entry.GetSource().GetKind() == pb.Kind_KIND_MESSAGE_SEND {
				deliveries[e.User] = e.Entry
			}
		default:
			t.Errorf("effect kind %v", e.Kind)
		}
	}
	if fmt.Sprint(ended) != "[a1 a2]" {
		t.Errorf("ended sessions %v, want [a1 a2]", ended)
	}
	if deliveries["bob"] == nil || deliveries["bob"].From != "alice" || deliveries["bob"].Seq == 0 {
		t.Errorf("bob's delivery %v", deliveries["bob"])
	}
	if deliveries["alice"] == nil {
		t.Errorf("alice's own copy (her other devices) missing: %v", deliveries)
	}
	// Every batch: all ended effects before any entry.
	for _, a := range batches {
		es := EffectsOf(a)
		seenDeliver := false
		for _, e := range es {
			if e.Kind == EffectDeliver {
				seenDeliver = true
			} else if seenDeliver {
				t.Fatalf("ended after a deliver in one batch: %+v", es)
			}
		}
	}
}

func TestEffectsOfOrderAndUserFallback(t *testing.T) {
	a := projections.Applied{
		Decisions: []*pb.Decision{
			{App: "app", User: "u1", Ended: []*pb.Ended{{User: "u1", Code: 206, Session: &pb.Session{LoginId: "x"}}}},
			{App: "app", User: "u2"}, // refused or ended nothing
			{App: "app", User: "u3", Ended: []*pb.Ended{{Code: 0, Session: &pb.Session{LoginId: "y"}}, {User: "u3", Code: 217}}},
		},
		Entries: []projections.AppliedEntry{{App: "app", User: "u4", Entry: &pb.TimelineEntry{Seq: 1}}, {App: "app", User: "u5", Entry: &pb.TimelineEntry{Seq: 9}}},
	}
	var got []string
	for _, e := range EffectsOf(a) {
		got = append(got, fmt.Sprintf("%s:%s:%d:%d", e.Kind, e.User, e.Ended.GetCode(), e.Entry.GetSeq()))
	}
	want := "[ended:u1:206:0 ended:u3:0:0 ended:u3:217:0 deliver:u4:0:1 deliver:u5:0:9]"
	if fmt.Sprint(got) != want {
		t.Fatalf("EffectsOf = %v, want %s", got, want)
	}
	if EffectsOf(projections.Applied{}) != nil {
		t.Fatal("empty batch gave effects")
	}
}

func TestEncodeDecode(t *testing.T) {
	for _, e := range []Effect{
		deliver("bob", 7),
		{Kind: EffectEnded, App: "app", User: "al", Ended: &pb.Ended{User: "al", Code: 216, Session: &pb.Session{LoginId: "d1"}, Partition: 3, Offset: 44}},
	} {
		m, err := encode(e)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decode(m)
		if err != nil || !sameEffect(got, e) {
			t.Fatalf("round trip %+v -> %+v, %v", e, got, err)
		}
		m2, _ := encode(e)
		if m.UUID != m2.UUID || len(m.UUID) != 32 {
			t.Fatalf("ids %q %q: want one deterministic 32-hex id", m.UUID, m2.UUID)
		}
	}
	if a, b := deliver("bob", 1), deliver("bob", 2); a.id() == b.id() {
		t.Fatal("different entries, same id")
	}
	for _, bad := range []Effect{{Kind: EffectDeliver, App: "a", User: "u"}, {Kind: EffectEnded}, {Kind: 9, Entry: &pb.TimelineEntry{}}} {
		if _, err := encode(bad); err == nil {
			t.Errorf("encode(%+v) accepted", bad)
		}
	}
	m, _ := encode(deliver("bob", 1))
	m.Metadata.Set(metaKind, "launch")
	if _, err := decode(m); !errors.Is(err, ErrMalformed) {
		t.Errorf("unknown kind: %v", err)
	}
	m.Metadata.Set(metaKind, "deliver")
	m.Payload = []byte{0xff, 0xff, 0xff}
	if _, err := decode(m); !errors.Is(err, ErrMalformed) {
		t.Errorf("bad payload: %v", err)
	}
}

func TestOptionsValidate(t *testing.T) {
	if _, err := New(context.Background(), Options{}); err == nil || !strings.Contains(err.Error(), "Registerer") {
		t.Fatalf("no registerer: %v", err)
	}
	for _, o := range []Options{{QueueSize: -1}, {Partitions: 5000}, {QueueWait: -time.Second}, {Retries: 1000}, {MaxBatch: -2}} {
		o.Registerer = prometheus.NewRegistry()
		if _, err := New(context.Background(), o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
	reg := prometheus.NewRegistry()
	b, err := New(context.Background(), Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := New(context.Background(), Options{Registerer: reg}); err == nil {
		t.Error("second bus on one registry: metrics registered twice, want an error")
	}
}

// Two handlers in one process each receive every effect, in publish
// order; the metrics count them.
func TestEveryHandlerEveryEffectInOrder(t *testing.T) {
	onEachTransport(t, testEveryHandlerEveryEffectInOrder)
}

func testEveryHandlerEveryEffectInOrder(t *testing.T, tr transport) {
	reg := prometheus.NewRegistry()
	gw, outbox := newRecorder(), newRecorder()
	b := startBusOn(t, tr, Options{Registerer: reg}, func(b *Bus) {
		b.Handle("gateway", gw.handle)
		b.Handle("outbox", outbox.handle)
	})
	var want []Effect
	for i := 1; i <= 300; i++ {
		e := deliver(fmt.Sprint("u", i%7), uint64(i))
		if i%50 == 0 {
			e = Effect{Kind: EffectEnded, App: "app", User: "u1", Ended: &pb.Ended{User: "u1", Code: 207, TimeUnixMs: time.Now().UnixMilli(), Session: &pb.Session{LoginId: fmt.Sprint("d", i)}}}
		}
		want = append(want, e)
	}
	// From several goroutines would not define an order; in batches from one.
	for i := 0; i < len(want); i += 40 {
		b.Publish(want[i:min(i+40, len(want))]...)
	}
	for _, r := range []*recorder{gw, outbox} {
		got := r.wait(t, len(want))
		if len(got) != len(want) {
			t.Fatalf("received %d, want %d", len(got), len(want))
		}
		for i := range want {
			if !sameEffect(got[i], want[i]) {
				t.Fatalf("effect %d: got %+v want %+v", i, got[i], want[i])
			}
		}
	}
	if v := counterIs(b.m.published, 300); v != 300 {
		t.Errorf("published_total = %v", v)
	}
	for _, h := range []string{"gateway", "outbox"} {
		if v := counterIs(b.m.deliveries.WithLabelValues(h, "ok"), 300); v != 300 {
			t.Errorf("deliveries{%s,ok} = %v", h, v)
		}
	}
	if n := testutil.CollectAndCount(reg, "mdsync_bus_handle_seconds", "mdsync_bus_projector_lag_seconds", "mdsync_bus_queue_depth"); n != 4 {
		t.Errorf("%d metric series for handle seconds (2 handlers), lag and depth, want 4", n)
	}
	if v := testutil.ToFloat64(b.m.dropped.WithLabelValues("queue_full")); v != 0 {
		t.Errorf("dropped %v", v)
	}
	// Every ok delivery observed its lag (the effects carry event times).
	if n := testutil.CollectAndCount(b.m.deliveryLag); n != 2 {
		t.Errorf("delivery lag series %d, want one per handler", n)
	}
	samples := func() float64 {
		lag := &dto.Metric{}
		if err := b.m.deliveryLag.WithLabelValues("gateway").(prometheus.Histogram).Write(lag); err != nil {
			t.Fatal(err)
		}
		return float64(lag.Histogram.GetSampleCount())
	}
	if n := eventually(samples, 300); n != 300 {
		t.Errorf("delivery lag samples %v, want 300", n)
	}
}

// A handler that fails twice is retried and gets the effect the third
// time; the other handler is not held back for long and gets it once.
func TestRetryThenSuccess(t *testing.T) { onEachTransport(t, testRetryThenSuccess) }

func testRetryThenSuccess(t *testing.T, tr transport) {
	var mu sync.Mutex
	calls := map[uint64]int{}
	flaky, steady := newRecorder(), newRecorder()
	b := startBusOn(t, tr, Options{Registerer: prometheus.NewRegistry(), RetryBackoff: time.Millisecond}, func(b *Bus) {
		b.Handle("flaky", func(ctx context.Context, e Effect) error {
			mu.Lock()
			calls[e.Entry.Seq]++
			n := calls[e.Entry.Seq]
			mu.Unlock()
			if e.Entry.Seq == 2 && n <= 2 {
				return fmt.Errorf("transient failure %d", n)
			}
			return flaky.handle(ctx, e)
		})
		b.Handle("steady", steady.handle)
	})
	b.Publish(deliver("u", 1), deliver("u", 2), deliver("u", 3))
	got := flaky.wait(t, 3)
	if seqs := fmt.Sprint(got[0].Entry.Seq, got[1].Entry.Seq, got[2].Entry.Seq); seqs != "1 2 3" {
		t.Fatalf("flaky handler got seqs %s", seqs)
	}
	steady.wait(t, 3)
	mu.Lock()
	if calls[2] != 3 || calls[1] != 1 || calls[3] != 1 {
		t.Errorf("calls %v, want seq 2 called 3 times", calls)
	}
	mu.Unlock()
	if v := counterIs(b.m.attemptErrors.WithLabelValues("flaky", "error"), 2); v != 2 {
		t.Errorf("handler_errors{flaky,error} = %v, want 2", v)
	}
	if v := counterIs(b.m.deliveries.WithLabelValues("flaky", "ok"), 3); v != 3 {
		t.Errorf("deliveries{flaky,ok} = %v", v)
	}
	if v := testutil.ToFloat64(b.m.deliveries.WithLabelValues("flaky", "failed")); v != 0 {
		t.Errorf("deliveries{flaky,failed} = %v", v)
	}
	if n := len(steady.effects()); n != 3 {
		t.Errorf("steady handler got %d effects, want each once", n)
	}
}

// A handler that always panics on one effect is recovered, retried, then
// gives that effect up; the router keeps running and later effects reach
// it. A handler that outlives its timeout is cut off the same way.
func TestPanicAndTimeoutRecovered(t *testing.T) { onEachTransport(t, testPanicAndTimeoutRecovered) }

func testPanicAndTimeoutRecovered(t *testing.T, tr transport) {
	reg := prometheus.NewRegistry()
	r := newRecorder()
	b := startBusOn(t, tr, Options{Registerer: reg, Retries: 2, RetryBackoff: time.Millisecond, HandlerTimeout: 30 * time.Millisecond},
		func(b *Bus) {
			b.Handle("fragile", func(ctx context.Context, e Effect) error {
				switch e.Entry.Seq {
				case 1:
					panic("boom")
				case 2:
					<-ctx.Done() // hangs until cut off
					return ctx.Err()
				}
				return r.handle(ctx, e)
			})
		})
	b.Publish(deliver("u", 1), deliver("u", 2), deliver("u", 3))
	got := r.wait(t, 1)
	if got[0].Entry.Seq != 3 {
		t.Fatalf("got seq %d", got[0].Entry.Seq)
	}
	if v := counterIs(b.m.attemptErrors.WithLabelValues("fragile", "panic"), 3); v != 3 {
		t.Errorf("panics counted %v, want 3 (1 + 2 retries)", v)
	}
	if v := counterIs(b.m.attemptErrors.WithLabelValues("fragile", "timeout"), 3); v != 3 {
		t.Errorf("timeouts counted %v, want 3", v)
	}
	if v := counterIs(b.m.deliveries.WithLabelValues("fragile", "failed"), 2); v != 2 {
		t.Errorf("deliveries{failed} = %v, want 2", v)
	}
	if v := counterIs(b.m.deliveries.WithLabelValues("fragile", "ok"), 1); v != 1 {
		t.Errorf("deliveries{ok} = %v, want 1", v)
	}
	// Still running: one more goes through.
	b.Publish(deliver("u", 4))
	if got := r.wait(t, 2); got[1].Entry.Seq != 4 {
		t.Fatalf("after recovery got seq %d", got[1].Entry.Seq)
	}
}

// With the queue full, Publish waits at most QueueWait, then drops the
// effects without room and counts them; the queued ones still arrive.
func TestPublishFullQueueDrops(t *testing.T) {
	release := make(chan struct{})
	r := newRecorder()
	entered := make(chan uint64, 10)
	b := startBus(t, Options{Registerer: prometheus.NewRegistry(), QueueSize: 2, QueueWait: 20 * time.Millisecond}, func(b *Bus) {
		b.Handle("slow", func(ctx context.Context, e Effect) error {
			entered <- e.Entry.Seq
			<-release
			return r.handle(ctx, e)
		})
	})
	b.Publish(deliver("u", 1))
	if s := <-entered; s != 1 { // the handler holds 1; the pump waits on it
		t.Fatalf("first handled %d", s)
	}
	b.Publish(deliver("u", 2), deliver("u", 3)) // fill the queue
	if d := testutil.ToFloat64(b.m.dropped.WithLabelValues("queue_full")); d != 0 {
		t.Fatalf("dropped %v before the queue was full", d)
	}
	if d := testutil.CollectAndCount(b.o.Registerer.(*prometheus.Registry), "mdsync_bus_queue_depth"); d != 1 {
		t.Fatalf("queue depth series %d", d)
	}
	if depth := len(b.queue); depth != 2 {
		t.Fatalf("queue depth %d, want 2", depth)
	}
	done := make(chan struct{})
	go func() {
		b.Publish(deliver("u", 4), deliver("u", 5))
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Publish blocked on a full queue")
	}
	if d := testutil.ToFloat64(b.m.dropped.WithLabelValues("queue_full")); d != 2 {
		t.Fatalf("dropped{queue_full} = %v, want 2", d)
	}
	close(release)
	got := r.wait(t, 3)
	time.Sleep(50 * time.Millisecond) // nothing more may come
	if got = r.effects(); len(got) != 3 || got[2].Entry.Seq != 3 {
		t.Fatalf("received %d effects (last seq %d), want 1..3", len(got), got[len(got)-1].Entry.Seq)
	}
}

// Effects published before Run are sent once the handlers run; after
// Close, Publish drops (and counts) instead of blocking.
func TestPublishBeforeRunAndAfterClose(t *testing.T) {
	reg := prometheus.NewRegistry()
	b, err := New(context.Background(), Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	r := newRecorder()
	b.Handle("h", r.handle)
	b.Publish(deliver("u", 1))
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- b.Run(ctx) }()
	r.wait(t, 1)
	defer func() {
		if r := recover(); r == nil {
			t.Error("Handle after Run did not panic")
		}
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		b.Publish(deliver("u", 2))
		if v := testutil.ToFloat64(b.m.dropped.WithLabelValues("closed")); v != 1 {
			t.Errorf("dropped{closed} = %v", v)
		}
	}()
	b.Handle("late", r.handle)
}

// Run returns when its ctx ends, also with no handler at all.
func TestRunReturnsOnCancel(t *testing.T) {
	for _, handlers := range []int{0, 1} {
		b, err := New(context.Background(), Options{Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		if handlers > 0 {
			b.Handle("h", newRecorder().handle)
		}
		ctx, cancel := context.WithCancel(context.Background())
		runErr := make(chan error, 1)
		go func() { runErr <- b.Run(ctx) }()
		<-b.Running()
		cancel()
		select {
		case err := <-runErr:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("Run with %d handlers did not return after cancel", handlers)
		}
		if err := b.Close(); err != nil {
			t.Error(err)
		}
		if err := b.Run(context.Background()); err == nil {
			t.Error("second Run accepted")
		}
	}
}

// On the encoded path a message that is not an effect is counted and
// acked once, not retried, and the next effect still arrives.
func TestEncodedMalformedDropped(t *testing.T) {
	r := newRecorder()
	calls := 0
	b := startBusOn(t, encodedInMemory, Options{Registerer: prometheus.NewRegistry(), RetryBackoff: time.Millisecond}, func(b *Bus) {
		b.Handle("h", func(ctx context.Context, e Effect) error { calls++; return r.handle(ctx, e) })
	})
	bad := message.NewMessage("bad", []byte{0xff})
	bad.Metadata.Set(metaKind, "launch")
	if err := b.pub.Publish(b.o.Topic, bad); err != nil {
		t.Fatal(err)
	}
	b.Publish(deliver("u", 1))
	if got := r.wait(t, 1); got[0].Entry.Seq != 1 || calls != 1 {
		t.Fatalf("got seq %d after %d calls", got[0].Entry.Seq, calls)
	}
	if v := counterIs(b.m.deliveries.WithLabelValues("h", "malformed"), 1); v != 1 {
		t.Errorf("deliveries{malformed} = %v", v)
	}
	if v := testutil.ToFloat64(b.m.attemptErrors.WithLabelValues("h", "malformed")); v != 1 {
		t.Errorf("handler_errors{malformed} = %v, want 1 (no retry)", v)
	}
}

// In-process, Run returns within CloseTimeout of Close even when a
// handler ignores its ctx, and every handler gets the publisher's values.
func TestInProcessCloseBoundedAndSharedValues(t *testing.T) {
	b, err := New(context.Background(), Options{Registerer: prometheus.NewRegistry(), CloseTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan *pb.TimelineEntry, 1), make(chan struct{})
	defer close(release)
	b.Handle("stuck", func(_ context.Context, e Effect) error { entered <- e.Entry; <-release; return nil })
	runErr := make(chan error, 1)
	go func() { runErr <- b.Run(context.Background()) }()
	e := deliver("u", 1)
	b.Publish(e)
	if got := <-entered; got != e.Entry {
		t.Errorf("handler got a copy of the entry, want the publisher's")
	}
	start := time.Now()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-runErr; err != nil {
		t.Errorf("Run: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v with CloseTimeout 50ms", d)
	}
}

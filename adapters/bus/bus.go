// Package bus carries the projector's effects (deliver, ended) to the
// edges (WebSocket gateways, push outbox): in-process by default, a Kafka
// topic (kafka-go, behind a Watermill Publisher, Subscriber and Router)
// across processes when brokers are given. In-process, effects go from
// the queue to the handlers as values: nothing crosses a process, so
// nothing is encoded, and handlers run on the pump's goroutine.
//
// Delivery is at-least-once per handler, with these bounds:
//   - Publish never waits longer than Options.QueueWait; effects that find
//     the queue still full are dropped and counted
//     (mdsync_bus_dropped_total{reason="queue_full"}).
//   - A handler that keeps failing is retried Options.Retries times, then
//     the effect is given up for that handler only and counted
//     (mdsync_bus_deliveries_total{result="failed"}), so that one broken
//     edge cannot stall every other.
//
// Neither loses data: effects are derived from the store, the source of
// truth. A gateway re-reads a user's timeline from the last seq it sent
// (so a later deliver, or the device's next sync, brings a missed entry),
// and devices drop duplicates by seq.
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of Options.
const (
	DefaultTopic          = "mdsync.effects"
	DefaultPartitions     = 8
	DefaultQueueSize      = 65536
	DefaultQueueWait      = 50 * time.Millisecond
	DefaultMaxBatch       = 256
	DefaultRetries        = 3
	DefaultRetryBackoff   = 10 * time.Millisecond
	DefaultMaxBackoff     = time.Second
	DefaultHandlerTimeout = 5 * time.Second
	DefaultCloseTimeout   = 5 * time.Second
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 10 * time.Second
	DefaultReadMaxWait    = 3 * time.Second
	DefaultRetention      = time.Hour
	DefaultClientID       = "mdsync-bus"
)

// Options configure New. Registerer is required; every other field has a
// stated default.
type Options struct {
	// Brokers selects the transport: empty, in-process (effects handed to
	// the handlers as values); else the Kafka topic Topic on these brokers
	// (host:port).
	Brokers []string
	// Topic is the Kafka topic. Default DefaultTopic.
	Topic string
	// Partitions is the partition count of a topic New creates. Default
	// DefaultPartitions. An existing topic is used with its own count.
	Partitions int
	// ReplicationFactor of a topic New creates. Default 1.
	ReplicationFactor int
	// Retention is the retention.ms of a topic New creates. Default
	// DefaultRetention: nobody reads old effects (a process starts at the
	// end), so the topic only needs to hold what is in flight.
	Retention time.Duration

	// Registerer receives the bus's metrics. Required.
	Registerer prometheus.Registerer
	// Logger. Default: discards.
	Logger *slog.Logger

	// QueueSize bounds the effects Publish holds before the transport took
	// them. Default DefaultQueueSize.
	QueueSize int
	// QueueWait is the longest one Publish call waits for room in a full
	// queue; the effects still without room are then dropped. Default
	// DefaultQueueWait.
	QueueWait time.Duration
	// MaxBatch is the most effects handed to the Kafka transport in one
	// call. Default DefaultMaxBatch.
	MaxBatch int

	// Retries is how often a failed (or panicking, or timed-out) handler
	// call is retried before the effect is given up for that handler.
	// Default DefaultRetries; negative: no retry.
	Retries int
	// RetryBackoff is the first retry's delay, doubling up to MaxBackoff.
	// Defaults DefaultRetryBackoff and DefaultMaxBackoff.
	RetryBackoff, MaxBackoff time.Duration
	// HandlerTimeout bounds one handler call (its ctx's deadline). Default
	// DefaultHandlerTimeout.
	HandlerTimeout time.Duration
	// CloseTimeout bounds how long stopping waits for running handlers.
	// Default DefaultCloseTimeout.
	CloseTimeout time.Duration

	// Kafka only. DialTimeout bounds connecting to a broker, RequestTimeout
	// one request (metadata, list offsets, produce) and the wait for a new
	// topic's leaders. ReadMaxWait bounds one fetch at the end of a
	// partition; it does not delay delivery (a fetch returns as soon as a
	// record arrives). kafka-go asks the broker to wait ReadMaxWait minus
	// up to 1 s and times the socket out at ReadMaxWait, so a short one
	// turns a slow broker's empty answers into read timeouts; Close waits
	// for the fetches in flight, up to ReadMaxWait. Defaults
	// DefaultDialTimeout, DefaultRequestTimeout, DefaultReadMaxWait (3 s);
	// ClientID default DefaultClientID.
	DialTimeout, RequestTimeout, ReadMaxWait time.Duration
	ClientID                                 string
}

// EnsureDefaults fills unset fields with their documented defaults.
func (o *Options) EnsureDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if o.Topic == "" {
		o.Topic = DefaultTopic
	}
	if o.Partitions == 0 {
		o.Partitions = DefaultPartitions
	}
	if o.ReplicationFactor == 0 {
		o.ReplicationFactor = 1
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.QueueSize == 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.MaxBatch == 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.Retries == 0 {
		o.Retries = DefaultRetries
	} else if o.Retries < 0 {
		o.Retries = -1
	}
	def(&o.Retention, DefaultRetention)
	def(&o.QueueWait, DefaultQueueWait)
	def(&o.RetryBackoff, DefaultRetryBackoff)
	def(&o.MaxBackoff, DefaultMaxBackoff)
	def(&o.HandlerTimeout, DefaultHandlerTimeout)
	def(&o.CloseTimeout, DefaultCloseTimeout)
	def(&o.DialTimeout, DefaultDialTimeout)
	def(&o.RequestTimeout, DefaultRequestTimeout)
	def(&o.ReadMaxWait, DefaultReadMaxWait)
	if o.ClientID == "" {
		o.ClientID = DefaultClientID
	}
}

// Validate reports options New cannot use.
func (o *Options) Validate() error {
	switch {
	case o.Registerer == nil:
		return errors.New("bus: Options.Registerer is required")
	case o.Partitions < 1 || o.Partitions > 1024:
		return fmt.Errorf("bus: Options.Partitions %d not in [1, 1024]", o.Partitions)
	case o.ReplicationFactor < 1:
		return fmt.Errorf("bus: Options.ReplicationFactor %d < 1", o.ReplicationFactor)
	case o.QueueSize < 1 || o.QueueSize > 1<<24:
		return fmt.Errorf("bus: Options.QueueSize %d not in [1, 2^24]", o.QueueSize)
	case o.MaxBatch < 1 || o.MaxBatch > 1<<16:
		return fmt.Errorf("bus: Options.MaxBatch %d not in [1, 65536]", o.MaxBatch)
	case o.Retries > 100:
		return fmt.Errorf("bus: Options.Retries %d > 100", o.Retries)
	case o.Retention < 0 || o.QueueWait < 0 || o.RetryBackoff < 0 || o.MaxBackoff < 0 ||
		o.HandlerTimeout < 0 || o.CloseTimeout < 0 || o.DialTimeout < 0 || o.RequestTimeout < 0:
		return errors.New("bus: Options durations must not be negative")
	case o.ReadMaxWait < time.Millisecond:
		// Kafka counts max wait in ms; below 1 ms a fetch at the end spins.
		return fmt.Errorf("bus: Options.ReadMaxWait %v < 1ms", o.ReadMaxWait)
	}
	return nil
}

// ErrClosed is returned by Run after Close.
var ErrClosed = errors.New("bus: closed")

// Bus carries effects from Publish to every handler of every process on
// the same transport. Publish is safe for concurrent use; Handle must be
// called before Run.
type Bus struct {
	o   Options
	log *slog.Logger
	m   *metrics

	// The Kafka transport; all nil in-process.
	pub    message.Publisher
	sub    message.Subscriber
	closeT func() error // closes the transport (publisher and subscriber)
	router *message.Router

	queue chan Effect

	mu       sync.Mutex
	handlers []*handler // in Handle order
	started  bool

	runDone   chan struct{} // closed when Run returned (or never ran and Close)
	closed    chan struct{}
	closeOnce sync.Once
	closeErr  error
	running   chan struct{}
}

// handler is one Handle call with its metric series, looked up once
// rather than per effect.
type handler struct {
	name string
	fn   func(ctx context.Context, e Effect) error
	took prometheus.Observer
	ok   prometheus.Counter
	lag  prometheus.Observer
}

// transport connects a bus to a Watermill publisher and subscriber (the
// encoded path); New uses Kafka's, tests an in-memory one.
type transport func(ctx context.Context, b *Bus) (message.Publisher, message.Subscriber, func() error, error)

// New builds a bus on the transport Options select. ctx bounds only the
// setup (Kafka: connecting, creating the topic).
func New(ctx context.Context, o Options) (*Bus, error) {
	var t transport
	if len(o.Brokers) > 0 {
		t = func(ctx context.Context, b *Bus) (message.Publisher, message.Subscriber, func() error, error) {
			k, err := newKafka(ctx, &b.o, b.log)
			if err != nil {
				return nil, nil, nil, err
			}
			return k.pub, k.sub, k.Close, nil
		}
	}
	return newBus(ctx, o, t)
}

// newBus builds a bus on t, or in-process when t is nil.
func newBus(ctx context.Context, o Options, t transport) (*Bus, error) {
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o.Brokers = append([]string(nil), o.Brokers...)
	b := &Bus{
		o:       o,
		log:     o.Logger.With("component", "bus"),
		queue:   make(chan Effect, o.QueueSize),
		runDone: make(chan struct{}),
		closed:  make(chan struct{}),
		running: make(chan struct{}),
		closeT:  func() error { return nil },
	}
	if t != nil {
		pub, sub, closeT, err := t(ctx, b)
		if err != nil {
			return nil, err
		}
		b.pub, b.sub, b.closeT = pub, sub, closeT
		// Watermill logs every start and stop at info; keep those at debug.
		wlog := watermill.NewSlogLoggerWithLevelMapping(b.log, map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug})
		// No middleware: retries, timeouts, panics and metrics are the
		// bus's own (call), the same on both transports.
		r, err := message.NewRouter(message.RouterConfig{CloseTimeout: o.CloseTimeout}, wlog)
		if err != nil {
			_ = b.closeT()
			return nil, fmt.Errorf("bus: router: %w", err)
		}
		b.router = r
	}
	m, err := newMetrics(o.Registerer, func() float64 { return float64(len(b.queue)) })
	if err != nil {
		_ = b.closeT()
		return nil, err
	}
	b.m = m
	return b, nil
}

// Publish queues effects for every handler of every process on the
// transport, in order. It does not block on the transport: when the queue
// (Options.QueueSize) is full it waits at most Options.QueueWait in total,
// then drops the effects still without room, logs once and counts them in
// mdsync_bus_dropped_total{reason="queue_full"}. After Close it drops
// everything (reason="closed"). Effects queued before Run are sent once the
// handlers run. The bus keeps the effects: callers must not change them.
func (b *Bus) Publish(effects ...Effect) {
	var timer *time.Timer
	for i, e := range effects {
		select {
		case <-b.closed:
			b.drop("closed", len(effects)-i)
			return
		default:
		}
		select {
		case b.queue <- e:
			b.m.lag.Observe(ageSeconds(e))
			continue
		default:
		}
		if timer == nil {
			timer = time.NewTimer(b.o.QueueWait)
			defer timer.Stop()
		}
		select {
		case b.queue <- e:
			b.m.lag.Observe(ageSeconds(e))
		case <-timer.C:
			b.drop("queue_full", len(effects)-i)
			return
		case <-b.closed:
			b.drop("closed", len(effects)-i)
			return
		}
	}
}

func (b *Bus) drop(reason string, n int) {
	b.m.dropped.WithLabelValues(reason).Add(float64(n))
	b.log.Warn("bus: effects dropped", "reason", reason, "count", n, "queue_size", b.o.QueueSize)
}

// ageSeconds is how long ago the operation behind e was accepted: the
// projector's lag when e is published.
func ageSeconds(e Effect) float64 {
	ms := e.eventTimeMs()
	if ms <= 0 {
		return 0
	}
	return max(0, float64(time.Now().UnixMilli()-ms)/1e3)
}

// Handle adds a handler under a unique name. Every handler receives every
// effect (of every process on the transport) published after Running is
// closed; per handler, effects of one app+user arrive in publish order.
// In-process, handlers are called one after the other, in Handle order,
// one effect at a time, all in publish order, and the next effect waits
// until every handler finished the current one: handlers must be quick
// (hand slow work to a queue of their own). They share the effect's
// values, as the publisher made them: a handler must not change them. On
// Kafka, a handler is called concurrently for effects on different
// partitions (different users), one at a time per partition, with an
// effect of its own.
//
// A call that returns an error, panics or outlives Options.HandlerTimeout
// is retried; ctx is cancelled at the timeout and when the bus stops.
// Handle panics after Run, or on a duplicate name: both are wiring
// mistakes.
func (b *Bus) Handle(name string, fn func(ctx context.Context, e Effect) error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started {
		panic("bus: Handle(" + name + ") after Run")
	}
	for _, h := range b.handlers {
		if h.name == name {
			panic("bus: duplicate handler " + name)
		}
	}
	h := &handler{
		name: name,
		fn:   fn,
		took: b.m.handle.WithLabelValues(name),
		ok:   b.m.deliveries.WithLabelValues(name, "ok"),
		lag:  b.m.deliveryLag.WithLabelValues(name),
	}
	b.handlers = append(b.handlers, h)
	if b.router == nil {
		return
	}
	b.router.AddConsumerHandler(name, b.o.Topic, b.sub, func(msg *message.Message) error {
		e, err := decode(msg)
		if err != nil {
			// Fails the same way every time: not retried, acked.
			b.m.attemptErrors.WithLabelValues(name, "malformed").Inc()
			b.m.deliveries.WithLabelValues(name, "malformed").Inc()
			b.log.Error("bus: malformed effect dropped", "handler", name, "err", err)
			return nil
		}
		return b.call(msg.Context(), h, e)
	})
}

// Run runs the handlers and sends queued effects until ctx is done or
// Close is called; then it waits (at most Options.CloseTimeout) for
// running handler calls and returns. Effects still queued are dropped.
func (b *Bus) Run(ctx context.Context) error {
	b.mu.Lock()
	if b.started {
		b.mu.Unlock()
		return errors.New("bus: Run called twice")
	}
	b.started = true
	b.mu.Unlock()
	defer close(b.runDone)
	select {
	case <-b.closed:
		return ErrClosed
	default:
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-b.closed:
			cancel()
		case <-ctx.Done():
		}
	}()

	if b.router == nil {
		close(b.running)
		pumped := make(chan struct{})
		go func() {
			defer close(pumped)
			b.dispatch(ctx)
		}()
		<-ctx.Done()
		t := time.NewTimer(b.o.CloseTimeout)
		defer t.Stop()
		select {
		case <-pumped:
		case <-t.C:
			b.log.Warn("bus: a handler outlived the close timeout", "timeout", b.o.CloseTimeout)
		}
		return nil
	}

	stop := context.AfterFunc(ctx, func() { _ = b.router.Close() })
	defer stop()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-b.router.Running():
		case <-ctx.Done():
			return
		}
		close(b.running)
		b.pump(ctx)
	}()
	err := b.router.Run(ctx)
	cancel()
	wg.Wait()
	if err != nil {
		return fmt.Errorf("bus: %w", err)
	}
	return nil
}

// Running is closed once every handler is subscribed: effects published
// from then on reach all of them.
func (b *Bus) Running() <-chan struct{} { return b.running }

// dispatch is the in-process pump: it hands queued effects to every
// handler, in queue order, until ctx is done.
func (b *Bus) dispatch(ctx context.Context) {
	for {
		var e Effect
		select {
		case <-ctx.Done():
			return
		case e = <-b.queue:
		}
		b.m.published.Inc()
		for _, h := range b.handlers {
			if b.call(ctx, h, e) != nil {
				return // stopping
			}
		}
	}
}

// pump moves queued effects to the Kafka transport in batches, in queue
// order.
func (b *Bus) pump(ctx context.Context) {
	batch := make([]*message.Message, 0, b.o.MaxBatch)
	for {
		var e Effect
		select {
		case <-ctx.Done():
			return
		case e = <-b.queue:
		}
		batch = b.add(batch[:0], e)
	fill:
		for len(batch) < b.o.MaxBatch {
			select {
			case e = <-b.queue:
				batch = b.add(batch, e)
			default:
				break fill
			}
		}
		if len(batch) == 0 {
			continue
		}
		if err := b.pub.Publish(b.o.Topic, batch...); err != nil {
			if ctx.Err() != nil {
				return
			}
			b.m.dropped.WithLabelValues("publish_error").Add(float64(len(batch)))
			b.log.Error("bus: publish failed; effects dropped", "count", len(batch), "err", err)
			continue
		}
		b.m.published.Add(float64(len(batch)))
	}
}

func (b *Bus) add(batch []*message.Message, e Effect) []*message.Message {
	m, err := encode(e)
	if err != nil {
		b.m.dropped.WithLabelValues("invalid").Inc()
		b.log.Error("bus: effect dropped", "err", err)
		return batch
	}
	return append(batch, m)
}

// Close stops Run (if running) and closes the transport. Publish drops
// effects after Close.
func (b *Bus) Close() error {
	b.closeOnce.Do(func() {
		close(b.closed)
		b.mu.Lock()
		started := b.started
		b.mu.Unlock()
		if started {
			<-b.runDone
		} else if b.router != nil {
			_ = b.router.Close()
		}
		b.closeErr = b.closeT()
	})
	return b.closeErr
}

// call gives e to h on either transport: retried Options.Retries times
// with backoff, and given up after the last attempt (counted, logged, nil)
// so that one failing handler cannot hold back the others. It returns an
// error only when ctx is done (the bus stops): the Kafka transport then
// leaves the effect unacked, to redeliver or, stopping too, drop.
func (b *Bus) call(ctx context.Context, h *handler, e Effect) error {
	start := time.Now()
	err := b.attempt(ctx, h, e)
	for n, wait := 0, b.o.RetryBackoff; err != nil && n < b.o.Retries && ctx.Err() == nil; n++ {
		// ±20% so that handlers failing together do not retry together.
		t := time.NewTimer(time.Duration(float64(wait) * (0.8 + 0.4*rand.Float64())))
		select {
		case <-ctx.Done():
		case <-t.C:
			err = b.attempt(ctx, h, e)
		}
		t.Stop()
		wait = min(2*wait, b.o.MaxBackoff)
	}
	h.took.Observe(time.Since(start).Seconds())
	switch {
	case err == nil:
		h.ok.Inc()
		if ms := e.eventTimeMs(); ms > 0 {
			h.lag.Observe(max(0, float64(time.Now().UnixMilli()-ms)/1e3))
		}
		return nil
	case ctx.Err() != nil:
		b.m.deliveries.WithLabelValues(h.name, "cancelled").Inc()
		return err
	}
	b.m.deliveries.WithLabelValues(h.name, "failed").Inc()
	b.log.Error("bus: handler gave up on an effect", "handler", h.name, "kind", e.Kind,
		"app", e.App, "user", e.User, "attempts", max(b.o.Retries, 0)+1, "err", err)
	return nil
}

// errPanic marks a handler call that panicked.
var errPanic = errors.New("bus: handler panicked")

// attempt is one handler call under Options.HandlerTimeout, a panic turned
// into an error; every failure is counted by cause.
func (b *Bus) attempt(ctx context.Context, h *handler, e Effect) (err error) {
	ctx, cancel := context.WithTimeout(ctx, b.o.HandlerTimeout)
	defer func() {
		cancel()
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v\n%s", errPanic, p, debug.Stack())
		}
		if err == nil {
			return
		}
		cause := "error"
		switch {
		case errors.Is(err, errPanic):
			cause = "panic"
		case errors.Is(err, context.DeadlineExceeded):
			cause = "timeout"
		}
		b.m.attemptErrors.WithLabelValues(h.name, cause).Inc()
	}()
	return h.fn(ctx, e)
}

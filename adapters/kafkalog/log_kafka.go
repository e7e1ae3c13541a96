// Package kafkalog is the operation log on a Kafka topic: an engine.Log that
// writes with kafka-go's low-level Client (acks=all, one produce request per
// partition per group commit) and reads with plain fetches at explicit
// offsets (no consumer group, no committed offsets: the projections keep
// their own offsets next to their state).
package kafkalog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"strconv"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/mdsync/mdsync/adapters/internal/kafkaadmin"
	"github.com/mdsync/mdsync/engine"
)

// Defaults applied by Options.EnsureDefaults.
const (
	DefaultPartitions        int32 = 8
	DefaultReplicationFactor       = 1
	// DefaultMaxRecordBytes keeps one record, with Kafka's batch and record
	// overhead, under the broker's default message.max.bytes (1048588).
	DefaultMaxRecordBytes = 1_000_000
	DefaultBatchSize      = 10_000
	DefaultMaxInFlight    = 2
	DefaultBatchBytes     = 1_000_000
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 10 * time.Second
	DefaultReadMaxWait    = 500 * time.Millisecond
	DefaultReadMaxBytes   = 1 << 20
	DefaultMetadataTTL    = 2 * time.Second
	DefaultClientID       = "mdsync"
)

// Errors of this package; engine sentinels are returned where the port
// names one.
var (
	// ErrTopic reports a topic that is missing (and CreateTopic is off) or
	// whose partition count differs from Options.Partitions: records are
	// placed by that count, so a different one would scatter streams.
	ErrTopic = errors.New("kafkalog: topic mismatch")
)

// batchOverhead and recordOverhead bound Kafka's v2 record batch framing:
// 61 bytes per batch, at most ~32 per record (varint lengths, deltas,
// attributes, header count). Used to keep group commits under BatchBytes.
const (
	batchOverhead  = 61
	recordOverhead = 32
)

// Options configure Open. The zero value plus Brokers and Topic is valid.
type Options struct {
	// Brokers are bootstrap addresses, host:port. Required.
	Brokers []string

	// Topic is the log's topic. Required.
	Topic string

	// Partitions is the partition count. Default DefaultPartitions (8). An
	// existing topic must have exactly this many partitions.
	Partitions int32

	// ReplicationFactor is used when Open creates the topic. Default 1
	// (single-broker development); production wants 3.
	ReplicationFactor int

	// CreateTopic lets Open create a missing topic with Partitions,
	// ReplicationFactor and TopicConfig. Off by default: a typo in Topic
	// should fail, not start an empty log.
	CreateTopic bool

	// TopicConfig holds extra configs for a topic Open creates, on top of
	// these defaults: retention.ms=-1 and retention.bytes=-1 (projections
	// rebuild from offset 0, so the log is kept forever) and
	// min.insync.replicas=min(2, ReplicationFactor) (so acks=all means at
	// least two copies once there are replicas).
	TopicConfig map[string]string

	// Linger is how long a partition's committer waits for more Appends
	// before it sends a produce request. Default 0: while a request is in
	// flight later Appends queue and go out together in the next one, so
	// batches grow with load without adding latency at low load. (This
	// replaces kafka-go Writer's BatchTimeout, whose zero value is 1 s.)
	Linger time.Duration

	// MaxInFlight is how many produce requests one partition may have in
	// flight. Default DefaultMaxInFlight (2: on a real broker 4 made batches
	// smaller and 128 appenders ~1.5x slower, benchmarks/RESULTS.md). Requests in flight together
	// carry concurrent Appends, which the port does not order; each call's
	// records for a partition stay in one request, so they stay contiguous
	// and in order. 1 sends strictly one batch after the other (larger
	// batches, one round trip more per batch under load).
	MaxInFlight int

	// BatchSize and BatchBytes bound one produce request (records, and
	// bytes of Kafka framing). Defaults DefaultBatchSize (10000) and
	// DefaultBatchBytes (1000000). A single Append's records for one
	// partition always go in one request whatever their size, so they stay
	// contiguous; such a request larger than the topic's max.message.bytes
	// fails with engine.ErrRecordTooLarge and writes nothing.
	BatchSize  int
	BatchBytes int

	// MaxRecordBytes is the largest len(Key)+len(Value) Append accepts.
	// Default DefaultMaxRecordBytes (1000000), which fits the broker's
	// default message.max.bytes.
	MaxRecordBytes int

	// DialTimeout bounds connecting to a broker. Default 5 s.
	DialTimeout time.Duration

	// RequestTimeout bounds one request to Kafka (produce, list offsets,
	// metadata; kafka-go sends half of it as the broker-side produce
	// timeout), and also the retries of a request the broker refused
	// without writing (not leader, too few in-sync replicas). Default 10 s.
	RequestTimeout time.Duration

	// ReadMaxWait is how long one fetch waits at the end of a partition
	// before Read asks again. Default 500 ms; Read itself waits until ctx.
	ReadMaxWait time.Duration

	// ReadMaxBytes is the fetch size of one Read. Default 1 MiB. Kafka
	// returns at least one whole batch even when it is larger.
	ReadMaxBytes int

	// MetadataTTL bounds how long kafka-go trusts cached metadata (partition
	// leaders). kafka-go does not refresh it when a broker says "not leader",
	// so this is how long Appends retry after a leader moves. Default 2 s
	// (kafka-go's is 6 s); only the log's topic is fetched.
	MetadataTTL time.Duration

	// ClientID is sent to the brokers. Default "mdsync".
	ClientID string
}

// EnsureDefaults fills unset fields with their documented defaults.
func (o *Options) EnsureDefaults() {
	if o.Partitions == 0 {
		o.Partitions = DefaultPartitions
	}
	if o.ReplicationFactor == 0 {
		o.ReplicationFactor = DefaultReplicationFactor
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.BatchSize == 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.BatchBytes == 0 {
		o.BatchBytes = DefaultBatchBytes
	}
	if o.MaxRecordBytes == 0 {
		o.MaxRecordBytes = DefaultMaxRecordBytes
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.ReadMaxWait == 0 {
		o.ReadMaxWait = DefaultReadMaxWait
	}
	if o.ReadMaxBytes == 0 {
		o.ReadMaxBytes = DefaultReadMaxBytes
	}
	if o.MetadataTTL == 0 {
		o.MetadataTTL = DefaultMetadataTTL
	}
	if o.ClientID == "" {
		o.ClientID = DefaultClientID
	}
}

// Validate reports options that Open cannot use.
func (o *Options) Validate() error {
	switch {
	case len(o.Brokers) == 0:
		return errors.New("kafkalog: Options.Brokers is required")
	case o.Topic == "":
		return errors.New("kafkalog: Options.Topic is required")
	case o.Partitions < 1:
		return fmt.Errorf("kafkalog: Options.Partitions %d < 1", o.Partitions)
	case o.ReplicationFactor < 1:
		return fmt.Errorf("kafkalog: Options.ReplicationFactor %d < 1", o.ReplicationFactor)
	case o.Linger < 0:
		return fmt.Errorf("kafkalog: Options.Linger %v is negative", o.Linger)
	case o.MaxInFlight < 1:
		return fmt.Errorf("kafkalog: Options.MaxInFlight %d < 1", o.MaxInFlight)
	case o.BatchSize < 1:
		return fmt.Errorf("kafkalog: Options.BatchSize %d < 1", o.BatchSize)
	case o.BatchBytes < 1:
		return fmt.Errorf("kafkalog: Options.BatchBytes %d < 1", o.BatchBytes)
	case o.MaxRecordBytes < 1:
		return fmt.Errorf("kafkalog: Options.MaxRecordBytes %d < 1", o.MaxRecordBytes)
	case o.DialTimeout < 0 || o.RequestTimeout < 0 || o.ReadMaxWait < 0 || o.MetadataTTL < 0:
		return errors.New("kafkalog: Options timeouts must not be negative")
	case o.ReadMaxWait < time.Millisecond:
		// Kafka counts max wait in ms; below 1 ms a Read at the end spins.
		return fmt.Errorf("kafkalog: Options.ReadMaxWait %v < 1ms", o.ReadMaxWait)
	case o.ReadMaxBytes < 1:
		return fmt.Errorf("kafkalog: Options.ReadMaxBytes %d < 1", o.ReadMaxBytes)
	}
	return nil
}

// Log is an engine.Log on one Kafka topic. Safe for concurrent use.
type Log struct {
	opts      Options
	client    *kafka.Client
	transport *kafka.Transport

	// ctx is cancelled by Close: it stops committers, fetches and the
	// transport's goroutines.
	ctx    context.Context
	cancel context.CancelFunc

	parts []*committer
	wg    sync.WaitGroup

	closeOnce sync.Once
}

var _ engine.Log = (*Log)(nil)

// Open connects to the brokers, checks (or creates) the topic, and returns
// the log. ctx bounds only the opening.
func Open(ctx context.Context, opts Options) (*Log, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts.Brokers = append([]string(nil), opts.Brokers...)

	lctx, cancel := context.WithCancel(context.Background())
	tr := &kafka.Transport{
		DialTimeout: opts.DialTimeout,
		MetadataTTL: opts.MetadataTTL,
		// Only the log's topic: a cluster's full metadata can be large.
		MetadataTopics: []string{opts.Topic},
		ClientID:       opts.ClientID,
		Context:        lctx,
	}
	l := &Log{
		opts:      opts,
		transport: tr,
		client: &kafka.Client{
			Addr:      kafka.TCP(opts.Brokers...),
			Timeout:   opts.RequestTimeout,
			Transport: tr,
		},
		ctx:    lctx,
		cancel: cancel,
	}
	if err := l.ensureTopic(ctx); err != nil {
		cancel()
		tr.CloseIdleConnections()
		return nil, err
	}
	l.parts = make([]*committer, opts.Partitions)
	for p := range l.parts {
		c := &committer{l: l, p: int32(p), wake: make(chan struct{}, 1)}
		l.parts[p] = c
		l.wg.Add(1)
		go c.run()
	}
	return l, nil
}

// ensureTopic creates the topic if allowed and missing, waits until every
// partition has a leader that answers, then checks its partition count.
func (l *Log) ensureTopic(ctx context.Context) error {
	o := &l.opts
	ctx, cancel := context.WithTimeout(ctx, o.RequestTimeout)
	defer cancel()
	cfg := map[string]string{
		"retention.ms":        "-1",
		"retention.bytes":     "-1",
		"min.insync.replicas": strconv.Itoa(min(2, o.ReplicationFactor)),
	}
	maps.Copy(cfg, o.TopicConfig)
	n, err := kafkaadmin.Ensure(ctx, l.client, kafkaadmin.Topic{
		Name:              o.Topic,
		Create:            o.CreateTopic,
		Partitions:        int(o.Partitions),
		ReplicationFactor: o.ReplicationFactor,
		Configs:           cfg,
	})
	switch {
	case errors.Is(err, kafkaadmin.ErrMissing):
		return fmt.Errorf("%w: topic %q does not exist (Options.CreateTopic is off)", ErrTopic, o.Topic)
	case err != nil:
		return fmt.Errorf("kafkalog: %w", err)
	case n != int(o.Partitions):
		return fmt.Errorf("%w: topic %q has %d partitions, Options.Partitions is %d",
			ErrTopic, o.Topic, n, o.Partitions)
	}
	return nil
}

// retry is kafkaadmin.Retry within RequestTimeout.
func (l *Log) retry(ctx context.Context, fn func() error) error {
	return kafkaadmin.Retry(ctx, l.opts.RequestTimeout, fn)
}

// Partitions returns the topic's partition count.
func (l *Log) Partitions() int32 { return l.opts.Partitions }

func (l *Log) closed() bool { return l.ctx.Err() != nil }

// failure maps an error met while the log may be closing: once Close has
// begun, whatever broke is reported as ErrLogClosed, which the port promises.
func (l *Log) failure(err error) error {
	if l.closed() && !errors.Is(err, engine.ErrLogClosed) {
		return fmt.Errorf("%w (%v)", engine.ErrLogClosed, err)
	}
	return err
}

// Append writes recs with acks=all and returns their positions. The whole
// call is validated before anything is sent, so a refused call writes
// nothing. The records of one call for one partition travel in one Kafka
// batch, which the broker appends atomically: they are contiguous.
func (l *Log) Append(ctx context.Context, recs []engine.Record) ([]engine.Position, error) {
	if len(recs) == 0 {
		return nil, engine.ErrEmptyAppend
	}
	if l.closed() {
		return nil, engine.ErrLogClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n := l.opts.Partitions
	size := 0
	for i, r := range recs {
		if r.Partition < 0 || r.Partition >= n {
			return nil, fmt.Errorf("%w: record %d has partition %d, log has %d", engine.ErrBadPartition, i, r.Partition, n)
		}
		if b := len(r.Key) + len(r.Value); b > l.opts.MaxRecordBytes {
			return nil, fmt.Errorf("%w: record %d has %d bytes, limit %d", engine.ErrRecordTooLarge, i, b, l.opts.MaxRecordBytes)
		}
		size += len(r.Key) + len(r.Value)
	}

	// Copy keys and values into one buffer: the committer may still hold
	// them after a cancelled Append has returned, and the port says Append
	// keeps none of the caller's slices.
	arena := make([]byte, 0, size)
	call := &call{pos: make([]engine.Position, len(recs)), done: make(chan struct{})}
	byPart := make(map[int32]*request, 1)
	var order []*request
	for i, r := range recs {
		req := byPart[r.Partition]
		if req == nil {
			req = &request{call: call}
			byPart[r.Partition] = req
			order = append(order, req)
		}
		var k, v kafka.Bytes
		if r.Key != nil {
			arena = append(arena, r.Key...)
			k = kafka.NewBytes(arena[len(arena)-len(r.Key):])
		}
		if r.Value != nil {
			arena = append(arena, r.Value...)
			v = kafka.NewBytes(arena[len(arena)-len(r.Value):])
		}
		req.recs = append(req.recs, kafka.Record{Key: k, Value: v})
		req.idx = append(req.idx, i)
		req.bytes += len(r.Key) + len(r.Value) + recordOverhead
		call.pos[i].Partition = r.Partition
	}
	call.pending = len(order)
	for _, req := range order {
		l.parts[recs[req.idx[0]].Partition].enqueue(req)
	}

	select {
	case <-call.done:
	case <-ctx.Done():
		// The records may still be written; the port allows that on error.
		return nil, ctx.Err()
	case <-l.ctx.Done():
		// Close waits for requests in flight; collect their outcome.
		<-call.done
	}
	if call.err != nil {
		return nil, l.failure(call.err)
	}
	return call.pos, nil
}

// call is one Append waiting for its requests, one per partition.
type call struct {
	mu      sync.Mutex
	pending int
	err     error
	pos     []engine.Position
	done    chan struct{}
}

// request is the part of a call for one partition.
type request struct {
	call  *call
	recs  []kafka.Record
	idx   []int // index in the call of each record
	bytes int
}

func (r *request) finish(base int64, err error) {
	c := r.call
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		if c.err == nil {
			c.err = err
		}
	} else {
		for j, i := range r.idx {
			c.pos[i].Offset = base + int64(j)
		}
	}
	if c.pending--; c.pending == 0 {
		close(c.done)
	}
}

// committer owns the writes to one partition: up to MaxInFlight produce
// requests at a time, and everything that queues while they are all busy
// goes in the next request (group commit).
type committer struct {
	l    *Log
	p    int32
	wake chan struct{}

	mu     sync.Mutex
	queue  []*request
	closed bool
}

func (c *committer) enqueue(r *request) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		r.finish(0, engine.ErrLogClosed)
		return
	}
	c.queue = append(c.queue, r)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *committer) run() {
	defer c.l.wg.Done()
	o := &c.l.opts
	slots := make(chan struct{}, o.MaxInFlight)
	var inflight sync.WaitGroup
	defer inflight.Wait()
	for {
		select {
		case <-c.wake:
		case <-c.l.ctx.Done():
			c.mu.Lock()
			c.closed = true
			rest := c.queue
			c.queue = nil
			c.mu.Unlock()
			for _, r := range rest {
				r.finish(0, engine.ErrLogClosed)
			}
			return
		}
		if o.Linger > 0 {
			t := time.NewTimer(o.Linger)
			select {
			case <-t.C:
			case <-c.l.ctx.Done():
				t.Stop()
			}
		}
		for {
			acquired := false
			select {
			case slots <- struct{}{}:
				acquired = true
			default:
			}
			if !acquired {
				// All slots busy: the next produce to finish wakes us, and
				// what queues meanwhile goes out in one batch.
				break
			}
			batch := c.take()
			if len(batch) == 0 {
				<-slots
				break
			}
			inflight.Add(1)
			go func() {
				defer inflight.Done()
				c.produce(batch)
				<-slots
				select {
				case c.wake <- struct{}{}:
				default:
				}
			}()
		}
	}
}

// take removes the next batch from the queue: at least one request, then
// more while they fit BatchSize and BatchBytes.
func (c *committer) take() []*request {
	o := &c.l.opts
	c.mu.Lock()
	defer c.mu.Unlock()
	n, recs, bytes := 0, 0, batchOverhead
	for n < len(c.queue) {
		r := c.queue[n]
		if n > 0 && (recs+len(r.recs) > o.BatchSize || bytes+r.bytes > o.BatchBytes) {
			break
		}
		n, recs, bytes = n+1, recs+len(r.recs), bytes+r.bytes
	}
	batch := c.queue[:n:n]
	c.queue = c.queue[n:]
	if len(c.queue) == 0 {
		c.queue = nil
	}
	return batch
}

// produce sends batch as one produce request with acks=all. Kafka appends
// a batch atomically and assigns it consecutive offsets from BaseOffset, so
// record i of the batch is at BaseOffset+i.
func (c *committer) produce(batch []*request) {
	var recs []kafka.Record
	if len(batch) == 1 {
		recs = batch[0].recs
	} else {
		for _, r := range batch {
			recs = append(recs, r.recs...)
		}
	}
	// The log's context, not a caller's: a request already sent must be
	// seen to the end so its outcome is known. Close cancels it.
	var res *kafka.ProduceResponse
	err := c.l.retry(c.l.ctx, func() error {
		ctx, cancel := context.WithTimeout(c.l.ctx, c.l.opts.RequestTimeout)
		defer cancel()
		var err error
		res, err = c.l.client.Produce(ctx, &kafka.ProduceRequest{
			Topic:        c.l.opts.Topic,
			Partition:    int(c.p),
			RequiredAcks: kafka.RequireAll,
			Records:      kafka.NewRecordReader(recs...),
		})
		switch {
		case err != nil:
			return err
		case res.Error != nil:
			return res.Error
		case len(res.RecordErrors) > 0:
			for i, e := range res.RecordErrors {
				return fmt.Errorf("record %d: %w", i, e)
			}
		}
		return nil
	})
	if err != nil {
		err = c.wrap(err, len(recs))
	}
	base := int64(0)
	if res != nil {
		base = res.BaseOffset
	}
	for _, r := range batch {
		r.finish(base, err)
		base += int64(len(r.recs))
	}
}

func (c *committer) wrap(err error, n int) error {
	if errors.Is(err, kafka.MessageSizeTooLarge) || errors.Is(err, kafka.RecordListTooLarge) {
		return fmt.Errorf("%w: kafkalog: batch of %d records to partition %d: %v", engine.ErrRecordTooLarge, n, c.p, err)
	}
	return fmt.Errorf("kafkalog: produce %d records to %s/%d: %w", n, c.l.opts.Topic, c.p, err)
}

// readCtx is ctx, also cancelled by Close.
func (l *Log) readCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(l.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

func (l *Log) checkPartition(p int32) error {
	if p < 0 || p >= l.opts.Partitions {
		return fmt.Errorf("%w: partition %d, log has %d", engine.ErrBadPartition, p, l.opts.Partitions)
	}
	return nil
}

// Read fetches up to max entries of p from offset from. Kafka serves
// consumers only up to the high watermark, so every entry returned is
// replicated to all in-sync replicas. At the end it fetches again, each
// fetch waiting up to ReadMaxWait on the broker, until data or ctx is done.
func (l *Log) Read(ctx context.Context, p int32, from int64, max int) ([]engine.Entry, error) {
	if l.closed() {
		return nil, engine.ErrLogClosed
	}
	if err := l.checkPartition(p); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if from < 0 {
		return nil, fmt.Errorf("%w: offset %d", engine.ErrOffsetRange, from)
	}
	if max < 1 {
		max = 1
	}
	ctx, cancel := l.readCtx(ctx)
	defer cancel()
	for {
		var res *kafka.FetchResponse
		err := l.retry(ctx, func() error {
			var err error
			res, err = l.client.Fetch(ctx, &kafka.FetchRequest{
				Topic:     l.opts.Topic,
				Partition: int(p),
				Offset:    from,
				MinBytes:  1,
				MaxBytes:  int64(l.opts.ReadMaxBytes),
				MaxWait:   l.opts.ReadMaxWait,
			})
			if err == nil && res.Error != nil {
				err = res.Error
			}
			return err
		})
		if err != nil {
			return nil, l.readErr(ctx, p, from, err)
		}
		es, err := collect(res.Records, p, from, max)
		if err != nil {
			return nil, l.readErr(ctx, p, from, err)
		}
		if len(es) > 0 {
			return es, nil
		}
		if err := ctx.Err(); err != nil {
			return nil, l.readErr(ctx, p, from, err)
		}
	}
}

func (l *Log) readErr(ctx context.Context, p int32, from int64, err error) error {
	switch {
	case l.closed():
		return engine.ErrLogClosed
	case ctx.Err() != nil:
		return ctx.Err()
	case pastDeadline(ctx):
		// kafka-go puts ctx's deadline on the connection, so the fetch can
		// fail with an i/o timeout a moment before ctx reports it.
		return context.DeadlineExceeded
	case errors.Is(err, kafka.OffsetOutOfRange):
		return fmt.Errorf("%w: partition %d offset %d: %v", engine.ErrOffsetRange, p, from, err)
	}
	return fmt.Errorf("kafkalog: fetch %s/%d at %d: %w", l.opts.Topic, p, from, err)
}

func pastDeadline(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

// collect copies the records at from and after, up to max, out of a fetch
// response. Kafka may start the response at the head of the batch holding
// from, so earlier offsets are skipped.
func collect(rr kafka.RecordReader, p int32, from int64, max int) ([]engine.Entry, error) {
	if rr == nil {
		return nil, nil
	}
	var es []engine.Entry
	for len(es) < max {
		r, err := rr.ReadRecord()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if r.Offset < from+int64(len(es)) {
			continue
		}
		if r.Offset != from+int64(len(es)) {
			// Offsets are dense unless the topic was compacted or written
			// transactionally; neither is allowed for the log.
			return nil, fmt.Errorf("kafkalog: offset %d follows %d: the topic has gaps", r.Offset, from+int64(len(es))-1)
		}
		k, err := readBytes(r.Key)
		if err != nil {
			return nil, err
		}
		v, err := readBytes(r.Value)
		if err != nil {
			return nil, err
		}
		es = append(es, engine.Entry{Partition: p, Offset: r.Offset, Key: k, Value: v})
	}
	return es, nil
}

// readBytes copies b into a slice of its own (full capacity, so a caller's
// append cannot reach a neighbour).
func readBytes(b kafka.Bytes) ([]byte, error) {
	if b == nil {
		return nil, nil
	}
	buf := make([]byte, b.Len())
	if _, err := io.ReadFull(b, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

// End returns p's high watermark: the offset after the last record
// acknowledged by all in-sync replicas.
func (l *Log) End(ctx context.Context, p int32) (int64, error) {
	if l.closed() {
		return 0, engine.ErrLogClosed
	}
	if err := l.checkPartition(p); err != nil {
		return 0, err
	}
	ctx, cancel := l.readCtx(ctx)
	defer cancel()
	var end int64
	err := l.retry(ctx, func() error {
		ends, err := kafkaadmin.EndOffsets(ctx, l.client, l.opts.Topic, int(p))
		if err != nil {
			return err
		}
		end = ends[0]
		return nil
	})
	if err != nil {
		return 0, l.endErr(ctx, p, err)
	}
	return end, nil
}

func (l *Log) endErr(ctx context.Context, p int32, err error) error {
	switch {
	case l.closed():
		return engine.ErrLogClosed
	case ctx.Err() != nil:
		return ctx.Err()
	case pastDeadline(ctx):
		return context.DeadlineExceeded
	}
	return fmt.Errorf("kafkalog: end of %s/%d: %w", l.opts.Topic, p, err)
}

// Close cancels reads, fails queued appends with ErrLogClosed, and waits
// for the committers; a produce request in flight is cancelled, so its
// Append reports ErrLogClosed even if Kafka wrote it. Idempotent.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		l.cancel()
		l.wg.Wait()
		l.transport.CloseIdleConnections()
	})
	return nil
}

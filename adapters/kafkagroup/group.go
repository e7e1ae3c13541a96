// Package kafkagroup shares a log's partitions between mdsync processes
// through a Kafka consumer group: one member per process, subscribed to the
// log's topic. The group assigns each partition to one process, which
// restores its projections from the log, applies it, runs its relay and
// decides the operations of the users on it. See docs/design-notes.md
// ("Partition ownership") and docs/operations.md ("Several processes").
//
// Readers start from the projection's own checkpoint, never from a group
// offset. The group's committed offsets are written for lag monitoring
// only, from a synced checkpoint, and their metadata carries the owner's
// address: that is the directory a non-owner reads to answer 1018 with
// where to reconnect.
//
// A *Group is the engine's Membership port (Owns) and wraps the store's
// WaitApplied so that a wait ends when its partition is given up.
package kafkagroup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/mdsync/mdsync/engine"
	"github.com/mdsync/mdsync/projections"
)

// Defaults.
const (
	DefaultCommitInterval = time.Second
	// DefaultSessionTimeout is Kafka's group.min.session.timeout.ms
	// default: a killed process's partitions move after this long.
	DefaultSessionTimeout   = 6 * time.Second
	DefaultHeartbeat        = time.Second
	DefaultRebalanceTimeout = 10 * time.Second
	// MaxOwnerAddr bounds the address published in offset metadata (Kafka's
	// offset.metadata.max.bytes defaults to 4096).
	MaxOwnerAddr = 1000
)

// Options configure a Group. Brokers, Topic, GroupID and Addr are
// required; every other field has the default stated.
type Options struct {
	// Brokers are the Kafka bootstrap addresses. Required.
	Brokers []string
	// Topic is the log's topic; the group subscribes to it. Required.
	Topic string
	// GroupID is the consumer group every process sharing the topic joins.
	// Required.
	GroupID string
	// Addr is where devices reach this process (host:port), published as
	// the owner of the partitions it serves. Required, at most MaxOwnerAddr.
	Addr string
	// Logger receives ownership changes and group errors. Default slog.Default().
	Logger *slog.Logger
	// CommitInterval is how often synced checkpoints are committed as group
	// offsets and the owner directory is refreshed. Default 1 s.
	CommitInterval time.Duration
	// SessionTimeout, HeartbeatInterval and RebalanceTimeout are the
	// consumer group's. Defaults 6 s, 1 s, 10 s.
	SessionTimeout, HeartbeatInterval, RebalanceTimeout time.Duration
}

// EnsureDefaults sets every zero field that has a default.
func (o *Options) EnsureDefaults() {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.CommitInterval == 0 {
		o.CommitInterval = DefaultCommitInterval
	}
	if o.SessionTimeout == 0 {
		o.SessionTimeout = DefaultSessionTimeout
	}
	if o.HeartbeatInterval == 0 {
		o.HeartbeatInterval = DefaultHeartbeat
	}
	if o.RebalanceTimeout == 0 {
		o.RebalanceTimeout = DefaultRebalanceTimeout
	}
}

// Validate reports a missing required field or a value out of range.
func (o *Options) Validate() error {
	switch {
	case len(o.Brokers) == 0 || o.Topic == "" || o.GroupID == "" || o.Addr == "":
		return errors.New("kafkagroup: Options.Brokers, Topic, GroupID and Addr are required")
	case len(o.Addr) > MaxOwnerAddr:
		return fmt.Errorf("kafkagroup: Options.Addr has %d bytes, limit %d", len(o.Addr), MaxOwnerAddr)
	case o.CommitInterval < 0 || o.SessionTimeout < 0 || o.HeartbeatInterval < 0 || o.RebalanceTimeout < 0:
		return errors.New("kafkagroup: Options durations must not be negative")
	}
	return nil
}

// Group is this process's membership in the consumer group: which of the
// log's partitions it serves, and the loops that serve them. Its methods
// are safe for concurrent use.
type Group struct {
	opts   Options
	lg     engine.Log
	st     *projections.Store
	client *kafka.Client

	// stop and ctx are Run's: stop ends Run on a fatal error; ctx is done
	// once Run is stopping.
	stop context.CancelFunc
	ctx  context.Context

	mu    sync.Mutex
	parts []partOwn
	dir   map[int32]ownerMeta // partition -> its owner, from committed offset metadata

	errOnce sync.Once
	err     error
}

var _ engine.Membership = (*Group)(nil)

// New returns a Group over an open log (on opts.Topic) and the store that
// projects it. It serves nothing until Run.
func New(lg engine.Log, st *projections.Store, opts Options) (*Group, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if lg.Partitions() != st.Partitions() {
		return nil, fmt.Errorf("%w: store %d, log %d", projections.ErrPartitionMismatch, st.Partitions(), lg.Partitions())
	}
	return &Group{
		opts: opts, lg: lg, st: st,
		client: &kafka.Client{Addr: kafka.TCP(opts.Brokers...), Timeout: 5 * time.Second},
		parts:  make([]partOwn, lg.Partitions()),
		dir:    map[int32]ownerMeta{},
	}, nil
}

// OwnerOf tells where partition p is served: here (local true, addr this
// process's Addr), by another process (its address, local false), or by
// nobody known right now (addr "", local false: the partition is moving
// or being restored; retry shortly).
func (o *Group) OwnerOf(p int32) (addr string, local bool) {
	if p < 0 || int(p) >= len(o.parts) {
		return "", false
	}
	return o.ownerOf(p)
}

// Serving reports whether this process serves partition p now (restored
// and applying it).
func (o *Group) Serving(p int32) bool {
	return p >= 0 && int(p) < len(o.parts) && o.state(p) == serving
}

type ownState int

const (
	notOwned ownState = iota
	restoring
	serving
)

// partOwn is one partition's ownership. ctx is the assignment's context
// (the generation's, cancelled when the group rebalances) while owned.
type partOwn struct {
	state ownState
	ctx   context.Context
}

// ownerMeta is the committed offset's metadata: who serves the partition,
// and how far its relay got (copies before it are in the log).
type ownerMeta struct {
	Addr       string `json:"addr"`
	Generation int32  `json:"generation"`
	Relay      int64  `json:"relay"`
}

func (o *Group) state(p int32) ownState {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.parts[p].state
}

func (o *Group) set(p int32, ctx context.Context, s ownState) {
	o.mu.Lock()
	defer o.mu.Unlock()
	// A late reset from an ended assignment must not clobber a newer one.
	if s == notOwned && o.parts[p].ctx != ctx {
		return
	}
	o.parts[p] = partOwn{state: s, ctx: ctx}
	if s == notOwned {
		o.parts[p].ctx = nil
	}
}

func (o *Group) ownerOf(p int32) (string, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case o.parts[p].state == serving:
		return o.opts.Addr, true
	case o.parts[p].state == restoring:
		return "", false
	}
	// The directory may still name this process for a partition it just
	// gave up: unknown until the new owner publishes itself.
	if a := o.dir[p].Addr; a != o.opts.Addr {
		return a, false
	}
	return "", false
}

// Owns is engine.Membership: nil when this process serves p; else an
// *engine.Error, CodeUnavailable while p is being restored here, or
// CodeNotOwner naming the owner when known.
func (o *Group) Owns(p int32) error {
	if p < 0 || int(p) >= len(o.parts) {
		return engine.Errorf(engine.CodeInvalidArgument, "partition %d out of range", p)
	}
	switch addr, local := o.ownerOf(p); {
	case local:
		return nil
	case o.state(p) == restoring:
		return engine.Errorf(engine.CodeUnavailable, "partition %d is being restored here; retry", p)
	case addr != "":
		return engine.Errorf(engine.CodeNotOwner, "partition %d is served by %s", p, addr)
	default:
		return engine.Errorf(engine.CodeNotOwner, "partition %d is not served here; its owner is not known yet, retry", p)
	}
}

// fatal stops Run on err, unless Run is stopping anyway (the log closed
// under a loop is then expected).
func (o *Group) fatal(err error) {
	if o.ctx.Err() != nil {
		return
	}
	o.errOnce.Do(func() {
		o.err = err
		o.opts.Logger.Error("kafkagroup: stopping", "err", err)
		o.stop()
	})
}

// Run joins the group and serves each generation's partitions until ctx is
// done, then leaves the group; no partition is applied after it returns.
// It returns the first fatal error (a partition's projection or relay
// failed without progress), nil on a clean stop. Call it once.
func (o *Group) Run(ctx context.Context) error {
	ctx, o.stop = context.WithCancel(ctx)
	defer o.stop()
	o.ctx = ctx
	lg := o.opts.Logger
	cg, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:                o.opts.GroupID,
		Brokers:           o.opts.Brokers,
		Topics:            []string{o.opts.Topic},
		HeartbeatInterval: o.opts.HeartbeatInterval,
		SessionTimeout:    o.opts.SessionTimeout,
		RebalanceTimeout:  o.opts.RebalanceTimeout,
		JoinGroupBackoff:  time.Second,
		Logger:            kafka.LoggerFunc(func(f string, a ...any) { lg.Debug(fmt.Sprintf(f, a...), "component", "kafka-group") }),
		ErrorLogger:       kafka.LoggerFunc(func(f string, a ...any) { lg.Warn(fmt.Sprintf(f, a...), "component", "kafka-group") }),
	})
	if err != nil {
		return fmt.Errorf("kafkagroup: consumer group: %w", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); o.directoryLoop(ctx) }()
	for {
		gen, err := cg.Next(ctx)
		if ctx.Err() != nil {
			break
		}
		if err != nil {
			// kafka-go rejoins by itself (after a backoff); keep asking.
			lg.Warn("consumer group", "err", err)
			continue
		}
		var ps []int32
		for _, a := range gen.Assignments[o.opts.Topic] {
			ps = append(ps, int32(a.ID))
		}
		lg.Info("partitions assigned", "generation", gen.ID, "member", gen.MemberID, "partitions", ps)
		for _, p := range ps {
			if p < 0 || int(p) >= len(o.parts) {
				o.fatal(fmt.Errorf("kafkagroup: group assigned partition %d, log has %d", p, len(o.parts)))
				continue
			}
			gen.Start(func(gctx context.Context) { o.serve(gctx, gen, p) })
		}
		// Any function Start runs ends the generation when it returns, so
		// this one lives as long as the generation.
		gen.Start(func(gctx context.Context) { o.commitLoop(gctx, gen) })
	}
	// Close waits for the generation's functions: no partition is applied
	// after run returns.
	cerr := cg.Close()
	wg.Wait()
	if o.err != nil {
		return o.err
	}
	if cerr != nil && !errors.Is(cerr, kafka.ErrGroupClosed) {
		lg.Warn("consumer group close", "err", cerr)
	}
	return nil
}

// serve owns partition p for one generation: restore it from the log, then
// apply and relay it until the generation ends. It returns only once both
// loops stopped, and the group waits for it before the partition can be
// assigned elsewhere: a partition is never given up while being applied.
func (o *Group) serve(gctx context.Context, gen *kafka.Generation, p int32) {
	o.set(p, gctx, restoring)
	// Stop answering for p as soon as the generation ends, before the
	// loops have wound down: new submissions get 1018, waiters wake.
	stopMark := context.AfterFunc(gctx, func() { o.set(p, gctx, notOwned) })
	defer func() {
		stopMark()
		o.set(p, gctx, notOwned)
	}()
	// A log failure (the broker restarting, a leader moving) is retried
	// from the checkpoint while the generation lasts: the group itself
	// notices a lost broker and moves on. Only a failure that persists with
	// no progress stops the node.
	failures := 0
	for gctx.Err() == nil && o.ctx.Err() == nil {
		before := o.st.Checkpoint(p).NextOffset
		err := o.serveOnce(gctx, gen, p)
		if err == nil || gctx.Err() != nil {
			return
		}
		if o.st.Checkpoint(p).NextOffset > before {
			failures = 0
		}
		if failures++; failures > maxServeFailures {
			o.fatal(fmt.Errorf("kafkagroup: partition %d failed %d times without progress: %w", p, failures, err))
			return
		}
		o.set(p, gctx, restoring)
		o.opts.Logger.Warn("partition failed; restarting it", "partition", p, "err", err, "failures", failures)
		select {
		case <-gctx.Done():
		case <-time.After(time.Duration(failures) * 200 * time.Millisecond):
		}
	}
}

// maxServeFailures bounds the consecutive restarts of a partition that
// makes no progress (~1 min of backoff in all) before the node stops.
const maxServeFailures = 25

// serveOnce restores p, then applies and relays it until gctx is done
// (nil) or a loop fails (its error).
func (o *Group) serveOnce(gctx context.Context, gen *kafka.Generation, p int32) error {
	start := time.Now()
	if err := o.st.RestorePartition(gctx, o.lg, p); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	o.adoptRelay(gctx, p)
	o.set(p, gctx, serving)
	o.opts.Logger.Info("serving partition", "partition", p, "generation", gen.ID,
		"checkpoint", o.st.Checkpoint(p).NextOffset, "restore", time.Since(start).Round(time.Millisecond))
	// Publish the new owner at once rather than at the next tick.
	o.commit(gctx, gen, []int32{p})
	g, ctx := errgroup.WithContext(gctx)
	g.Go(func() error { return o.st.RunPartition(ctx, o.lg, p) })
	g.Go(func() error { return o.st.RelayPartition(ctx, o.lg, p) })
	return g.Wait()
}

// adoptRelay starts p's relay where the previous owner's ended, when it
// published a position beyond this store's: a process taking a partition
// over does not append its history's copies again. Without a published
// position (or on an error) the relay starts from its own position and
// the copies it repeats are dropped by their recipients.
func (o *Group) adoptRelay(ctx context.Context, p int32) {
	o.refreshDirectory(ctx)
	o.mu.Lock()
	prev := o.dir[p].Relay
	o.mu.Unlock()
	if prev <= o.st.RelayPosition(p) {
		return
	}
	if err := o.st.AdvanceRelay(p, prev); err != nil {
		o.opts.Logger.Warn("adopt relay position", "partition", p, "err", err)
		return
	}
	o.opts.Logger.Info("relay continues from the previous owner's position", "partition", p, "relay", prev)
}

// commitLoop commits the served partitions' synced checkpoints every
// CommitInterval until the generation ends.
func (o *Group) commitLoop(gctx context.Context, gen *kafka.Generation) {
	t := time.NewTicker(o.opts.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-gctx.Done():
			return
		case <-t.C:
		}
		var ps []int32
		o.mu.Lock()
		for p := range o.parts {
			if o.parts[p].state == serving && o.parts[p].ctx == gctx {
				ps = append(ps, int32(p))
			}
		}
		o.mu.Unlock()
		o.commit(gctx, gen, ps)
	}
}

// commit writes, for each partition, its synced checkpoint as the group
// offset (lag = log end - offset) with this process as owner in the
// metadata. The generation fences it: a process that lost the partition
// gets ILLEGAL_GENERATION and changes nothing.
func (o *Group) commit(ctx context.Context, gen *kafka.Generation, ps []int32) {
	if len(ps) == 0 {
		return
	}
	var cs []kafka.OffsetCommit
	metas := map[int32]ownerMeta{}
	for _, p := range ps {
		// The relay position first: it is behind the checkpoint it is
		// published with, never ahead of the copies in the log.
		m := ownerMeta{Addr: o.opts.Addr, Generation: gen.ID, Relay: o.st.RelayPosition(p)}
		off, err := o.st.SyncedCheckpoint(p)
		if err != nil {
			o.opts.Logger.Warn("synced checkpoint", "partition", p, "err", err)
			return
		}
		meta, _ := json.Marshal(m)
		metas[p] = m
		cs = append(cs, kafka.OffsetCommit{Partition: int(p), Offset: off, Metadata: string(meta)})
	}
	cctx, cancel := context.WithTimeout(ctx, o.opts.CommitInterval+5*time.Second)
	defer cancel()
	res, err := o.client.OffsetCommit(cctx, &kafka.OffsetCommitRequest{
		GroupID: o.opts.GroupID, GenerationID: int(gen.ID), MemberID: gen.MemberID,
		Topics: map[string][]kafka.OffsetCommit{o.opts.Topic: cs},
	})
	if err == nil {
		for _, pr := range res.Topics[o.opts.Topic] {
			if pr.Error != nil {
				err = fmt.Errorf("partition %d: %w", pr.Partition, pr.Error)
				break
			}
		}
	}
	if err != nil && ctx.Err() == nil {
		o.opts.Logger.Debug("offset commit", "generation", gen.ID, "err", err)
		return
	}
	if err == nil {
		o.mu.Lock()
		for _, p := range ps {
			o.dir[p] = metas[p]
		}
		o.mu.Unlock()
	}
}

// directoryLoop refreshes the owner directory from the group's committed
// offset metadata every CommitInterval until ctx is done.
func (o *Group) directoryLoop(ctx context.Context) {
	t := time.NewTicker(o.opts.CommitInterval)
	defer t.Stop()
	for {
		o.refreshDirectory(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (o *Group) refreshDirectory(ctx context.Context) {
	ps := make([]int, len(o.parts))
	for i := range ps {
		ps[i] = i
	}
	cctx, cancel := context.WithTimeout(ctx, o.opts.CommitInterval+5*time.Second)
	defer cancel()
	res, err := o.client.OffsetFetch(cctx, &kafka.OffsetFetchRequest{
		GroupID: o.opts.GroupID, Topics: map[string][]int{o.opts.Topic: ps},
	})
	if err == nil {
		err = res.Error
	}
	if err != nil {
		if ctx.Err() == nil {
			o.opts.Logger.Debug("owner directory", "err", err)
		}
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, pr := range res.Topics[o.opts.Topic] {
		var m ownerMeta
		if pr.Error != nil || pr.Partition < 0 || pr.Partition >= len(o.parts) || json.Unmarshal([]byte(pr.Metadata), &m) != nil {
			continue
		}
		o.dir[int32(pr.Partition)] = m
	}
}

// WaitApplied is the store's WaitApplied (see engine.Projector) for a
// partition served here; it does not outlive the partition's ownership:
// once p is given up it returns Owns' error (1018, or 1009 to retry)
// instead of waiting for an event this process will no longer apply. On a
// partition not served here it returns nil when pos is applied already.
func (o *Group) WaitApplied(ctx context.Context, pos engine.Position) error {
	if pos.Partition < 0 || int(pos.Partition) >= len(o.parts) {
		return fmt.Errorf("kafkagroup: wait: %w", engine.ErrBadPartition)
	}
	o.mu.Lock()
	part := o.parts[pos.Partition]
	o.mu.Unlock()
	if part.state == notOwned {
		// Applied already (e.g. just before a rebalance), or never here.
		if o.st.Checkpoint(pos.Partition).NextOffset > pos.Offset {
			return nil
		}
		return o.Owns(pos.Partition)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(part.ctx, cancel)()
	err := o.st.WaitApplied(wctx, pos)
	if err != nil && ctx.Err() == nil && part.ctx.Err() != nil {
		// The partition moved while we waited: the operation is in the log
		// and its new owner decides it; a retry there with the same client
		// op id returns that decision.
		if oerr := o.Owns(pos.Partition); oerr != nil {
			return oerr
		}
		return engine.Errorf(engine.CodeUnavailable, "partition %d moved while waiting; retry", pos.Partition)
	}
	return err
}

// WaitRelayed is the store's WaitRelayed for a partition served here, with
// WaitApplied's ownership rule: once p is given up it returns Owns' error
// instead of waiting for a relay this process no longer runs.
func (o *Group) WaitRelayed(ctx context.Context, p int32, offset int64) error {
	if p < 0 || int(p) >= len(o.parts) {
		return fmt.Errorf("kafkagroup: wait relayed: %w", engine.ErrBadPartition)
	}
	o.mu.Lock()
	part := o.parts[p]
	o.mu.Unlock()
	if part.state == notOwned {
		return o.Owns(p)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(part.ctx, cancel)()
	err := o.st.WaitRelayed(wctx, p, offset)
	if err != nil && ctx.Err() == nil && part.ctx.Err() != nil {
		if oerr := o.Owns(p); oerr != nil {
			return oerr
		}
		return engine.Errorf(engine.CodeUnavailable, "partition %d moved while waiting; retry", p)
	}
	return err
}

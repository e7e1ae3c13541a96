package projections

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
)

// The projector is one runner with handlers. The Runner owns what every
// projection of the log needs and must not get twice: the Pebble batch per
// read batch, the checkpoint written in it (invariant 3), the dedup of a
// retried append (the decision table), the actor rule (invariant 9), the
// policy each event is decided under, and the visibility of a commit to
// waiters. A Handler owns the state of one concern: which kinds it decides
// or observes, and which tables it writes. The handlers of a runner are
// declared in one place (Store.topology for the main projection, the
// aggregates package for the counts, OpenAccounts for the accounts), the way goka declares a processor's
// topology as data.
//
// Per entry, in log order:
//
//  1. decode; an undecodable record, an unknown kind or a record without
//     an actor is skipped (counted in the checkpoint), and so is, under
//     RunnerOptions.HandledOnly, a kind no handler takes;
//  2. dedup: a decision already stored for (stream, user, client op id)
//     makes the entry a duplicate;
//  3. the app's policy as this partition applies it;
//  4. the actor rule: an operation on its actor's own stream by a login ID
//     without an active session is refused with the code that ended it;
//  5. otherwise the one handler that decides the kind decides it (a kind no
//     handler of the runner decides is recorded as accepted);
//  6. the decision is stored (the dedup key of step 2);
//  7. every handler that observes the kind sees the outcome.

// ErrGap is returned when entries handed to Apply do not start at the
// partition's checkpoint: applying them would skip or repeat events.
var ErrGap = errors.New("projections: entries do not continue the checkpoint")

// Handler is one concern of a projection: the kinds it decides or
// observes and the tables (key tags) it writes. A handler writes only its
// own tables (the Txn refuses others); it may read any.
type Handler struct {
	// Name names the handler in errors.
	Name string
	// Categories are the kinds the handler handles, by category; Kinds adds
	// single kinds. A kind is decided by at most one handler of a runner.
	Categories []engine.Category
	Kinds      []pb.Kind
	// Tables are the key tags (first key byte) the handler writes.
	Tables []byte
	// Decide decides an event that passed the dedup and the actor rule and
	// writes its state. A nil decision with a nil error skips the event
	// (a malformed derived record): counted, not stored, not observed.
	Decide func(t *Txn, ev *pb.Event, pos engine.Position, pol *pb.Policy) (*pb.Decision, error)
	// Observe sees every decided event of its kinds (accepted or refused),
	// after its decision, with the session changes the deciding handler
	// made. A handler has Decide or Observe, not both.
	Observe func(t *Txn, o *Outcome) error
}

// Outcome is what deciding one event produced, as an observer sees it.
type Outcome struct {
	Event    *pb.Event
	Pos      engine.Position
	Decision *pb.Decision
	// Sessions are the users' session states the decision changed, in the
	// order they were written. The slice is reused for the next event: an
	// observer must not keep it.
	Sessions []SessionChange
}

// SessionChange is one user's sessions before and after a decision.
type SessionChange struct {
	App, User     string
	Before, After *pb.UserSessions
}

// runnerTables are the tables the runner itself writes: checkpoints,
// decisions and the store's meta keys.
var runnerTables = []byte{tagCheckpoint, tagDecision}

// dedupMark is the value of a decision key under RunnerOptions.DedupMarks.
// Not empty: an empty value reads as absent (Txn.raw).
var dedupMark = []byte{1}

// Txn is one Pebble batch with a read-your-writes overlay, so several
// events are applied in one batch while each sees the state the previous
// ones produced. Handlers read and write through it; the runner commits it
// with the checkpoint. A Txn is used by one goroutine.
type Txn struct {
	db      *pebble.DB
	b       *pebble.Batch
	overlay map[string][]byte
	deltas  map[string]int64
	owner   *Handler   // the handler running, nil for the runner
	own     *[256]bool // the tables the running code may write

	entries  []AppliedEntry  // timeline entries appended in this batch
	sessions []SessionChange // session changes of the current event

	hot     *hotCache  // the partition's committed hot keys (hot.go); nil: none
	filter  *keyFilter // every key written to the filtered tables; nil: none
	written [][]byte   // keys of the filtered tables written in this batch

	// decoded holds the decoded form of sessions values of the overlay
	// (sessionsOf): shared, never modified; dropped when the key is
	// written other than by putSessions.
	decoded map[string]*pb.UserSessions

	// state holds the decoded values of the stateTable keys the batch
	// read, owned by the batch, and dirty the keys changed since they
	// were last written (txnstate.go).
	state map[string]*stateVal
	dirty []string
	pols  map[policyID]*pb.Policy // decoded policies (policyOf)
	// recipients is the state deliveries found per user (recipientOf),
	// valid while stateGen, counted up when a decoded value is dropped,
	// is what it was.
	recipients map[userID]*recipient
	stateGen   uint64
	groups     map[string]*pb.Group // decoded groups (groupOf)

	ops []txnOp // the batch's writes, in order, until fill (txnstate.go)

	kbuf []byte // lookupKey's buffer
}

// lookupKey is key(tag, a, b) in a buffer the next lookupKey reuses: for
// a key only looked up (a map index or Pebble read copies what it keeps),
// never written (the batch keeps a written key until it commits).
func (t *Txn) lookupKey(tag byte, a, b string) []byte {
	k := append(t.kbuf[:0], tag, 0)
	k = append(append(append(k, a...), 0), b...)
	t.kbuf = k
	return k
}

// reset readies t for a new batch b. A partition's batches reuse one Txn,
// so its maps keep their room from one batch to the next: growing them
// again in every batch was a twentieth of applying a login. What a batch
// hands out (entries, to OnApplied) is never reused.
func (t *Txn) reset(b *pebble.Batch, own *[256]bool) {
	t.b, t.owner, t.own = b, nil, own
	t.overlay = resetMap(t.overlay)
	t.deltas = resetMap(t.deltas)
	t.decoded = resetMap(t.decoded)
	t.state = resetMap(t.state)
	t.pols = resetMap(t.pols)
	t.recipients = resetMap(t.recipients)
	t.groups = resetMap(t.groups)
	t.entries = nil
	t.sessions = resetSlice(t.sessions)
	t.written = resetSlice(t.written)
	t.dirty = resetSlice(t.dirty)
	t.ops = resetSlice(t.ops)
	t.stateGen++
}

// reuseMax bounds the maps and slices a Txn keeps for the next batch: one
// that a large batch grew (a policy change visits every user) is dropped,
// as clearing it would cost its size in every later batch.
const reuseMax = 1 << 14

func resetMap[K comparable, V any](m map[K]V) map[K]V {
	if m == nil || len(m) > reuseMax {
		return map[K]V{}
	}
	clear(m)
	return m
}

// resetSlice empties s, dropping what it points to, so a reused slice
// does not keep the last batch's keys and values alive.
func resetSlice[E any](s []E) []E {
	if cap(s) > reuseMax {
		return nil
	}
	clear(s[:cap(s)])
	return s[:0]
}

// sessionsOf returns a user's sessions as of this batch, decoding the
// stored value at most once per batch (and, with the hot cache, once per
// change). The result is shared: callers must not modify it.
func (t *Txn) sessionsOf(app, user string) (*pb.UserSessions, error) {
	k := t.lookupKey(tagSessions, app, user) // written only as a decoded key's string
	if st, ok := t.decoded[string(k)]; ok {
		return st, nil
	}
	if _, written := t.overlay[string(k)]; !written && t.hot != nil {
		if e := t.hot.entry(string(k)); e != nil {
			// The committed value: its decoded form is kept beside it,
			// decoded once (shared, never modified, so a batch that fails
			// leaves it true).
			if e.s == nil {
				st := &pb.UserSessions{}
				if err := proto.Unmarshal(e.b, st); err != nil {
					return nil, fmt.Errorf("projections: decode %q: %w", k, err)
				}
				e.s = st
			}
			return e.s, nil
		}
	}
	st := &pb.UserSessions{}
	if _, err := t.decodeRaw(k, st); err != nil {
		return nil, err
	}
	t.decoded[string(k)] = st
	return st, nil
}

// get reads k as of this batch. Reads from Pebble are remembered in the
// overlay, misses as nil, so a batch reads each key (the app's policy, a busy
// user's sessions) from Pebble at most once.
func (t *Txn) get(k []byte, m proto.Message) (bool, error) {
	v, ok, err := t.raw(k)
	if err != nil || !ok {
		return false, err
	}
	if err := proto.Unmarshal(v, m); err != nil {
		return false, fmt.Errorf("projections: decode %q: %w", k, err)
	}
	return true, nil
}

// raw returns k's value as of this batch. A value stored empty reads as
// absent after its batch (an empty proto message and no message decode
// alike), as it always has: the digest depends on it.
func (t *Txn) raw(k []byte) ([]byte, bool, error) {
	if stateTable(k[0]) {
		if sv := t.state[string(k)]; sv != nil && sv.dirty {
			// Read-your-writes for a value changed decoded (txnstate.go).
			if err := t.writeState(string(k), sv); err != nil {
				return nil, false, err
			}
		}
	}
	if v, ok := t.overlay[string(k)]; ok {
		return v, v != nil, nil // nil: absent, or deleted in this batch
	}
	// What the batch has not written is the committed value. The hot cache
	// and the key filter answer it the same way for the whole batch (they
	// change only after the commit), so neither answer is copied into the
	// overlay: a read of a committed key costs one lookup, and keepHot has
	// nothing to put back for it.
	if t.hot != nil && hotTable(k[0]) {
		if e := t.hot.entry(string(k)); e != nil {
			return e.b, e.b != nil, nil
		}
	}
	if t.filter != nil && filtered(k[0]) && !t.filter.mayContain(k) {
		return nil, false, nil // never written: a new operation's dedup, a new user's sessions
	}
	var v []byte
	raw, closer, err := t.db.Get(k)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
	case err != nil:
		return nil, false, fmt.Errorf("projections: get %q: %w", k, err)
	default:
		v = append([]byte(nil), raw...)
		if err := closer.Close(); err != nil {
			return nil, false, fmt.Errorf("projections: get %q: %w", k, err)
		}
	}
	t.overlay[string(k)] = v // read once a batch; keepHot caches it after the commit
	return v, v != nil, nil
}

func (t *Txn) may(k []byte) error {
	if len(k) == 0 || !t.own[k[0]] {
		name := "the runner"
		if t.owner != nil {
			name = "handler " + t.owner.Name
		}
		return fmt.Errorf("projections: %s writes %q outside its tables", name, k)
	}
	return nil
}

func (t *Txn) put(k []byte, m proto.Message) error {
	v, err := engine.EncodeState(m)
	if err != nil {
		return err
	}
	return t.set(k, v)
}

func (t *Txn) set(k, v []byte) error {
	if err := t.may(k); err != nil {
		return err
	}
	t.forget(k)
	return t.write(k, v)
}

// forget drops the decoded forms of k, which is about to be written as
// bytes.
func (t *Txn) forget(k []byte) {
	switch {
	case k[0] == tagSessions:
		delete(t.decoded, string(k))
	case k[0] == tagPolicy:
		clear(t.pols)
	case k[0] == tagGroup:
		delete(t.groups, string(k))
	case stateTable(k[0]):
		if _, ok := t.state[string(k)]; ok {
			delete(t.state, string(k))
			t.stateGen++
		}
	}
}

// write writes k in the batch and the overlay, without checks.
func (t *Txn) write(k, v []byte) error {
	t.overlay[string(k)] = v
	if t.filter != nil && filtered(k[0]) {
		t.written = append(t.written, k)
	}
	t.setOp(k, v)
	return nil
}

// setBlind writes k without remembering it in the overlay: for index keys
// nothing in the batch reads back.
func (t *Txn) setBlind(k, v []byte) error {
	if err := t.may(k); err != nil {
		return err
	}
	t.setOp(k, v)
	return nil
}

func (t *Txn) deleteBlind(k []byte) error {
	if err := t.may(k); err != nil {
		return err
	}
	t.delOp(k)
	return nil
}

func (t *Txn) del(k []byte) error {
	if err := t.may(k); err != nil {
		return err
	}
	t.overlay[string(k)] = nil
	t.forget(k)
	t.delOp(k)
	return nil
}

// Get reads k as of this batch into m; false when k is absent.
func (t *Txn) Get(k []byte, m proto.Message) (bool, error) { return t.get(k, m) }

// Put writes m at k in this batch (deterministic encoding). The batch
// holds k until it commits: the caller must not modify it.
func (t *Txn) Put(k []byte, m proto.Message) error { return t.put(k, m) }

// Delete deletes k in this batch. The batch holds k until it commits:
// the caller must not modify it.
func (t *Txn) Delete(k []byte) error { return t.del(k) }

// Add adds n to the counter at k. Counters are 8-byte big-endian int64
// values; the batch's additions are summed and written, in key order, when
// the batch commits, and a counter that reaches 0 is deleted.
func (t *Txn) Add(k []byte, n int64) error {
	if err := t.may(k); err != nil {
		return err
	}
	t.deltas[string(k)] += n
	return nil
}

// flushCounters adds the batch's deltas to the stored counters.
func (t *Txn) flushCounters() error {
	keys := make([]string, 0, len(t.deltas))
	for k := range t.deltas {
		keys = append(keys, k)
	}
	slices.Sort(keys) // map order never reaches the batch
	for _, k := range keys {
		v, _, err := t.raw([]byte(k))
		if err != nil {
			return err
		}
		var cur int64
		if len(v) == 8 {
			cur = int64(binary.BigEndian.Uint64(v))
		}
		cur += t.deltas[k]
		if cur == 0 {
			t.overlay[k] = nil
			t.delOp([]byte(k))
			continue
		}
		v = binary.BigEndian.AppendUint64(nil, uint64(cur))
		t.overlay[k] = v
		t.setOp([]byte(k), v)
	}
	return nil
}

// RunnerOptions configure a Runner.
type RunnerOptions struct {
	// Partitions is the log's partition count. Required.
	Partitions int32
	// Sync commits every batch with fsync. Default false (see Options.Sync).
	Sync bool
	// Handlers are the runner's topology. Required.
	Handlers []Handler
	// OnApplied, when set, is called after each committed batch that
	// decided something (see Options.OnApplied).
	OnApplied func(p int32, a Applied)
	// HotKeys bounds each partition's in-memory cache of the committed
	// values of the keys most events read (hot.go: sessions, policy, a
	// recipient's timeline meta, contacts, groups and conversation): two
	// generations of at most HotKeys keys each. Default DefaultHotKeys; negative: no cache and no
	// key filter (every read goes to Pebble, as a reference for tests).
	HotKeys int
	// DedupMarks stores a one-byte mark in the decision table instead of
	// the decision: for a runner whose decisions nobody reads (the
	// aggregates), the dedup needs only their presence. Default false.
	DedupMarks bool
	// HandledOnly skips, without any write, the events of kinds no handler
	// decides or observes (counted as skipped in the checkpoint): for a
	// runner that follows a few kinds of the whole log (the accounts).
	// Default false: such events are recorded as accepted. A batch of a
	// HandledOnly runner that decided nothing is committed without fsync,
	// even with Sync.
	HandledOnly bool
	// ReadRetry, when > 0, makes a failed log read wait this long and read
	// again instead of stopping the runner (OnReadRetry, when set, is told
	// each time): for a runner that follows a log it must keep following
	// through a broker restart (the accounts). A read that fails because
	// the log closed, or ctx ended, still stops it. Default 0: a failed
	// read stops the runner, and its owner restarts what it owns.
	ReadRetry   time.Duration
	OnReadRetry func(p int32, err error)
}

// Runner applies the partitions of one log to one Pebble database through
// its handlers (see the top of this file). It is safe for concurrent use;
// each partition is applied by one goroutine at a time.
type Runner struct {
	db         *pebble.DB
	wo         *pebble.WriteOptions
	partitions int32
	onApplied  func(p int32, a Applied)
	marks      bool
	only       bool
	readRetry  time.Duration
	onRetry    func(p int32, err error)

	handlers  []Handler
	deciders  map[pb.Kind]*Handler
	watchers  map[pb.Kind][]*Handler
	own       map[*Handler]*[256]bool
	runnerOwn [256]bool

	parts  []*partState
	filter *keyFilter // nil when HotKeys < 0

	closeOnce sync.Once
	closed    chan struct{}

	// failed is closed when the projector stopped on an error (failErr), so
	// that writers waiting for their event to be applied return instead of
	// waiting for ever.
	failOnce sync.Once
	failed   chan struct{}
	failErr  error
}

// partState is the in-memory view of one partition's progress.
type partState struct {
	mu      sync.Mutex
	cp      *pb.Checkpoint // last committed checkpoint
	changed chan struct{}  // closed and replaced when cp advances
	apply   sync.Mutex     // one applier at a time
	hot     *hotCache      // used under apply; nil when HotKeys < 0
	txn     *Txn           // the batch's Txn, reused under apply (Txn.reset)

	// The hand-off of committed batches (handoff.go), under mu.
	waiters map[int64][]decisionWaiter      // by offset, not applied yet
	recent  [recentDecisions]recentDecision // the newest decisions, by offset mod size
	feed    fanoutFeed                      // committed fan-outs for the live relay
	fed     int64                           // relay batches taken from feed
	missed  int64                           // relay batches read from the log instead
}

// NewRunner returns a runner over db, which it owns from then on (Close
// closes it), with each partition's checkpoint read from db. It refuses a
// topology in which two handlers decide one kind, or a handler has both
// Decide and Observe.
func NewRunner(db *pebble.DB, o RunnerOptions) (*Runner, error) {
	if o.Partitions < 1 {
		return nil, fmt.Errorf("projections: RunnerOptions.Partitions must be >= 1, got %d", o.Partitions)
	}
	r := &Runner{db: db, wo: pebble.NoSync, partitions: o.Partitions, onApplied: o.OnApplied, marks: o.DedupMarks, only: o.HandledOnly,
		readRetry: o.ReadRetry, onRetry: o.OnReadRetry,
		handlers: slices.Clone(o.Handlers), deciders: map[pb.Kind]*Handler{}, watchers: map[pb.Kind][]*Handler{},
		own: map[*Handler]*[256]bool{}, closed: make(chan struct{}), failed: make(chan struct{})}
	if o.Sync {
		r.wo = pebble.Sync
	}
	for _, tag := range runnerTables {
		r.runnerOwn[tag] = true
	}
	for i := range r.handlers {
		h := &r.handlers[i]
		if (h.Decide == nil) == (h.Observe == nil) {
			return nil, fmt.Errorf("projections: handler %q must have exactly one of Decide and Observe", h.Name)
		}
		own := &[256]bool{}
		for _, tag := range h.Tables {
			if r.runnerOwn[tag] {
				return nil, fmt.Errorf("projections: handler %q declares the runner's table %q", h.Name, tag)
			}
			own[tag] = true
		}
		r.own[h] = own
		for _, ki := range engine.Kinds() {
			if !slices.Contains(h.Categories, ki.Category) && !slices.Contains(h.Kinds, ki.Kind) {
				continue
			}
			if h.Observe != nil {
				r.watchers[ki.Kind] = append(r.watchers[ki.Kind], h)
				continue
			}
			if other, dup := r.deciders[ki.Kind]; dup {
				return nil, fmt.Errorf("projections: %v is decided by both %q and %q", ki.Kind, other.Name, h.Name)
			}
			r.deciders[ki.Kind] = h
		}
	}
	if o.HotKeys == 0 {
		o.HotKeys = DefaultHotKeys
	}
	if o.HotKeys > 0 {
		f, err := loadKeyFilter(db)
		if err != nil {
			return nil, err
		}
		r.filter = f
	}
	for p := int32(0); p < o.Partitions; p++ {
		cp := &pb.Checkpoint{}
		if _, err := getProto(db, checkpointKey(p), cp); err != nil {
			return nil, err
		}
		ps := &partState{cp: cp, changed: make(chan struct{}), waiters: map[int64][]decisionWaiter{}}
		if o.HotKeys > 0 {
			ps.hot = newHotCache(o.HotKeys)
		}
		r.parts = append(r.parts, ps)
	}
	return r, nil
}

// Close closes the runner and its database. Waiters return ErrClosed.
func (r *Runner) Close() error {
	var err error
	r.closeOnce.Do(func() {
		close(r.closed)
		r.dropWaiters(ErrClosed)
		// Take every applier lock so no batch is mid-commit when the DB closes.
		for _, ps := range r.parts {
			ps.apply.Lock()
		}
		err = r.db.Close()
		for _, ps := range r.parts {
			ps.apply.Unlock()
		}
	})
	return err
}

func (r *Runner) isClosed() bool {
	select {
	case <-r.closed:
		return true
	default:
		return false
	}
}

// Partitions is the partition count the runner was opened with.
func (r *Runner) Partitions() int32 { return r.partitions }

// Checkpoint returns partition p's committed checkpoint.
func (r *Runner) Checkpoint(p int32) *pb.Checkpoint {
	ps := r.parts[p]
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return proto.Clone(ps.cp).(*pb.Checkpoint)
}

// fail records that the projector stopped on err and wakes every waiter.
func (r *Runner) fail(err error) {
	r.failOnce.Do(func() {
		r.failErr = err
		close(r.failed)
		r.dropWaiters(fmt.Errorf("projections: projector stopped: %w", err))
	})
}

// WaitApplied blocks until the event at pos is applied and visible. It
// returns an error when the projector stopped on an error, the runner is
// closed, or ctx is done.
func (r *Runner) WaitApplied(ctx context.Context, pos engine.Position) error {
	if pos.Partition < 0 || int(pos.Partition) >= len(r.parts) {
		return fmt.Errorf("projections: wait: %w", engine.ErrBadPartition)
	}
	ps := r.parts[pos.Partition]
	for {
		ps.mu.Lock()
		done, ch := ps.cp.NextOffset > pos.Offset, ps.changed
		ps.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-r.closed:
			return ErrClosed
		case <-r.failed:
			return fmt.Errorf("projections: projector stopped: %w", r.failErr)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Apply applies entries of partition p, which must continue its checkpoint,
// in one atomic Pebble batch together with the new checkpoint. It is what
// the projector loop calls; tests and tools call it directly.
func (r *Runner) Apply(p int32, entries []engine.Entry) error {
	if len(entries) == 0 {
		return nil
	}
	if p < 0 || int(p) >= len(r.parts) {
		return fmt.Errorf("projections: apply: %w", engine.ErrBadPartition)
	}
	ps := r.parts[p]
	start := time.Now()
	ps.apply.Lock()
	defer ps.apply.Unlock()
	if r.isClosed() {
		return ErrClosed
	}
	ps.mu.Lock()
	cp := proto.Clone(ps.cp).(*pb.Checkpoint)
	ps.mu.Unlock()

	if ps.txn == nil {
		ps.txn = &Txn{db: r.db, hot: ps.hot, filter: r.filter}
	}
	t := ps.txn
	t.reset(r.db.NewBatch(), &r.runnerOwn)
	defer t.b.Close()
	var decisions []*pb.Decision
	var made []handed // the decisions made, with their events and offsets
	for _, en := range entries {
		if en.Partition != p || en.Offset != cp.NextOffset {
			return fmt.Errorf("%w: partition %d at %d, got %d/%d", ErrGap, p, cp.NextOffset, en.Partition, en.Offset)
		}
		ev, d, dup, err := r.applyOne(t, en)
		if err != nil {
			return err
		}
		switch {
		case dup:
			cp.Duplicates++
		case d == nil:
			cp.Skipped++
		default:
			cp.Applied++
			decisions = append(decisions, d)
			made = append(made, handed{off: en.Offset, ev: ev, d: d, size: len(en.Value)})
		}
		cp.NextOffset = en.Offset + 1
	}
	if err := t.flushState(); err != nil {
		return err
	}
	if err := t.flushCounters(); err != nil {
		return err
	}
	if err := t.put(checkpointKey(p), cp); err != nil {
		return err
	}
	if err := t.fill(); err != nil {
		return err
	}
	// The filter learns the batch's keys before Commit, not after: Pebble
	// makes a commit visible to readers before Commit returns, and a reader
	// that sees the filter say "absent" must be one that would also have
	// missed the key in Pebble (Store.Decision relies on it: a retried
	// operation whose decision is committed is never appended again). A
	// batch that then fails to commit leaves false positives, which cost a
	// read, not correctness.
	if r.filter != nil {
		for _, k := range t.written {
			r.filter.add(k)
		}
	}
	wo := r.wo
	if r.only && len(decisions) == 0 {
		// Only skipped records: a crash that loses this batch makes the
		// runner read them again, nothing more. Not worth an fsync per
		// read of a busy log.
		wo = pebble.NoSync
	}
	if err := t.b.Commit(wo); err != nil {
		return fmt.Errorf("projections: commit partition %d: %w", p, err)
	}
	// What the batch committed is what Pebble now holds: keep the hot part.
	if ps.hot != nil {
		t.keepHot(ps.hot, p, r.partitions)
	}
	// Only now, after Commit returned, do waiters see the new position, and
	// the operations waiting on this batch get their decisions (handoff.go).
	ps.mu.Lock()
	from := ps.cp.NextOffset
	ps.cp = cp
	close(ps.changed)
	ps.changed = make(chan struct{})
	ready := ps.handOff(from, cp.NextOffset, made)
	ps.mu.Unlock()
	handOut(ready, made)
	if r.onApplied != nil && (len(decisions) > 0 || len(t.entries) > 0) {
		r.onApplied(p, Applied{Decisions: decisions, Entries: t.entries, Events: len(entries), Duration: time.Since(start)})
	}
	return nil
}

// applyOne applies one entry (steps 1-7 at the top of this file). It
// returns the decoded event and its decision, or dup=true for a retried
// append of an operation already decided, or no decision for a record this
// build cannot apply (undecodable or of an unknown kind): such records are
// skipped deterministically and counted.
func (r *Runner) applyOne(t *Txn, en engine.Entry) (*pb.Event, *pb.Decision, bool, error) {
	ev, err := engine.Decode(en.Value)
	if err != nil {
		return nil, nil, false, nil
	}
	if _, known := engine.LookupKind(ev.Kind); !known || ev.Actor == nil {
		return nil, nil, false, nil
	}
	if r.only && r.deciders[ev.Kind] == nil && len(r.watchers[ev.Kind]) == 0 {
		return nil, nil, false, nil
	}
	pos := engine.Position{Partition: en.Partition, Offset: en.Offset}
	dk := decisionKey(ev.StreamKey, ev.Actor.User, ev.ClientOpId)
	if _, ok, err := t.raw(dk); err != nil {
		return nil, nil, false, err
	} else if ok {
		return nil, nil, true, nil
	}
	pol, err := policyOf(t, ev.App, en.Partition)
	if err != nil {
		return nil, nil, false, err
	}
	t.sessions = t.sessions[:0]
	var d *pb.Decision
	if refused, err := checkActor(t, ev); err != nil {
		return nil, nil, false, err
	} else if refused != nil {
		d = engine.NewDecision(ev, pos, pol)
		d.Code, d.Message = int32(refused.Code), refused.Message
	} else if h := r.deciders[ev.Kind]; h != nil {
		t.owner, t.own = h, r.own[h]
		d, err = h.Decide(t, ev, pos, pol)
		t.owner, t.own = nil, &r.runnerOwn
		if err != nil {
			return nil, nil, false, fmt.Errorf("projections: %s: %w", h.Name, err)
		}
		if d == nil {
			return nil, nil, false, nil // malformed derived record: skipped, counted
		}
	} else {
		d = engine.NewDecision(ev, pos, pol)
	}
	if r.marks {
		err = t.set(dk, dedupMark)
	} else {
		err = t.put(dk, compactDecision(ev, d))
	}
	if err != nil {
		return nil, nil, false, err
	}
	if ws := r.watchers[ev.Kind]; len(ws) > 0 {
		o := &Outcome{Event: ev, Pos: pos, Decision: d, Sessions: t.sessions}
		for _, h := range ws {
			t.owner, t.own = h, r.own[h]
			err := h.Observe(t, o)
			t.owner, t.own = nil, &r.runnerOwn
			if err != nil {
				return nil, nil, false, fmt.Errorf("projections: %s: %w", h.Name, err)
			}
		}
	}
	return ev, d, false, nil
}

// checkActor applies engine.CheckActor to an operation decided on its
// actor's own stream, where the actor's sessions live: an ended or unknown
// login ID is refused, in log order, identically on every rebuild. A login
// starts a session and a policy change or a derived copy has no device
// actor. Operations decided on another stream (a group's, a chatroom's) are
// checked by the engine against this stream before they are appended
// (docs/design-notes.md, "An ended session can do nothing").
func checkActor(t *Txn, ev *pb.Event) (*engine.Error, error) {
	switch ev.Kind {
	case pb.Kind_KIND_LOGIN, pb.Kind_KIND_POLICY_SET, pb.Kind_KIND_DELIVER:
		return nil, nil
	}
	if engine.IsAccountKind(ev.Kind) {
		// Accounts are decided from the account alone, on every process
		// (accounts.go); a device never changes one (engine.Validate).
		return nil, nil
	}
	if ev.Actor.LoginId == "" || !engine.IsUserStream(ev.StreamKey, ev.App, ev.Actor.User) {
		return nil, nil
	}
	return actorRefusal(t.get, t.sessionsOf, ev.App, ev.Actor.User, ev.Actor.LoginId)
}

// actorRefusal is engine.CheckActor on the state get and sessions read (a
// batch's overlay, or committed state): the user's sessions, and only when
// loginID is not among them, how its last session ended.
func actorRefusal(get func([]byte, proto.Message) (bool, error), sessions func(app, user string) (*pb.UserSessions, error),
	app, user, loginID string) (*engine.Error, error) {
	st, err := sessions(app, user)
	if err != nil {
		return nil, err
	}
	if engine.CheckActor(st, loginID, nil) == nil {
		return nil, nil
	}
	last, _, err := lastEnded(func(k []byte, e *pb.Ended) (bool, error) { return get(k, e) }, app, user, loginID)
	if err != nil {
		return nil, err
	}
	return engine.CheckActor(st, loginID, last), nil
}

// Run projects every partition of log, from each partition's checkpoint,
// until ctx is done (it then returns nil) or an error stops a partition.
func (r *Runner) Run(ctx context.Context, log engine.Log) error {
	if log.Partitions() != r.partitions {
		return fmt.Errorf("%w: store %d, log %d", ErrPartitionMismatch, r.partitions, log.Partitions())
	}
	g, ctx := errgroup.WithContext(ctx)
	for p := int32(0); p < r.partitions; p++ {
		g.Go(func() error { return r.runPartition(ctx, log, p, -1) })
	}
	err := g.Wait()
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, engine.ErrLogClosed) || errors.Is(err, ErrClosed)) {
		return nil
	}
	if err != nil {
		r.fail(err)
	}
	return err
}

// runPartition applies p from its checkpoint; with until >= 0 it stops once
// the checkpoint reaches until, otherwise it follows the log.
func (r *Runner) runPartition(ctx context.Context, log engine.Log, p int32, until int64) error {
	for {
		from := r.Checkpoint(p).NextOffset
		if until >= 0 && from >= until {
			return nil
		}
		max := readBatch
		if until >= 0 && until-from < int64(max) {
			max = int(until - from)
		}
		entries, err := log.Read(ctx, p, from, max)
		if err != nil && r.readRetry > 0 && ctx.Err() == nil && !errors.Is(err, engine.ErrLogClosed) {
			if r.onRetry != nil {
				r.onRetry(p, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-r.closed:
				return ErrClosed
			case <-time.After(r.readRetry):
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("projections: read partition %d at %d: %w", p, from, err)
		}
		if err := r.Apply(p, entries); err != nil {
			return err
		}
	}
}

// CatchUp applies every partition up to the log's end as of the call.
func (r *Runner) CatchUp(ctx context.Context, log engine.Log) error {
	if log.Partitions() != r.partitions {
		return fmt.Errorf("%w: store %d, log %d", ErrPartitionMismatch, r.partitions, log.Partitions())
	}
	ends := make([]int64, r.partitions)
	for p := range ends {
		e, err := log.End(ctx, int32(p))
		if err != nil {
			return err
		}
		ends[p] = e
	}
	return r.CatchUpTo(ctx, log, ends)
}

// CatchUpTo applies partition p up to (not including) offset ends[p].
func (r *Runner) CatchUpTo(ctx context.Context, log engine.Log, ends []int64) error {
	g, ctx := errgroup.WithContext(ctx)
	for p, end := range ends {
		g.Go(func() error { return r.runPartition(ctx, log, int32(p), end) })
	}
	return g.Wait()
}

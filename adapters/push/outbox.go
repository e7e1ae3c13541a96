package push

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/projections"
)

// ErrClosed is returned by an Outbox used after Close.
var ErrClosed = errors.New("push: outbox closed")

// OutboxOptions configure an Outbox.
type OutboxOptions struct {
	// Dir holds the outbox's own Pebble files. Required unless FS is an
	// in-memory FS. It must not be the projections' directory: the outbox
	// is not a function of the log (see the package comment).
	Dir string
	// FS is the file system. Default vfs.Default.
	FS vfs.FS
	// PreviewBytes is how much of a message body Enqueue keeps as Entry.Preview.
	// Default 0: no content is stored or sent.
	PreviewBytes int
	// MaxAge drops, at Enqueue, entries whose event time is older than this
	// (a push about an old message is noise; it also keeps a projection
	// rebuild from pushing history), and is how long the key of a delivered
	// entry is remembered so re-enqueueing it is a no-op. Because an entry
	// older than MaxAge is never enqueued, forgetting keys after MaxAge
	// cannot cause a second push. Default 24h.
	MaxAge time.Duration
	// Logger receives Pebble's messages. Default slog.Default().
	Logger *slog.Logger
}

// EnsureDefaults sets the zero fields to their defaults.
func (o *OutboxOptions) EnsureDefaults() {
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.MaxAge == 0 {
		o.MaxAge = 24 * time.Hour
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Validate reports options that cannot work.
func (o *OutboxOptions) Validate() error {
	switch {
	case o.PreviewBytes < 0:
		return fmt.Errorf("push: OutboxOptions.PreviewBytes must be >= 0, got %d", o.PreviewBytes)
	case o.MaxAge < 0:
		return fmt.Errorf("push: OutboxOptions.MaxAge must be >= 0, got %s", o.MaxAge)
	}
	return nil
}

// Key layout of the outbox's Pebble:
//
//	q<pos:8>      pending Entry (JSON), in enqueue order
//	k<key>        marker: 'q'<pos:8> pending | 'd'<ms:8> delivered | 'x'<ms:8> dead
//	t<ms:8><key>  delivered markers by time, so pruning reads only what it drops
//	x<key>        DeadLetter (JSON)
const (
	tagPending = 'q'
	tagMarker  = 'k'
	tagDone    = 't'
	tagDead    = 'x'
)

func pendingKey(pos uint64) []byte { return binary.BigEndian.AppendUint64([]byte{tagPending}, pos) }
func markerKey(key string) []byte  { return append([]byte{tagMarker}, key...) }
func deadKey(key string) []byte    { return append([]byte{tagDead}, key...) }
func doneKey(ms int64, key string) []byte {
	return append(binary.BigEndian.AppendUint64([]byte{tagDone}, uint64(ms)), key...)
}
func marker(state byte, v uint64) []byte { return binary.BigEndian.AppendUint64([]byte{state}, v) }

// DeadLetter is an entry the webhook refused permanently (a 4xx other than
// 408 and 429) or that ran out of attempts. Dead letters are kept until
// removed by an operator (not yet exposed).
type DeadLetter struct {
	Entry Entry `json:"entry"`
	// Status is the last HTTP status, 0 when the last attempt got none.
	Status     int    `json:"status"`
	Reason     string `json:"reason"`
	Attempts   int    `json:"attempts"`
	TimeUnixMs int64  `json:"time_unix_ms"`
}

// Outbox is the durable queue of push entries waiting for the webhook, on a
// Pebble database of its own. It is safe for concurrent use. Entries leave
// it only when the webhook accepted them or refused them permanently, so a
// restart resumes every undelivered entry (at-least-once).
type Outbox struct {
	opts OutboxOptions
	now  func() time.Time // wall clock; tests move it

	// mu serializes writes, so Enqueue's check of a key and its write are
	// one step; reads share it. Close takes it exclusively, so no operation
	// touches a closed DB (Pebble panics on that).
	mu     sync.RWMutex
	db     *pebble.DB // nil after Close
	pos    uint64     // last pending position assigned
	depth  atomic.Int64
	notify chan struct{} // a token when entries were added

	dispatching atomic.Bool // a Dispatcher.Run is using this outbox
}

// OpenOutbox opens (or creates) an outbox.
func OpenOutbox(opts OutboxOptions) (*Outbox, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	db, err := pebble.Open(opts.Dir, &pebble.Options{FS: opts.FS, Logger: projections.PebbleLogger(opts.Logger.With("db", "push-outbox"))})
	if err != nil {
		return nil, fmt.Errorf("push: open outbox %s: %w", opts.Dir, err)
	}
	o := &Outbox{opts: opts, now: time.Now, db: db, notify: make(chan struct{}, 1)}
	// One scan at open: the depth gauge and the next position need it, and
	// the pending set is small compared to the time it takes to drain.
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte{tagPending}, UpperBound: []byte{tagPending + 1}})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("push: open outbox: %w", err)
	}
	var n int64
	for it.First(); it.Valid(); it.Next() {
		n++
		o.pos = binary.BigEndian.Uint64(it.Key()[1:])
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		db.Close()
		return nil, fmt.Errorf("push: open outbox: %w", err)
	}
	o.depth.Store(n)
	return o, nil
}

// Enqueue adds entries and returns after they are durable (fsynced). An
// entry whose key is already pending, delivered (within MaxAge) or dead is
// skipped, as is a repeat within the call: re-applied events never push
// twice. Entries older than MaxAge are dropped. Each entry's body (from
// Candidates) or Preview is cut to PreviewBytes before it is written.
// Enqueue with no entries does nothing.
func (o *Outbox) Enqueue(entries ...Entry) error {
	if len(entries) == 0 {
		return nil
	}
	for _, e := range entries {
		if e.App == "" || e.User == "" || e.EntryID == "" || e.TimeUnixMs <= 0 {
			return fmt.Errorf("push: enqueue: entry %q needs app, user, entry id and time", e.Key())
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.db == nil {
		return ErrClosed
	}
	oldest := o.now().Add(-o.opts.MaxAge).UnixMilli()
	b := o.db.NewBatch()
	defer b.Close()
	seen := map[string]bool{}
	pos := o.pos
	for _, e := range entries {
		k := e.Key()
		if seen[k] || e.TimeUnixMs < oldest {
			continue
		}
		seen[k] = true
		switch _, closer, err := o.db.Get(markerKey(k)); {
		case err == nil:
			closer.Close()
			continue
		case !errors.Is(err, pebble.ErrNotFound):
			return fmt.Errorf("push: enqueue: %w", err)
		}
		if e.body != nil {
			e.Preview = preview(e.body, o.opts.PreviewBytes)
		} else {
			e.Preview = preview([]byte(e.Preview), o.opts.PreviewBytes)
		}
		v, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("push: enqueue: %w", err)
		}
		pos++
		if err := errors.Join(b.Set(pendingKey(pos), v, nil), b.Set(markerKey(k), marker('q', pos), nil)); err != nil {
			return fmt.Errorf("push: enqueue: %w", err)
		}
	}
	if pos == o.pos {
		return nil
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("push: enqueue: %w", err)
	}
	o.depth.Add(int64(pos - o.pos))
	o.pos = pos
	select {
	case o.notify <- struct{}{}:
	default: // a token is already waiting
	}
	return nil
}

// Depth returns the number of entries waiting for delivery.
func (o *Outbox) Depth() int { return int(o.depth.Load()) }

// DeadLetters returns up to limit dead letters (all when limit <= 0), in
// key order.
func (o *Outbox) DeadLetters(limit int) ([]DeadLetter, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	if o.db == nil {
		return nil, ErrClosed
	}
	it, err := o.db.NewIter(&pebble.IterOptions{LowerBound: []byte{tagDead}, UpperBound: []byte{tagDead + 1}})
	if err != nil {
		return nil, fmt.Errorf("push: dead letters: %w", err)
	}
	var out []DeadLetter
	for it.First(); it.Valid() && (limit <= 0 || len(out) < limit); it.Next() {
		var d DeadLetter
		if err := json.Unmarshal(it.Value(), &d); err != nil {
			it.Close()
			return nil, fmt.Errorf("push: dead letter %q: %w", it.Key()[1:], err)
		}
		out = append(out, d)
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return nil, fmt.Errorf("push: dead letters: %w", err)
	}
	return out, nil
}

// Close closes the outbox; later calls return ErrClosed. Entries not yet
// delivered stay and are resumed by the next dispatcher.
func (o *Outbox) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.db == nil {
		return nil
	}
	err := o.db.Close()
	o.db = nil
	if err != nil {
		return fmt.Errorf("push: close outbox: %w", err)
	}
	return nil
}

// item is a pending entry as the dispatcher holds it.
type item struct {
	e        Entry
	pos      uint64
	body     []byte // the webhook body, built once so every retry sends the same bytes
	attempts int
	due      time.Time // next attempt, while waiting
}

// load returns up to limit pending entries after position after, oldest
// first.
func (o *Outbox) load(after uint64, limit int) ([]*item, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	if o.db == nil {
		return nil, ErrClosed
	}
	it, err := o.db.NewIter(&pebble.IterOptions{LowerBound: pendingKey(after + 1), UpperBound: []byte{tagPending + 1}})
	if err != nil {
		return nil, fmt.Errorf("push: load: %w", err)
	}
	var out []*item
	for it.First(); it.Valid() && len(out) < limit; it.Next() {
		x := &item{pos: binary.BigEndian.Uint64(it.Key()[1:])}
		if err := json.Unmarshal(it.Value(), &x.e); err != nil {
			it.Close()
			return nil, fmt.Errorf("push: load entry at %d: %w", x.pos, err)
		}
		out = append(out, x)
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return nil, fmt.Errorf("push: load: %w", err)
	}
	return out, nil
}

// ack removes a delivered entry and remembers its key for MaxAge. No fsync:
// a lost ack only means the entry is delivered again, with the same key.
func (o *Outbox) ack(x *item) error {
	ms := o.now().UnixMilli()
	k := x.e.Key()
	return o.remove(x, "ack", func(b *pebble.Batch) error {
		return errors.Join(b.Set(markerKey(k), marker('d', uint64(ms)), nil), b.Set(doneKey(ms, k), nil, nil))
	})
}

// bury moves an entry to the dead letters. No fsync, as for ack: if it is
// lost the entry is attempted and refused again.
func (o *Outbox) bury(x *item, status int, reason string) error {
	ms := o.now().UnixMilli()
	k := x.e.Key()
	v, err := json.Marshal(DeadLetter{Entry: x.e, Status: status, Reason: reason, Attempts: x.attempts, TimeUnixMs: ms})
	if err != nil {
		return fmt.Errorf("push: dead letter: %w", err)
	}
	return o.remove(x, "dead letter", func(b *pebble.Batch) error {
		return errors.Join(b.Set(markerKey(k), marker('x', uint64(ms)), nil), b.Set(deadKey(k), v, nil))
	})
}

func (o *Outbox) remove(x *item, op string, more func(*pebble.Batch) error) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.db == nil {
		return ErrClosed
	}
	b := o.db.NewBatch()
	defer b.Close()
	if err := errors.Join(b.Delete(pendingKey(x.pos), nil), more(b)); err != nil {
		return fmt.Errorf("push: %s: %w", op, err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("push: %s: %w", op, err)
	}
	o.depth.Add(-1)
	return nil
}

// prune forgets up to limit keys delivered more than MaxAge ago, and
// reports how many it forgot.
func (o *Outbox) prune(limit int) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.db == nil {
		return 0, ErrClosed
	}
	cut := o.now().Add(-o.opts.MaxAge).UnixMilli()
	it, err := o.db.NewIter(&pebble.IterOptions{LowerBound: []byte{tagDone}, UpperBound: doneKey(cut, "")})
	if err != nil {
		return 0, fmt.Errorf("push: prune: %w", err)
	}
	b := o.db.NewBatch()
	defer b.Close()
	n := 0
	for it.First(); it.Valid() && n < limit; it.Next() {
		if err := errors.Join(b.Delete(it.Key(), nil), b.Delete(markerKey(string(it.Key()[9:])), nil)); err != nil {
			it.Close()
			return 0, fmt.Errorf("push: prune: %w", err)
		}
		n++
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return 0, fmt.Errorf("push: prune: %w", err)
	}
	if n == 0 {
		return 0, nil
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return 0, fmt.Errorf("push: prune: %w", err)
	}
	return n, nil
}

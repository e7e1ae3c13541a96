// Package aggregates is a projection of counts for analytics: logins,
// sessions ended by reason, active devices per platform, and messages per
// chat type per hour. Like every projection it is a pure function of the
// log (event time only, never the wall clock).
//
// It is not a second projector: it is a projections.Runner of its own, with
// its own Pebble database and checkpoint, and the topology in Topology: the
// sessions handler (the same code the main projection runs, so logins,
// evictions, kicks and the actor rule are decided exactly as there) and the
// counts handler, which observes each decision. The runner owns batching,
// the checkpoint, dedup, the policy and the actor rule. It runs as a second
// consumer of the log, off the decisions' critical path
// (docs/design-notes.md, "One projector runner").
package aggregates

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// ErrClosed is returned after Close (the runner's error, so Apply and the
// reads return the same).
var ErrClosed = projections.ErrClosed

// Options configure Open.
type Options struct {
	// Dir holds the Pebble files. Required unless FS is in-memory.
	Dir string
	// FS is the file system; default vfs.Default.
	FS vfs.FS
	// Partitions must equal the log's partition count (1..1024). Required.
	Partitions int32
	// Sync commits every batch with fsync (default false: counts are
	// derived from the durable log; a lost batch only moves its checkpoint
	// back and is applied again).
	Sync bool
	// Logger receives Pebble's messages (info at debug level). Default
	// slog.Default().
	Logger *slog.Logger
	// ReadRetry, when > 0, makes Run read again after a failed log read
	// (a broker restarting) instead of returning, each failure logged
	// (projections.RunnerOptions.ReadRetry): for a server, where nothing
	// restarts this projection. Default 0: Run returns the read's error.
	ReadRetry time.Duration
}

// HourMs is the width of a message bucket.
const HourMs = 3_600_000

// Aggregates is the projection: a projections.Runner (Apply, Run, CatchUp,
// Checkpoint, WaitApplied, Close) over its own database, and the reads.
// Safe for concurrent use; each partition is applied by one goroutine at a
// time.
type Aggregates struct {
	*projections.Runner
	opts Options
	db   *pebble.DB

	mu     sync.RWMutex // held for reading by readers of db, for writing by Close
	closed bool
}

// Topology is the aggregates runner's handlers: the sessions handler on
// this projection's own copy of the sessions and policy, then the counts,
// which observe its decisions and the messages.
func Topology(partitions int32) []projections.Handler {
	return []projections.Handler{projections.Sessions(partitions), Handler()}
}

// Handler is the counts handler: it observes the session kinds and
// MESSAGE_SEND and writes only counters (tag n), one set per partition.
// A runner that decides the session kinds (projections.Sessions) must run
// with it: the counts come from those decisions.
func Handler() projections.Handler {
	return projections.Handler{
		Name:       "aggregates",
		Categories: []engine.Category{engine.CatSession},
		Kinds:      []pb.Kind{pb.Kind_KIND_MESSAGE_SEND},
		Tables:     []byte{tagCounter[0]},
		Observe:    observe,
	}
}

// layout marks a database written by the runner; one without it (the
// projector this package had before) is emptied and rebuilt from offset 0:
// every count is derived from the log.
var layoutKey = []byte(tagMeta + "\x00layout")

const layout = "runner-1"

// Open opens or creates the projection's database.
func Open(opts Options) (*Aggregates, error) {
	if opts.Partitions < 1 || opts.Partitions > 1024 {
		return nil, fmt.Errorf("aggregates: Options.Partitions %d is outside [1,1024]", opts.Partitions)
	}
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	db, err := pebble.Open(opts.Dir, &pebble.Options{FS: opts.FS, Logger: projections.PebbleLogger(opts.Logger)})
	if err != nil {
		return nil, fmt.Errorf("aggregates: open %s: %w", opts.Dir, err)
	}
	a := &Aggregates{opts: opts, db: db}
	if err := a.checkLayout(); err != nil {
		db.Close()
		return nil, err
	}
	if err := a.checkPartitions(); err != nil {
		db.Close()
		return nil, err
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	a.Runner, err = projections.NewRunner(db, projections.RunnerOptions{
		Partitions: opts.Partitions, Sync: opts.Sync, Handlers: Topology(opts.Partitions), DedupMarks: true,
		ReadRetry: opts.ReadRetry,
		OnReadRetry: func(p int32, err error) {
			logger.Warn("aggregates: log read failed; retrying", "partition", p, "err", err)
		}})
	if err != nil {
		db.Close()
		return nil, err
	}
	return a, nil
}

// checkLayout empties a database of the earlier layout and marks it.
func (a *Aggregates) checkLayout() error {
	v, closer, err := a.db.Get(layoutKey)
	if err == nil {
		ok := string(v) == layout
		closer.Close()
		if ok {
			return nil
		}
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return fmt.Errorf("aggregates: read layout: %w", err)
	}
	it, err := a.db.NewIter(nil)
	if err != nil {
		return fmt.Errorf("aggregates: read layout: %w", err)
	}
	empty := !it.First()
	if err := it.Close(); err != nil {
		return fmt.Errorf("aggregates: read layout: %w", err)
	}
	if !empty {
		if err := a.db.DeleteRange([]byte{0}, []byte{0xff, 0xff, 0xff, 0xff}, pebble.Sync); err != nil {
			return fmt.Errorf("aggregates: empty a database of the earlier layout: %w", err)
		}
	}
	if err := a.db.Set(layoutKey, []byte(layout), pebble.Sync); err != nil {
		return fmt.Errorf("aggregates: write layout: %w", err)
	}
	return nil
}

// checkPartitions stores the partition count on first open and refuses
// another count later: counts are kept per partition.
func (a *Aggregates) checkPartitions() error {
	k := []byte(tagMeta + "partitions")
	v, closer, err := a.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(a.opts.Partitions))
		return a.db.Set(k, b[:], pebble.Sync)
	}
	if err != nil {
		return fmt.Errorf("aggregates: read meta: %w", err)
	}
	defer closer.Close()
	if got := int32(binary.BigEndian.Uint32(v)); got != a.opts.Partitions {
		return fmt.Errorf("aggregates: built for %d partitions, opened with %d", got, a.opts.Partitions)
	}
	return nil
}

// Close closes the runner and the database; later reads return ErrClosed.
func (a *Aggregates) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	return a.Runner.Close()
}

// ---- keys ----
//
// Every key starts with a one-byte tag. Counters are kept per partition,
// so that partitions applied concurrently never write the same key; reads
// sum them.
// The runner's and the sessions handler's tables use the projections key
// layout (each tag followed by NUL); the counters' tag n is this package's.
const (
	tagMeta    = "m" // m partitions -> uint32; m \0 layout -> layout
	tagCounter = "n" // n partition(4) app \0 metric \0 labels... -> int64
)

// counterPrefix is the start of partition p's counter keys.
func counterPrefix(p int32) []byte {
	return binary.BigEndian.AppendUint32([]byte(tagCounter), uint32(p))
}

func counterKey(p int32, app, metric string, labels ...string) []byte {
	return append(counterPrefix(p), strings.Join(append([]string{app, metric}, labels...), "\x00")...)
}

// Counter metrics (the metric part of a counter key).
const (
	mLogins        = "logins"         // accepted LOGIN
	mLoginsRefused = "logins_refused" // LOGIN refused (214, 1006...)
	mEnded         = "ended"          // labels: reason
	mActive        = "active"         // labels: platform (a delta, summed)
	mMessages      = "messages"       // labels: chat type
	mMessagesHour  = "messages_hour"  // labels: chat type, hour start (ms, 20 digits)
)

// observe counts one decided event (accepted or refused; duplicates are
// never observed): logins by outcome, sessions ended by reason, active
// devices per platform from the session changes, and every MESSAGE_SEND in
// the log, refused or not.
func observe(t *projections.Txn, o *projections.Outcome) error {
	ev, d, p := o.Event, o.Decision, o.Pos.Partition
	add := func(k []byte, n int64) error { return t.Add(k, n) }
	switch ev.Kind {
	case pb.Kind_KIND_LOGIN:
		m := mLogins
		if d.Code != 0 {
			m = mLoginsRefused
		}
		if err := add(counterKey(p, ev.App, m), 1); err != nil {
			return err
		}
	case pb.Kind_KIND_MESSAGE_SEND:
		ct := ev.GetMessage().GetChatType().String()                   // the protocol's spelling, "CHAT_TYPE_USER"
		hour := ev.TimeUnixMs - ((ev.TimeUnixMs%HourMs)+HourMs)%HourMs // floor, also before 1970
		if err := add(counterKey(p, ev.App, mMessages, ct), 1); err != nil {
			return err
		}
		return add(counterKey(p, ev.App, mMessagesHour, ct, fmt.Sprintf("%020d", hour+offsetHour)), 1)
	}
	for _, e := range d.Ended {
		if err := add(counterKey(p, ev.App, mEnded, e.Reason.String()), 1); err != nil { // "REASON_LOGIN_OTHER_DEVICE"
			return err
		}
	}
	for _, c := range o.Sessions {
		for _, s := range c.Before.GetSessions() {
			if err := add(counterKey(p, c.App, mActive, fmt.Sprint(s.Platform)), -1); err != nil {
				return err
			}
		}
		for _, s := range c.After.GetSessions() {
			if err := add(counterKey(p, c.App, mActive, fmt.Sprint(s.Platform)), 1); err != nil {
				return err
			}
		}
	}
	return nil
}

// offsetHour shifts hour starts so that their zero-padded decimal text
// sorts in time order even for negative times.
const offsetHour = 1 << 62

func prefixEnd(prefix []byte) []byte {
	end := slices.Clone(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}

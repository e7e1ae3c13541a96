// Package projections keeps the read side of mdsync in Pebble: state that is
// a pure function of the log, written in the same batch as the offset that
// produced it (DESIGN.md invariants 2 and 3).
package projections

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// ErrClosed is returned by a Store used after Close.
var ErrClosed = errors.New("projections: closed")

// ErrPartitionMismatch is returned when a store is opened with another
// partition count than the one it was built with.
var ErrPartitionMismatch = errors.New("projections: partition count differs from the store's")

// Options configure a Store.
type Options struct {
	// Dir holds the Pebble files. Required unless FS is an in-memory FS.
	Dir string
	// FS is the file system. Default: vfs.Default.
	FS vfs.FS
	// Partitions must equal the log's partition count. Required.
	Partitions int32
	// Sync commits every projection batch with fsync. Default false: the
	// state is derived from the durable log, each batch is atomic and holds
	// its own checkpoint, so a crash that loses the newest batches only
	// moves the checkpoint back and those events are applied again
	// (exactly once in the resulting state). Set it when the projection
	// must not regress across a crash (e.g. it feeds outside systems).
	Sync bool
	// OnApplied, when set, is called after each committed batch with what
	// it produced, in log order: decisions (with the sessions they ended)
	// and the timeline entries appended. It must not block for long: it runs
	// on the partition's projector goroutine. After a crash, re-applied
	// events are reported again (at-least-once; entries carry their seq).
	OnApplied func(p int32, a Applied)
	// CacheSize is Pebble's block cache in bytes. Default 64 MiB.
	CacheSize int64
	// Handlers are more handlers run by the store's runner after its own
	// (sessions, sync), in the same batch, writing their own tables to the
	// store's database (and so into its digest). Default none: the
	// aggregates run as a second runner (docs/design-notes.md, "One
	// projector runner").
	Handlers []Handler
	// HotKeys bounds each partition's in-memory cache of the committed
	// values of the keys most events read (RunnerOptions.HotKeys). Default
	// DefaultHotKeys; negative: no hot state in memory (every read goes to
	// Pebble).
	HotKeys int
}

func (o *Options) ensureDefaults() {
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.CacheSize == 0 {
		o.CacheSize = 64 << 20
	}
}

func (o *Options) validate() error {
	if o.Partitions < 1 {
		return fmt.Errorf("projections: Options.Partitions must be >= 1, got %d", o.Partitions)
	}
	return nil
}

// Applied is what one committed projection batch produced.
type Applied struct {
	Decisions []*pb.Decision
	Entries   []AppliedEntry
	// Events is the number of log entries in the batch (applied, duplicate
	// or skipped); Duration the time from starting the batch to its commit.
	Events   int
	Duration time.Duration
}

// AppliedEntry is a timeline entry appended to a user's timeline.
type AppliedEntry struct {
	App, User string
	Entry     *pb.TimelineEntry
}

// Store is the projection state of every partition of one log: the
// Runner with the main projection's handlers (Store.topology), the relay,
// and the reads. A Store is safe for concurrent use; each partition is
// applied by one goroutine.
type Store struct {
	*Runner
	opts  Options
	db    *pebble.DB
	relay []*relayState
	// srcJSON is, per partition, the last source event a delivery was
	// applied from and its wire JSON (Store.sourceJSON).
	srcJSON []sourceJSONCache
	// bodies holds recently read bodies for catch-up (bodies.go).
	bodies bodyCache
}

type sourceJSONCache struct {
	mu   sync.Mutex
	src  *pb.Event
	json []byte
}

// relayState is the relay's progress on one partition: its next offset as
// last written to Pebble (loaded at Open); changed is closed and replaced
// after each write, and err is set when the relay of this partition stopped
// on an error.
type relayState struct {
	mu      sync.Mutex
	pos     int64
	changed chan struct{}
	err     error
}

// Open opens (or creates) a store.
func Open(opts Options) (*Store, error) {
	opts.ensureDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	cache := pebble.NewCache(opts.CacheSize)
	defer cache.Unref()
	po := &pebble.Options{FS: opts.FS, Cache: cache, Logger: PebbleLogger(nil)}
	TunePebble(po)
	db, err := pebble.Open(opts.Dir, po)
	if err != nil {
		return nil, fmt.Errorf("projections: open %s: %w", opts.Dir, err)
	}
	s := &Store{opts: opts, db: db, srcJSON: make([]sourceJSONCache, opts.Partitions)}
	if err := s.checkPartitions(); err != nil {
		db.Close()
		return nil, err
	}
	if n, err := migrateTimelines(db, opts.Partitions); err != nil {
		db.Close()
		return nil, err
	} else if n > 0 {
		slog.Info("projections: timeline entries rewritten in the current format", "entries", n, "layout", timelineLayout)
	}
	for p := int32(0); p < opts.Partitions; p++ {
		pos, err := s.readRelayPosition(p)
		if err != nil {
			db.Close()
			return nil, err
		}
		s.relay = append(s.relay, &relayState{pos: pos, changed: make(chan struct{})})
	}
	s.Runner, err = NewRunner(db, RunnerOptions{Partitions: opts.Partitions, Sync: opts.Sync, Handlers: s.topology(), OnApplied: opts.OnApplied, HotKeys: opts.HotKeys})
	if err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// TunePebble sets the options of a projection database (Open's) on o: a
// benchmark's raw Pebble baseline uses it too, so that it measures what
// the projection adds, not a different configuration.
//
// A projection's writes are mostly overwrites of a few keys per user (the
// timeline meta, the conversation, the contacts) and the checkpoint, and
// keys nobody reads soon (decisions, timeline entries, the history index).
// A 32 MiB memtable (Pebble's default is 4 MiB) drops more overwritten
// versions before they reach a table; an L0 threshold of 8 files (default
// 4) merges L0 into the base level half as often, and each such compaction
// rewrites the whole base level, which per-user keys overlap everywhere.
// More L0 files make a read that reaches Pebble dearer, but the runner's hot
// cache and key filter answer most reads, and bloom filters answer most
// misses (the dedup of a new operation) without reading data blocks.
// Measured on 200,000 1:1 messages: write amplification 3.6 -> 1.6 and a
// third less CPU per message (benchmarks/RESULTS.md, session 5). Memory:
// up to two memtables, 64 MiB.
func TunePebble(o *pebble.Options) {
	o.MemTableSize = 32 << 20
	o.L0CompactionThreshold = 8
	o.L0StopWritesThreshold = 32
	for i := range o.Levels {
		o.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
}

// topology is the main projection's handlers: the one place that says
// which handler decides which kinds and writes which tables. The runner
// owns the checkpoints, the decisions (dedup), the policy read and the
// actor rule.
func (s *Store) topology() []Handler {
	hs := append([]Handler{
		Sessions(s.opts.Partitions),
		{
			Name: "sync",
			Categories: []engine.Category{engine.CatMessage, engine.CatContact, engine.CatGroup, engine.CatThread,
				engine.CatConversation, engine.CatChatroom, engine.CatDerived},
			Tables: []byte{tagTimeline, tagMeta, tagHistory, tagContacts, tagConv, tagUserGroups, tagGroup, tagRoom, tagBody, tagBodyRefs, tagRunIndex, tagRunOpen, tagRunSet},
			Decide: s.decideSync,
		},
	}, PresenceHandlers()...)
	return append(hs, s.opts.Handlers...)
}

var metaPartitionsKey = []byte("m\x00partitions")

func (s *Store) checkPartitions() error {
	v, closer, err := s.db.Get(metaPartitionsKey)
	if errors.Is(err, pebble.ErrNotFound) {
		return s.db.Set(metaPartitionsKey, []byte(fmt.Sprint(s.opts.Partitions)), pebble.Sync)
	}
	if err != nil {
		return fmt.Errorf("projections: read meta: %w", err)
	}
	defer closer.Close()
	if string(v) != fmt.Sprint(s.opts.Partitions) {
		return fmt.Errorf("%w: store has %s, log has %d", ErrPartitionMismatch, v, s.opts.Partitions)
	}
	return nil
}

func (s *Store) getProto(k []byte, m proto.Message) (bool, error) {
	return getProto(s.db, k, m)
}

type getter interface {
	Get(key []byte) ([]byte, io.Closer, error)
}

func getProto(g getter, k []byte, m proto.Message) (bool, error) {
	v, closer, err := g.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("projections: get: %w", err)
	}
	uerr := proto.Unmarshal(v, m)
	// The decision a writer is acknowledged with comes through here: no
	// error of the read is dropped, the closer's included.
	if err := closer.Close(); err != nil {
		return false, fmt.Errorf("projections: get %q: %w", k, err)
	}
	if uerr != nil {
		return false, fmt.Errorf("projections: decode %q: %w", k, uerr)
	}
	return true, nil
}

// PebbleLogger adapts slog to Pebble's logger: Pebble's informational
// messages (WAL replay, compactions) go to Debug so they stay out of normal
// output, errors to Error. A nil logger means slog.Default().
func PebbleLogger(l *slog.Logger) pebble.Logger {
	if l == nil {
		l = slog.Default()
	}
	return pebbleLogger{l}
}

type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}

// Fatalf is called by Pebble on unrecoverable corruption; it must not return.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
	panic(fmt.Sprintf("pebble: "+format, args...))
}

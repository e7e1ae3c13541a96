// Package embedlog is the embedded operation log: an engine.Log stored in a
// local Pebble database, fsynced with group commit.
package embedlog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/mdsync/mdsync/engine"
	"github.com/mdsync/mdsync/projections"
)

// Defaults applied by Options.EnsureDefaults.
const (
	DefaultPartitions     int32 = 8
	DefaultMaxRecordBytes       = 1 << 20
	// maxMaxRecordBytes keeps one record well inside Pebble's 4 GiB batch
	// limit, whatever the options say.
	maxMaxRecordBytes = 1 << 30
	// maxGroupBytes bounds the records one group commit takes, so one fsync
	// never carries an unbounded batch; the writer still takes at least one
	// Append whatever its size.
	maxGroupBytes = 16 << 20
	// tailRecords and tailBytes bound each partition's tail: the newest
	// records kept in memory for the readers that follow the end.
	tailRecords = 4096
	tailBytes   = 4 << 20
)

// Options configure Open. The zero value plus a Dir is valid.
type Options struct {
	// Dir is the directory of the Pebble database. Required.
	Dir string

	// Partitions is the partition count. It is stored in the log on first
	// open; opening an existing log with a different non-zero count is an
	// error, because records are already placed by the old count. Zero means
	// the stored count, or DefaultPartitions (8) for a new log.
	Partitions int32

	// MaxRecordBytes is the largest len(Key)+len(Value) of one record that
	// Append accepts. Default DefaultMaxRecordBytes (1 MiB); at most 1 GiB.
	MaxRecordBytes int

	// FS is the file system, for tests (vfs.NewMem, vfs.NewCrashableMem).
	// Default vfs.Default. Ignored when Pebble.FS is set.
	FS vfs.FS

	// Pebble are extra Pebble options; nil means the log's own (tunePebble),
	// which also fill every field they set that is left zero here. Open
	// works on a shallow copy and never changes the caller's value. DisableWAL
	// and Pebble.ReadOnly are rejected: the log's durability rests on the
	// WAL (for a reader, set ReadOnly here).
	Pebble *pebble.Options

	// ReadOnly opens an existing log for reading only, for tools that
	// inspect a log (replay, explain, export): Pebble writes nothing in Dir,
	// Append fails with ErrReadOnly, and the ends are those found at Open,
	// so a Read at an end waits for ctx or Close. Pebble still locks Dir:
	// a log a server holds is read through a snapshot of it
	// (adapters/logsource).
	ReadOnly bool
}

// ErrReadOnly is returned by Append on a log opened with Options.ReadOnly.
var ErrReadOnly = errors.New("embedlog: log opened read-only")

// EnsureDefaults fills unset fields with their documented defaults.
// Partitions is left alone: its default depends on what the log stores.
func (o *Options) EnsureDefaults() {
	if o.MaxRecordBytes == 0 {
		o.MaxRecordBytes = DefaultMaxRecordBytes
	}
	if o.FS == nil {
		o.FS = vfs.Default
	}
}

// Validate reports options that Open cannot use.
func (o *Options) Validate() error {
	switch {
	case o.Dir == "":
		return errors.New("embedlog: Options.Dir is required")
	case o.Partitions < 0:
		return fmt.Errorf("embedlog: Options.Partitions %d is negative", o.Partitions)
	case o.MaxRecordBytes < 1 || o.MaxRecordBytes > maxMaxRecordBytes:
		return fmt.Errorf("embedlog: Options.MaxRecordBytes %d not in [1, %d]", o.MaxRecordBytes, maxMaxRecordBytes)
	case o.Pebble != nil && o.Pebble.DisableWAL:
		return errors.New("embedlog: Options.Pebble.DisableWAL would lose acknowledged records")
	case o.Pebble != nil && o.Pebble.ReadOnly:
		return errors.New("embedlog: Options.Pebble.ReadOnly cannot append")
	}
	return nil
}

// Stats are counters since Open, for benchmarks and metrics.
type Stats struct {
	Commits uint64 // fsynced group commits
	Appends uint64 // Append calls answered by a commit
	Records uint64 // records written
	Bytes   uint64 // stored record bytes (key, value and their length prefix)
}

// Log is the embedded engine.Log. Use Open to make one.
//
// Appends go through one writer goroutine: it takes every Append waiting,
// assigns offsets, writes them all in one Pebble batch committed with
// pebble.Sync, and only then publishes the new ends to readers and answers
// the callers. Pebble makes a synced batch visible to its iterators before
// Commit returns, so readers never trust Pebble's view of the end: they read
// below the durable end kept here, which moves only after the fsync.
type Log struct {
	db         *pebble.DB
	partitions int32
	maxRecord  int
	readOnly   bool // Options.ReadOnly: no writer runs

	reqs     chan *appendReq // unbuffered: a request is either taken or not
	closing  chan struct{}   // closed by Close; stops the writer, wakes waiters
	stopped  chan struct{}   // closed when the writer has exited
	once     sync.Once
	closeErr error // set once by Close

	// life guards db against Close while a Read or the open path uses it.
	life   sync.RWMutex
	closed bool // under life

	mu      sync.Mutex
	durable []int64         // per partition: end of the fsynced records
	changed []chan struct{} // per partition: closed and replaced when its durable end moves
	tails   []tail          // per partition: the newest durable records, in memory
	failed  error           // sticky: a commit failed, the log is unusable

	commits, appends, records, bytes atomic.Uint64
}

var _ engine.Log = (*Log)(nil)

// tail is a partition's newest durable records as stored (encodeValue),
// from offset first on: a reader that follows the end (the projectors, the
// relay) reads them from here instead of through a Pebble iterator. A
// stored value is never modified once written: a reader copies the slice
// headers it needs under mu and reads the bytes after.
type tail struct {
	first int64
	vals  [][]byte
	bytes int
}

// add appends the value of the record at offset off (the next one) and
// drops the oldest past the bounds.
func (t *tail) add(off int64, v []byte) {
	if len(t.vals) == 0 {
		t.first = off
	}
	t.vals = append(t.vals, v)
	t.bytes += len(v)
	for len(t.vals) > 1 && (len(t.vals) > tailRecords || t.bytes > tailBytes) {
		t.bytes -= len(t.vals[0])
		t.vals[0] = nil
		t.vals = t.vals[1:]
		t.first++
	}
}

type appendReq struct {
	ctx   context.Context
	parts []int32  // partition of each record
	vals  [][]byte // encoded value of each record, copied from the caller
	size  int
	reply chan appendReply // buffered 1: the writer never blocks on it
}

type appendReply struct {
	pos []engine.Position
	err error
}

// Key layout. The meta key sorts before every record key.
var metaPartitionsKey = []byte("\x00meta/partitions")

const (
	recordPrefix = 'r'
	recordKeyLen = 1 + 4 + 8 // prefix, partition (BE uint32), offset (BE uint64)
)

func recordKey(dst []byte, p int32, off int64) []byte {
	dst = append(dst, recordPrefix)
	dst = binary.BigEndian.AppendUint32(dst, uint32(p))
	return binary.BigEndian.AppendUint64(dst, uint64(off))
}

// encodeValue stores a record as uvarint(len(key)) key value.
func encodeValue(key, value []byte) []byte {
	b := make([]byte, 0, binary.MaxVarintLen64+len(key)+len(value))
	b = binary.AppendUvarint(b, uint64(len(key)))
	b = append(b, key...)
	return append(b, value...)
}

// decodeEntry copies a stored value into a fresh Entry. Key and Value share
// one allocation but are capped so appending to one cannot clobber the other.
func decodeEntry(p int32, off int64, stored []byte) (engine.Entry, error) {
	n, w := binary.Uvarint(stored)
	if w <= 0 || n > uint64(len(stored)-w) {
		return engine.Entry{}, fmt.Errorf("embedlog: corrupt record %d/%d", p, off)
	}
	buf := append([]byte(nil), stored[w:]...)
	k := int(n)
	return engine.Entry{Partition: p, Offset: off, Key: buf[:k:k], Value: buf[k:]}, nil
}

// Open opens or creates the log in opts.Dir, recovering each partition's end
// from its last stored record.
func Open(opts Options) (*Log, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	po := &pebble.Options{}
	if opts.Pebble != nil {
		po = opts.Pebble.Clone()
	}
	if po.FS == nil {
		po.FS = opts.FS
	}
	if po.Logger == nil {
		po.Logger = projections.PebbleLogger(nil)
	}
	tunePebble(po)
	po.ReadOnly = opts.ReadOnly
	db, err := pebble.Open(opts.Dir, po)
	if err != nil {
		return nil, fmt.Errorf("embedlog: open %s: %w", opts.Dir, err)
	}
	parts, err := loadPartitions(db, opts.Partitions, opts.ReadOnly)
	if err == nil {
		var ends []int64
		if ends, err = recoverEnds(db, parts); err == nil {
			l := &Log{
				db:         db,
				partitions: parts,
				maxRecord:  opts.MaxRecordBytes,
				reqs:       make(chan *appendReq),
				closing:    make(chan struct{}),
				stopped:    make(chan struct{}),
				durable:    ends,
				changed:    make([]chan struct{}, parts),
				tails:      make([]tail, parts),
			}
			for p := range l.changed {
				l.changed[p] = make(chan struct{})
			}
			if opts.ReadOnly {
				l.readOnly = true
				close(l.stopped)
				return l, nil
			}
			// The writer gets its own copy: durable is only touched under mu.
			go l.writer(append([]int64(nil), ends...))
			return l, nil
		}
	}
	return nil, errors.Join(err, db.Close())
}

// tunePebble fills the Pebble options the caller left unset with the log's.
// Its records are appended at the end of each partition's key range and
// never overwritten or deleted, so no compaction of the log has anything to
// drop: the best one moves a table down without reading it.
//
// Every table Pebble writes ends at a partition boundary (partitionSpans).
// A flush, which holds the newest records of every partition, then writes
// one table per partition, each above every older key of its partition and
// below the next partition's keys: it overlaps nothing in the levels below,
// and Pebble moves it down instead of rewriting it. With Pebble's defaults a
// flushed table spans all partitions, and merging it into the base level
// rewrote the base level of every partition inside its range. Appending
// 1.2 GB to 8 partitions (benchmarks/RESULTS.md, session 6): 6.9 GB of
// compaction writes and write amplification 7.4 with the defaults; 1.8 GB
// and 3.2 with the bigger memtable alone; none and 1.75 (the WAL and one
// flush) with the spans too, every compaction a move, and 58% less CPU in
// the appending process than the defaults. Such tables never overlap, so L0
// stays one sublevel deep however many files it holds; Pebble's L0 file
// threshold (500) is kept: at 64 it merged L0 tables of one partition
// (840 MB rewritten, write amplification 2.4).
//
// A 16 MiB memtable (Pebble's default is 4 MiB) makes a flush's table for a
// partition about L0's 2 MiB target size, and keeps the tail readers read in
// memory longer. Memory: up to two memtables, 32 MiB.
func tunePebble(o *pebble.Options) {
	if o.MemTableSize == 0 {
		o.MemTableSize = 16 << 20
	}
	if o.Experimental.SpanPolicyFunc == nil {
		o.Experimental.SpanPolicyFunc = partitionSpans
	}
}

// partitionSpans is a pebble.SpanPolicyFunc whose spans are the partitions'
// key ranges: Pebble finishes a table at the end of each span. The policy
// itself is the default.
func partitionSpans(start []byte) (pebble.SpanPolicy, []byte, error) {
	switch {
	case len(start) == 0 || start[0] < recordPrefix:
		// The meta keys: their span ends at the first record key.
		return pebble.SpanPolicy{}, []byte{recordPrefix}, nil
	case start[0] > recordPrefix || len(start) < 5:
		// Past the records, or a record key too short to name a partition
		// (never written): one span to the end.
		return pebble.SpanPolicy{}, nil, nil
	}
	p := binary.BigEndian.Uint32(start[1:5])
	if p == ^uint32(0) {
		return pebble.SpanPolicy{}, []byte{recordPrefix + 1}, nil
	}
	return pebble.SpanPolicy{}, binary.BigEndian.AppendUint32([]byte{recordPrefix}, p+1), nil
}

// loadPartitions returns the stored partition count, storing want (or the
// default) when the log is new; a read-only log must have one.
func loadPartitions(db *pebble.DB, want int32, readOnly bool) (int32, error) {
	v, closer, err := db.Get(metaPartitionsKey)
	if errors.Is(err, pebble.ErrNotFound) && readOnly {
		return 0, errors.New("embedlog: no log here (no partition count stored)")
	}
	if errors.Is(err, pebble.ErrNotFound) {
		if want == 0 {
			want = DefaultPartitions
		}
		if err := db.Set(metaPartitionsKey, binary.BigEndian.AppendUint32(nil, uint32(want)), pebble.Sync); err != nil {
			return 0, fmt.Errorf("embedlog: store partition count: %w", err)
		}
		return want, nil
	}
	if err != nil {
		return 0, fmt.Errorf("embedlog: read partition count: %w", err)
	}
	defer closer.Close()
	if len(v) != 4 {
		return 0, fmt.Errorf("embedlog: corrupt partition count (%d bytes)", len(v))
	}
	stored := int32(binary.BigEndian.Uint32(v))
	if stored < 1 {
		return 0, fmt.Errorf("embedlog: corrupt partition count %d", stored)
	}
	if want != 0 && want != stored {
		return 0, fmt.Errorf("embedlog: log has %d partitions, options ask for %d", stored, want)
	}
	return stored, nil
}

// recoverEnds finds each partition's end as one past its last record.
// Offsets are dense from 0 because a batch is all-or-nothing in the WAL.
func recoverEnds(db *pebble.DB, parts int32) ([]int64, error) {
	it, err := db.NewIter(&pebble.IterOptions{
		LowerBound: []byte{recordPrefix},
		UpperBound: []byte{recordPrefix + 1},
	})
	if err != nil {
		return nil, fmt.Errorf("embedlog: recover: %w", err)
	}
	ends := make([]int64, parts)
	for p := int32(0); p < parts; p++ {
		if it.SeekLT(recordKey(nil, p+1, 0)) {
			k := it.Key()
			if len(k) == recordKeyLen && int32(binary.BigEndian.Uint32(k[1:5])) == p {
				ends[p] = int64(binary.BigEndian.Uint64(k[5:])) + 1
			}
		}
	}
	// A key beyond the last partition means the stored count is wrong.
	if it.SeekGE(recordKey(nil, parts, 0)) {
		err = fmt.Errorf("embedlog: record key %x beyond %d partitions", it.Key(), parts)
	}
	return ends, errors.Join(err, it.Error(), it.Close())
}

// Partitions returns the fixed partition count.
func (l *Log) Partitions() int32 { return l.partitions }

// Stats returns counters since Open.
func (l *Log) Stats() Stats {
	return Stats{
		Commits: l.commits.Load(),
		Appends: l.appends.Load(),
		Records: l.records.Load(),
		Bytes:   l.bytes.Load(),
	}
}

// Append validates every record before writing any, then waits for the
// group commit that fsyncs them. If ctx ends first Append returns ctx.Err()
// and the records may or may not be written.
func (l *Log) Append(ctx context.Context, recs []engine.Record) ([]engine.Position, error) {
	if l.isClosed() {
		return nil, fmt.Errorf("embedlog: append: %w", engine.ErrLogClosed)
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("embedlog: append: %w", engine.ErrEmptyAppend)
	}
	if l.readOnly {
		return nil, ErrReadOnly
	}
	req := &appendReq{
		ctx:   ctx,
		parts: make([]int32, len(recs)),
		vals:  make([][]byte, len(recs)),
		reply: make(chan appendReply, 1),
	}
	for i, r := range recs {
		if r.Partition < 0 || r.Partition >= l.partitions {
			return nil, fmt.Errorf("embedlog: append record %d: partition %d of %d: %w", i, r.Partition, l.partitions, engine.ErrBadPartition)
		}
		if n := len(r.Key) + len(r.Value); n > l.maxRecord {
			return nil, fmt.Errorf("embedlog: append record %d: %d bytes, limit %d: %w", i, n, l.maxRecord, engine.ErrRecordTooLarge)
		}
		// Encoding here copies the caller's bytes, so nothing of recs is
		// retained even if we return on ctx before the writer is done.
		req.parts[i] = r.Partition
		req.vals[i] = encodeValue(r.Key, r.Value)
		req.size += recordKeyLen + len(req.vals[i])
	}
	select {
	case l.reqs <- req:
	case <-l.closing:
		return nil, fmt.Errorf("embedlog: append: %w", engine.ErrLogClosed)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case rep := <-req.reply:
		return rep.pos, rep.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// writer is the only goroutine that writes records; next (the offset each
// partition's next record gets) is owned by it.
func (l *Log) writer(next []int64) {
	defer close(l.stopped)
	b := l.db.NewBatch()
	defer b.Close()
	var (
		group []*appendReq
		pos   [][]engine.Position
	)
	key := make([]byte, 0, recordKeyLen)
	staged := make([]int64, len(next))
	for {
		group = group[:0]
		select {
		case r := <-l.reqs:
			group = append(group, r)
		case <-l.closing:
			return
		}
		// Take every Append already waiting: they share the next fsync.
		size := group[0].size
	drain:
		for size < maxGroupBytes {
			select {
			case r := <-l.reqs:
				group = append(group, r)
				size += r.size
			default:
				break drain
			}
		}

		if err := l.failure(); err != nil {
			for _, r := range group {
				r.reply <- appendReply{err: err}
			}
			continue
		}

		b.Reset()
		copy(staged, next)
		pos = pos[:0]
		live := 0
		var nrec, nbytes uint64
		for _, r := range group {
			// A caller that gave up is not written: its Append has already
			// returned ctx.Err(), and fewer surprises beat a wasted fsync.
			if err := r.ctx.Err(); err != nil {
				r.reply <- appendReply{err: err}
				continue
			}
			ps := make([]engine.Position, len(r.vals))
			for i, v := range r.vals {
				p := r.parts[i]
				ps[i] = engine.Position{Partition: p, Offset: staged[p]}
				key = recordKey(key[:0], p, staged[p])
				staged[p]++
				_ = b.Set(key, v, nil) // Set copies; it only fails on a read-only batch.
				nbytes += uint64(len(v))
			}
			nrec += uint64(len(r.vals))
			group[live] = r
			pos = append(pos, ps)
			live++
		}
		group = group[:live]
		if live == 0 {
			continue
		}

		if err := b.Commit(pebble.Sync); err != nil {
			// The WAL's state is unknown now: refuse all further appends
			// rather than risk reusing offsets that may be on disk.
			err = fmt.Errorf("embedlog: commit: %w", err)
			l.mu.Lock()
			l.failed = err
			l.mu.Unlock()
			for _, r := range group {
				r.reply <- appendReply{err: err}
			}
			continue
		}
		copy(next, staged)
		l.commits.Add(1)
		l.appends.Add(uint64(live))
		l.records.Add(nrec)
		l.bytes.Add(nbytes)

		// Only now, after the fsync, may readers see the records. Only the
		// readers of partitions this commit wrote are woken: one wake-up per
		// fsync for each, whatever the number of appends it carried.
		l.mu.Lock()
		for i, r := range group {
			for j, v := range r.vals {
				l.tails[r.parts[j]].add(pos[i][j].Offset, v)
			}
		}
		for p, end := range next {
			if end != l.durable[p] {
				l.durable[p] = end
				close(l.changed[p])
				l.changed[p] = make(chan struct{})
			}
		}
		l.mu.Unlock()

		for i, r := range group {
			r.reply <- appendReply{pos: pos[i]}
			group[i] = nil
		}
	}
}

func (l *Log) failure() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failed
}

// Read returns up to max durable entries of partition p from offset from;
// max below 1 is taken as 1. At the end it waits for a commit, ctx or Close.
func (l *Log) Read(ctx context.Context, p int32, from int64, max int) ([]engine.Entry, error) {
	if err := l.checkPartition("read", p); err != nil {
		return nil, err
	}
	if max < 1 {
		max = 1
	}
	for {
		l.mu.Lock()
		end, changed := l.durable[p], l.changed[p]
		if from < 0 || from > end {
			l.mu.Unlock()
			return nil, fmt.Errorf("embedlog: read %d/%d, end %d: %w", p, from, end, engine.ErrOffsetRange)
		}
		if from < end {
			to := min(end, from+int64(max))
			if t := l.tails[p]; len(t.vals) > 0 && from >= t.first {
				// Copy the headers: the tail drops its oldest in place.
				vals := append([][]byte(nil), t.vals[from-t.first:to-t.first]...)
				l.mu.Unlock()
				return tailEntries(p, from, vals)
			}
			l.mu.Unlock()
			return l.readRange(p, from, to)
		}
		l.mu.Unlock()
		select {
		case <-changed:
		case <-l.closing:
			return nil, fmt.Errorf("embedlog: read: %w", engine.ErrLogClosed)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// tailEntries copies the stored values of the records from offset from
// into fresh Entries.
func tailEntries(p int32, from int64, vals [][]byte) ([]engine.Entry, error) {
	out := make([]engine.Entry, len(vals))
	for i, v := range vals {
		e, err := decodeEntry(p, from+int64(i), v)
		if err != nil {
			return nil, err
		}
		out[i] = e
	}
	return out, nil
}

// readRange reads the records [from, to) of p, all known durable.
func (l *Log) readRange(p int32, from, to int64) ([]engine.Entry, error) {
	l.life.RLock()
	defer l.life.RUnlock()
	if l.closed {
		return nil, fmt.Errorf("embedlog: read: %w", engine.ErrLogClosed)
	}
	it, err := l.db.NewIter(&pebble.IterOptions{
		LowerBound: recordKey(nil, p, from),
		UpperBound: recordKey(nil, p, to),
	})
	if err != nil {
		return nil, fmt.Errorf("embedlog: read %d/%d: %w", p, from, err)
	}
	out := make([]engine.Entry, 0, to-from)
	want := from
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		off := int64(binary.BigEndian.Uint64(k[5:]))
		if off != want {
			err = fmt.Errorf("embedlog: partition %d: missing offset %d (found %d)", p, want, off)
			break
		}
		var v []byte
		if v, err = it.ValueAndErr(); err != nil {
			break
		}
		var e engine.Entry
		if e, err = decodeEntry(p, off, v); err != nil {
			break
		}
		out = append(out, e)
		want++
	}
	if err == nil && want != to {
		err = fmt.Errorf("embedlog: partition %d: missing offset %d (below durable end %d)", p, want, to)
	}
	if err = errors.Join(err, it.Error(), it.Close()); err != nil {
		return nil, fmt.Errorf("embedlog: read %d/%d: %w", p, from, err)
	}
	return out, nil
}

// End returns the durable end of partition p.
func (l *Log) End(ctx context.Context, p int32) (int64, error) {
	if err := l.checkPartition("end", p); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.durable[p], nil
}

func (l *Log) checkPartition(op string, p int32) error {
	if l.isClosed() {
		return fmt.Errorf("embedlog: %s: %w", op, engine.ErrLogClosed)
	}
	if p < 0 || p >= l.partitions {
		return fmt.Errorf("embedlog: %s partition %d of %d: %w", op, p, l.partitions, engine.ErrBadPartition)
	}
	return nil
}

// Close stops the writer (after the commit in progress, whose callers get
// their answer), wakes blocked Reads and closes Pebble. Idempotent; every
// call returns the first call's result.
func (l *Log) Close() error {
	l.once.Do(func() {
		l.life.Lock()
		l.closed = true
		l.life.Unlock()
		close(l.closing)
		<-l.stopped
		// Readers in readRange hold life.RLock; taking the lock waits for
		// them so Pebble is never used after it is closed.
		l.life.Lock()
		l.closeErr = l.db.Close()
		l.life.Unlock()
		if l.closeErr != nil {
			l.closeErr = fmt.Errorf("embedlog: close: %w", l.closeErr)
		}
	})
	return l.closeErr
}

func (l *Log) isClosed() bool {
	l.life.RLock()
	defer l.life.RUnlock()
	return l.closed
}

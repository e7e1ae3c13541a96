// Package logtest is the conformance suite for engine.Log: every log adapter
// (embedded, Kafka) runs Run unchanged from its own tests, and Bench from its
// benchmarks, so adapters are held to one contract and measured one way.
package logtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mdsync/mdsync/engine"
)

// Factory makes a new, empty log with the given partition count, on storage
// of its own (use t.TempDir, a fresh topic, ...), and cleans that storage up
// with t.Cleanup.
//
// reopen, when non-nil, opens a new log over the same storage; the suite
// closes the previous log before calling it, and closes every log it gets.
// reopen reports its own failures through t.
type Factory func(t testing.TB, partitions int32) (log engine.Log, reopen func() engine.Log)

// Features say what the adapter under test promises beyond the port.
type Features struct {
	// Persistent: records appended before Close are all there, at the same
	// positions, in the log reopen returns. Requires a non-nil reopen.
	Persistent bool

	// MaxRecordBytes is the largest len(Key)+len(Value) the factory's logs
	// accept; one byte more must fail with engine.ErrRecordTooLarge. Zero
	// skips the size tests.
	MaxRecordBytes int

	// AtomicRejects: an Append refused by validation (ErrBadPartition,
	// ErrRecordTooLarge) writes none of its records, not even the valid ones.
	// The port allows partial writes on error; adapters that validate the
	// whole call before writing should promise this.
	AtomicRejects bool

	// Partitions is the partition count the suite asks for. Default 4.
	Partitions int32

	// Timeout bounds every wait on the log. Default 5 s.
	Timeout time.Duration
}

func (f *Features) ensureDefaults() {
	if f.Partitions == 0 {
		f.Partitions = 4
	}
	if f.Timeout == 0 {
		f.Timeout = 5 * time.Second
	}
}

// Run runs every conformance test against logs made by f.
func Run(t *testing.T, f Factory, feat Features) {
	feat.ensureDefaults()
	if feat.Partitions < 2 {
		t.Fatalf("logtest: Features.Partitions must be >= 2 to test partitioning, got %d", feat.Partitions)
	}
	s := &suite{f: f, feat: feat}
	tests := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"Partitions", s.testPartitions},
		{"Ordering", s.testOrdering},
		{"PositionsMatchRead", s.testPositionsMatchRead},
		{"MultiPartitionBatch", s.testMultiPartitionBatch},
		{"End", s.testEnd},
		{"ReadFromAnyPosition", s.testReadFromAnyPosition},
		{"ReadWaitsAtEnd", s.testReadWaitsAtEnd},
		{"ReadContext", s.testReadContext},
		{"ConcurrentAppenders", s.testConcurrentAppenders},
		{"Durability", s.testDurability},
		{"Errors", s.testErrors},
		{"RecordSize", s.testRecordSize},
		{"Ownership", s.testOwnership},
		{"Close", s.testClose},
		{"CloseWakesRead", s.testCloseWakesRead},
		{"CloseDuringAppends", s.testCloseDuringAppends},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.run)
	}
}

type suite struct {
	f    Factory
	feat Features
}

// open makes a fresh log and closes it when the test ends.
func (s *suite) open(t *testing.T) (engine.Log, func() engine.Log) {
	t.Helper()
	l, reopen := s.f(t, s.feat.Partitions)
	if l == nil {
		t.Fatal("factory returned a nil log")
	}
	t.Cleanup(func() { _ = l.Close() })
	if reopen == nil {
		return l, nil
	}
	return l, func() engine.Log {
		t.Helper()
		l := reopen()
		if l == nil {
			t.Fatal("reopen returned a nil log")
		}
		t.Cleanup(func() { _ = l.Close() })
		return l
	}
}

func (s *suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), s.feat.Timeout)
	t.Cleanup(cancel)
	return ctx
}

func rec(p int32, key, value string) engine.Record {
	return engine.Record{Partition: p, Key: []byte(key), Value: []byte(value)}
}

func mustAppend(t *testing.T, ctx context.Context, l engine.Log, recs ...engine.Record) []engine.Position {
	t.Helper()
	pos, err := l.Append(ctx, recs)
	if err != nil {
		t.Fatalf("Append(%d records): %v", len(recs), err)
	}
	if len(pos) != len(recs) {
		t.Fatalf("Append(%d records) returned %d positions", len(recs), len(pos))
	}
	for i, p := range pos {
		if p.Partition != recs[i].Partition {
			t.Fatalf("Append: record %d for partition %d got position %+v", i, recs[i].Partition, p)
		}
	}
	return pos
}

func mustEnd(t *testing.T, ctx context.Context, l engine.Log, p int32) int64 {
	t.Helper()
	end, err := l.End(ctx, p)
	if err != nil {
		t.Fatalf("End(%d): %v", p, err)
	}
	return end
}

// readAll reads partition p from offset from up to (not including) to,
// in as many Reads as the adapter needs, checking each Read's shape.
func readAll(t *testing.T, ctx context.Context, l engine.Log, p int32, from, to int64) []engine.Entry {
	t.Helper()
	var out []engine.Entry
	for next := from; next < to; {
		const max = 64
		es, err := l.Read(ctx, p, next, max)
		if err != nil {
			t.Fatalf("Read(p=%d, from=%d): %v", p, next, err)
		}
		checkRead(t, es, p, next, max)
		out = append(out, es...)
		next += int64(len(es))
	}
	if int64(len(out)) != to-from {
		t.Fatalf("read %d entries of partition %d in [%d, %d)", len(out), p, from, to)
	}
	return out
}

// checkRead checks what every Read must return: 1..max entries of p, dense
// from from.
func checkRead(t *testing.T, es []engine.Entry, p int32, from int64, max int) {
	t.Helper()
	if len(es) == 0 || len(es) > max {
		t.Fatalf("Read(p=%d, from=%d, max=%d) returned %d entries", p, from, max, len(es))
	}
	for i, e := range es {
		if e.Partition != p || e.Offset != from+int64(i) {
			t.Fatalf("Read(p=%d, from=%d): entry %d at %d/%d, want %d/%d", p, from, i, e.Partition, e.Offset, p, from+int64(i))
		}
	}
}

func sameRecord(e engine.Entry, r engine.Record) bool {
	return e.Partition == r.Partition && bytes.Equal(e.Key, r.Key) && bytes.Equal(e.Value, r.Value)
}

func checkEntries(t *testing.T, got []engine.Entry, want []engine.Record) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d", len(got), len(want))
	}
	for i := range want {
		if !sameRecord(got[i], want[i]) {
			t.Fatalf("entry %d = {p %d, off %d, key %q, value %q}, want {p %d, key %q, value %q}",
				i, got[i].Partition, got[i].Offset, got[i].Key, got[i].Value, want[i].Partition, want[i].Key, want[i].Value)
		}
	}
}

// expectErr fails unless err matches target.
func expectErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: err = %v, want errors.Is(err, %v)", what, err, target)
	}
}

// result of a call made in another goroutine.
type readResult struct {
	es  []engine.Entry
	err error
}

func goRead(ctx context.Context, l engine.Log, p int32, from int64, max int) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		es, err := l.Read(ctx, p, from, max)
		ch <- readResult{es, err}
	}()
	return ch
}

func (s *suite) await(t *testing.T, ch <-chan readResult, what string) readResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(s.feat.Timeout):
		t.Fatalf("%s: no answer after %v", what, s.feat.Timeout)
		return readResult{}
	}
}

// stillBlocked fails if ch answers within a short grace period.
func stillBlocked(t *testing.T, ch <-chan readResult, what string) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s returned early: %d entries, err %v", what, len(r.es), r.err)
	case <-time.After(50 * time.Millisecond):
	}
}

func (s *suite) testPartitions(t *testing.T) {
	l, _ := s.open(t)
	if got := l.Partitions(); got != s.feat.Partitions {
		t.Fatalf("Partitions() = %d, want %d", got, s.feat.Partitions)
	}
}

// One partition: offsets dense from 0, in the order given, across calls.
func (s *suite) testOrdering(t *testing.T) {
	ctx := s.ctx(t)
	l, _ := s.open(t)
	var want []engine.Record
	for call := 0; call < 3; call++ {
		var recs []engine.Record
		for i := 0; i < 5; i++ {
			recs = append(recs, rec(1, fmt.Sprintf("k%d", i%2), fmt.Sprintf("call %d rec %d", call, i)))
		}
		if call == 1 {
			// Empty keys and values are records too.
			recs = append(recs, engine.Record{Partition: 1}, engine.Record{Partition: 1, Key: []byte("only-key")})
		}
		pos := mustAppend(t, ctx, l, recs...)
		for i, p := range pos {
			if want := int64(len(want) + i); p.Offset != want {
				t.Fatalf("call %d record %d: offset %d, want %d", call, i, p.Offset, want)
			}
		}
		want = append(want, recs...)
	}
	checkEntries(t, readAll(t, ctx, l, 1, 0, int64(len(want))), want)
	if end := mustEnd(t, ctx, l, 1); end != int64(len(want)) {
		t.Fatalf("End = %d, want %d", end, len(want))
	}
}

// Every position Append returns holds the record given there.
func (s *suite) testPositionsMatchRead(t *testing.T) {
	ctx := s.ctx(t)
	l, _ := s.open(t)
	type placed struct {
		r   engine.Record
		pos engine.Position
	}
	var all []placed
	for call := 0; call < 10; call++ {
		var recs []engine.Record
		for i := 0; i <= call%4; i++ {
			key := fmt.Sprintf("user-%d", call*7+i)
			recs = append(recs, engine.Record{
				Partition: engine.PartitionFor([]byte(key), l.Partitions()),
				Key:       []byte(key),
				Value:     []byte(fmt.Sprintf("v%d.%d", call, i)),
			})
		}
		for i, p := range mustAppend(t, ctx, l, recs...) {
			all = append(all, placed{recs[i], p})
		}
	}
	for _, pl := range all {
		es, err := l.Read(ctx, pl.pos.Partition, pl.pos.Offset, 1)
		if err != nil {
			t.Fatalf("Read(%+v): %v", pl.pos, err)
		}
		checkRead(t, es, pl.pos.Partition, pl.pos.Offset, 1)
		checkEntries(t, es, []engine.Record{pl.r})
	}
}

// One Append over every partition: per partition, offsets follow the
// current end, contiguous, in the order given.
func (s *suite) testMultiPartitionBatch(t *testing.T) {
	ctx := s.ctx(t)
	l, _ := s.open(t)
	n := l.Partitions()
	// Uneven starting ends, so offsets are not equal across partitions.
	for p := int32(0); p < n; p++ {
		for i := int32(0); i < p; i++ {
			mustAppend(t, ctx, l, rec(p, "pre", fmt.Sprint(i)))
		}
	}
	var recs []engine.Record
	for i := 0; i < 3; i++ {
		for p := n - 1; p >= 0; p-- {
			recs = append(recs, rec(p, fmt.Sprintf("k%d", p), fmt.Sprintf("batch %d/%d", p, i)))
		}
	}
	pos := mustAppend(t, ctx, l, recs...)
	next := make([]int64, n)
	for p := range next {
		next[p] = int64(p)
	}
	want := make([][]engine.Record, n)
	for i, r := range recs {
		if pos[i].Offset != next[r.Partition] {
			t.Fatalf("record %d (partition %d): offset %d, want %d (contiguous after end)", i, r.Partition, pos[i].Offset, next[r.Partition])
		}
		next[r.Partition]++
		want[r.Partition] = append(want[r.Partition], r)
	}
	for p := int32(0); p < n; p++ {
		checkEntries(t, readAll(t, ctx, l, p, int64(p), next[p]), want[p])
		if end := mustEnd(t, ctx, l, p); end != next[p] {
			t.Fatalf("End(%d) = %d, want %d", p, end, next[p])
		}
	}
}

func (s *suite) testEnd(t *testing.T) {
	ctx := s.ctx(t)
	l, _ := s.open(t)
	for p := int32(0); p < l.Partitions(); p++ {
		if end := mustEnd(t, ctx, l, p); end != 0 {
			t.Fatalf("new log: End(%d) = %d, want 0", p, end)
		}
	}
	mustAppend(t, ctx, l, rec(0, "a", "1"), rec(0, "a", "2"), rec(1, "b", "1"))
	mustAppend(t, ctx, l, rec(0, "a", "3"))
	for p, want := range []int64{3, 1, 0} {
		if end := mustEnd(t, ctx, l, int32(p)); end != want {
			t.Fatalf("End(%d) = %d, want %d", p, end, want)
		}
	}
}

func (s *suite) testReadFromAnyPosition(t *testing.T) {
	ctx := s.ctx(t)
	l, _ := s.open(t)
	var recs []engine.Record
	for i := 0; i < 10; i++ {
		recs = append(recs, rec(0, "k", fmt.Sprint(i)))
	}
	mustAppend(t, ctx, l, recs...)

	for _, tc := range []struct {
		from int64
		max  int
	}{{0, 1}, {3, 4}, {9, 100}, {5, 5}} {
		es, err := l.Read(ctx, 0, tc.from, tc.max)
		if err != nil {
			t.Fatalf("Read(from=%d, max=%d): %v", tc.from, tc.max, err)
		}
		checkRead(t, es, 0, tc.from, tc.max)
		checkEntries(t, es, recs[tc.from:tc.from+int64(len(es))])
	}
	for _, from := range []int64{11, 1000, -1} {
		_, err := l.Read(ctx, 0, from, 10)
		expectErr(t, fmt.Sprintf("Read(from=%d) of 10 records", from), err, engine.ErrOffsetRange)
	}
	// An empty partition: anything but 0 is out of range.
	_, err := l.Read(ctx, 1, 1, 10)
	expectErr(t, "Read(from=1) of an empty partition", err, engine.ErrOffsetRange)
}

// A Read at the end waits, and an Append on its partition wakes it; an
// Append on another partition does not.
func (s *suite) testReadWaitsAtEnd(t *testing.T) {
	ctx := s.ctx(t)
	l, _ := s.open(t)
	mustAppend(t, ctx, l, rec(0, "k", "0"), rec(0, "k", "1"))

	ch := goRead(ctx, l, 0, 2, 10)
	stillBlocked(t, ch, "Read at end")
	mustAppend(t, ctx, l, rec(1, "other", "x"))
	stillBlocked(t, ch, "Read at end after an append to another partition")
	mustAppend(t, ctx, l, rec(0, "k", "2"), rec(0, "k", "3"))
	r := s.await(t, ch, "Read at end after an append")
	if r.err != nil {
		t.Fatalf("Read at end: %v", r.err)
	}
	checkRead(t, r.es, 0, 2, 10)
	checkEntries(t, r.es, []engine.Record{rec(0, "k", "2"), rec(0, "k", "3")}[:len(r.es)])

	// An empty partition waits at 0 too.
	ch = goRead(ctx, l, 2, 0, 1)
	stillBlocked(t, ch, "Read of an empty partition")
	mustAppend(t, ctx, l, rec(2, "z", "first"))
	r = s.await(t, ch, "Read of an empty partition after an append")
	if r.err != nil {
		t.Fatalf("Read of empty partition: %v", r.err)
	}
	checkEntries(t, r.es, []engine.Record{rec(2, "z", "first")})
}

// A Read waiting at the end returns ctx's error promptly when ctx ends.
func (s *suite) testReadContext(t *testing.T) {
	l, _ := s.open(t)
	mustAppend(t, s.ctx(t), l, rec(0, "k", "v"))

	ctx, cancel := context.WithCancel(context.Background())
	ch := goRead(ctx, l, 0, 1, 1)
	stillBlocked(t, ch, "Read at end")
	start := time.Now()
	cancel()
	r := s.await(t, ch, "Read after cancel")
	expectErr(t, "Read after cancel", r.err, context.Canceled)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Read took %v to notice cancel", d)
	}

	dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer dcancel()
	r = s.await(t, goRead(dctx, l, 0, 1, 1), "Read with deadline")
	expectErr(t, "Read past deadline", r.err, context.DeadlineExceeded)

	// Already cancelled: no wait at all.
	_, err := l.Read(ctx, 0, 1, 1)
	expectErr(t, "Read with a cancelled ctx", err, context.Canceled)
}

// Many goroutines appending at once: every record lands exactly once, and
// each goroutine's records keep their order within each partition.
func (s *suite) testConcurrentAppenders(t *testing.T) {
	const (
		appenders = 8
		perWriter = 200
	)
	ctx := s.ctx(t)
	l, _ := s.open(t)
	n := l.Partitions()

	type id struct{ g, i int }
	positions := make([]map[id]engine.Position, appenders)
	var wg sync.WaitGroup
	errs := make(chan error, appenders)
	for g := 0; g < appenders; g++ {
		positions[g] = make(map[id]engine.Position, perWriter)
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Calls of 1, 2, 3, ... records; records spread over partitions.
			for i, size := 0, 1; i < perWriter; size = size%4 + 1 {
				var (
					recs []engine.Record
					ids  []id
				)
				for ; len(recs) < size && i < perWriter; i++ {
					ids = append(ids, id{g, i})
					recs = append(recs, engine.Record{
						Partition: int32((g + i) % int(n)),
						Key:       []byte(fmt.Sprintf("g%d", g)),
						Value:     []byte(fmt.Sprintf("%d/%d", g, i)),
					})
				}
				pos, err := l.Append(ctx, recs)
				if err == nil && len(pos) != len(recs) {
					err = fmt.Errorf("%d positions for %d records", len(pos), len(recs))
				}
				if err != nil {
					errs <- fmt.Errorf("appender %d: %w", g, err)
					return
				}
				for k, p := range pos {
					positions[g][ids[k]] = p
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	seen := make(map[id]engine.Position)
	var total int64
	for p := int32(0); p < n; p++ {
		end := mustEnd(t, ctx, l, p)
		total += end
		last := make([]int, appenders) // last i seen per goroutine here
		for g := range last {
			last[g] = -1
		}
		for _, e := range readAll(t, ctx, l, p, 0, end) {
			var g, i int
			if _, err := fmt.Sscanf(string(e.Value), "%d/%d", &g, &i); err != nil || g < 0 || g >= appenders {
				t.Fatalf("entry %d/%d: unexpected value %q", p, e.Offset, e.Value)
			}
			k := id{g, i}
			if prev, dup := seen[k]; dup {
				t.Fatalf("record %v at %d/%d and at %+v", k, p, e.Offset, prev)
			}
			seen[k] = engine.Position{Partition: p, Offset: e.Offset}
			if i <= last[g] {
				t.Fatalf("partition %d: goroutine %d record %d after its record %d", p, g, i, last[g])
			}
			last[g] = i
			if want := int32((g + i) % int(n)); want != p {
				t.Fatalf("record %v in partition %d, appended to %d", k, p, want)
			}
		}
	}
	if total != appenders*perWriter {
		t.Fatalf("%d records in the log, appended %d", total, appenders*perWriter)
	}
	for g := range positions {
		for k, pos := range positions[g] {
			if seen[k] != pos {
				t.Fatalf("record %v: Append said %+v, Read found it at %+v", k, pos, seen[k])
			}
		}
	}
}

// Close, reopen: same partitions, ends and records; appends continue.
func (s *suite) testDurability(t *testing.T) {
	if !s.feat.Persistent {
		t.Skip("adapter is not persistent")
	}
	ctx := s.ctx(t)
	l, reopen := s.open(t)
	if reopen == nil {
		t.Fatal("Features.Persistent needs a factory that returns reopen")
	}
	n := l.Partitions()
	want := make([][]engine.Record, n)
	for call := 0; call < 5; call++ {
		var recs []engine.Record
		for p := int32(0); p < n; p += int32(call%2 + 1) {
			recs = append(recs, rec(p, fmt.Sprint(p), fmt.Sprintf("c%d", call)))
		}
		mustAppend(t, ctx, l, recs...)
		for _, r := range recs {
			want[r.Partition] = append(want[r.Partition], r)
		}
	}
	for round := 0; round < 2; round++ {
		if err := l.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		l = reopen()
		if got := l.Partitions(); got != n {
			t.Fatalf("reopened: Partitions() = %d, want %d", got, n)
		}
		for p := int32(0); p < n; p++ {
			if end := mustEnd(t, ctx, l, p); end != int64(len(want[p])) {
				t.Fatalf("reopened: End(%d) = %d, want %d", p, end, len(want[p]))
			}
			checkEntries(t, readAll(t, ctx, l, p, 0, int64(len(want[p]))), want[p])
		}
		r := rec(0, "after", fmt.Sprintf("reopen %d", round))
		if pos := mustAppend(t, ctx, l, r); pos[0].Offset != int64(len(want[0])) {
			t.Fatalf("append after reopen: offset %d, want %d", pos[0].Offset, len(want[0]))
		}
		want[0] = append(want[0], r)
	}
}

func (s *suite) testErrors(t *testing.T) {
	ctx := s.ctx(t)
	l, _ := s.open(t)
	n := l.Partitions()
	for _, p := range []int32{-1, n, n + 100} {
		_, err := l.Append(ctx, []engine.Record{rec(p, "k", "v")})
		expectErr(t, fmt.Sprintf("Append to partition %d", p), err, engine.ErrBadPartition)
		_, err = l.Read(ctx, p, 0, 1)
		expectErr(t, fmt.Sprintf("Read of partition %d", p), err, engine.ErrBadPartition)
		_, err = l.End(ctx, p)
		expectErr(t, fmt.Sprintf("End of partition %d", p), err, engine.ErrBadPartition)
	}
	_, err := l.Append(ctx, nil)
	expectErr(t, "Append(nil)", err, engine.ErrEmptyAppend)
	_, err = l.Append(ctx, []engine.Record{})
	expectErr(t, "Append(empty)", err, engine.ErrEmptyAppend)

	if s.feat.AtomicRejects {
		_, err = l.Append(ctx, []engine.Record{rec(0, "ok", "v"), rec(n, "bad", "v")})
		expectErr(t, "Append with one bad partition", err, engine.ErrBadPartition)
		if end := mustEnd(t, ctx, l, 0); end != 0 {
			t.Fatalf("rejected Append wrote %d records", end)
		}
	}
	// The log still works after refusals.
	if pos := mustAppend(t, ctx, l, rec(0, "ok", "v")); pos[0].Offset != 0 {
		t.Fatalf("first accepted record at offset %d", pos[0].Offset)
	}
}

func (s *suite) testRecordSize(t *testing.T) {
	max := s.feat.MaxRecordBytes
	if max == 0 {
		t.Skip("Features.MaxRecordBytes not set")
	}
	ctx := s.ctx(t)
	l, _ := s.open(t)
	key := []byte("size-key")
	if max < len(key) {
		key = key[:max]
	}
	fits := engine.Record{Partition: 0, Key: key, Value: bytes.Repeat([]byte{'x'}, max-len(key))}
	mustAppend(t, ctx, l, fits)

	big := engine.Record{Partition: 0, Key: key, Value: bytes.Repeat([]byte{'x'}, max-len(key)+1)}
	_, err := l.Append(ctx, []engine.Record{big})
	expectErr(t, fmt.Sprintf("Append of %d bytes (limit %d)", max+1, max), err, engine.ErrRecordTooLarge)
	if s.feat.AtomicRejects {
		_, err = l.Append(ctx, []engine.Record{rec(0, "small", "v"), big})
		expectErr(t, "Append with one oversized record", err, engine.ErrRecordTooLarge)
		if end := mustEnd(t, ctx, l, 0); end != 1 {
			t.Fatalf("End = %d after a rejected Append, want 1", end)
		}
	}
	checkEntries(t, readAll(t, ctx, l, 0, 0, 1), []engine.Record{fits})
}

// Append keeps no reference to the caller's slices; Read hands out slices
// the caller may change.
func (s *suite) testOwnership(t *testing.T) {
	ctx := s.ctx(t)
	l, _ := s.open(t)
	key, value := []byte("key-1"), []byte("value-1")
	mustAppend(t, ctx, l, engine.Record{Partition: 0, Key: key, Value: value})
	copy(key, "XXXXX")
	copy(value, "YYYYYYY")
	want := []engine.Record{rec(0, "key-1", "value-1")}

	es := readAll(t, ctx, l, 0, 0, 1)
	checkEntries(t, es, want)
	copy(es[0].Key, "ZZZZZ")
	copy(es[0].Value, "ZZZZZZZ")
	es2 := readAll(t, ctx, l, 0, 0, 1)
	checkEntries(t, es2, want)
	// Growing a returned slice must not overwrite its neighbour.
	_ = append(es2[0].Key, "!!!!!!!!"...)
	checkEntries(t, es2, want)
}

func (s *suite) testClose(t *testing.T) {
	ctx := s.ctx(t)
	l, _ := s.open(t)
	mustAppend(t, ctx, l, rec(0, "k", "v"))
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err := l.Append(ctx, []engine.Record{rec(0, "k", "v")})
	expectErr(t, "Append after Close", err, engine.ErrLogClosed)
	_, err = l.Read(ctx, 0, 0, 1)
	expectErr(t, "Read after Close", err, engine.ErrLogClosed)
	_, err = l.Read(ctx, 0, 1, 1)
	expectErr(t, "Read at end after Close", err, engine.ErrLogClosed)
	_, err = l.End(ctx, 0)
	expectErr(t, "End after Close", err, engine.ErrLogClosed)
}

// Reads waiting at the end when Close happens return ErrLogClosed.
func (s *suite) testCloseWakesRead(t *testing.T) {
	ctx := s.ctx(t)
	l, _ := s.open(t)
	mustAppend(t, ctx, l, rec(0, "k", "v"))
	waiting := []<-chan readResult{goRead(ctx, l, 0, 1, 1), goRead(ctx, l, 1, 0, 1)}
	for _, ch := range waiting {
		stillBlocked(t, ch, "Read at end")
	}
	closed := make(chan error, 1)
	go func() { closed <- l.Close() }()
	for _, ch := range waiting {
		r := s.await(t, ch, "Read at end during Close")
		expectErr(t, "Read at end during Close", r.err, engine.ErrLogClosed)
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(s.feat.Timeout):
		t.Fatalf("Close did not return after %v", s.feat.Timeout)
	}
}

// Appends racing with Close either succeed (and are then readable after a
// reopen) or fail with ErrLogClosed; none hangs.
func (s *suite) testCloseDuringAppends(t *testing.T) {
	ctx := s.ctx(t)
	l, reopen := s.open(t)
	const appenders = 4
	type acked struct {
		r   engine.Record
		pos engine.Position
	}
	results := make(chan []acked, appenders)
	errs := make(chan error, appenders)
	for g := 0; g < appenders; g++ {
		go func() {
			var mine []acked
			defer func() { results <- mine }()
			for i := 0; ; i++ {
				r := rec(int32(g%2), fmt.Sprint(g), fmt.Sprintf("%d/%d", g, i))
				pos, err := l.Append(ctx, []engine.Record{r})
				if err != nil {
					if !errors.Is(err, engine.ErrLogClosed) {
						errs <- fmt.Errorf("appender %d: Append racing Close: %w (want ErrLogClosed)", g, err)
					}
					return
				}
				mine = append(mine, acked{r, pos[0]})
			}
		}()
	}
	time.Sleep(30 * time.Millisecond)
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	var all []acked
	for g := 0; g < appenders; g++ {
		select {
		case mine := <-results:
			all = append(all, mine...)
		case <-time.After(s.feat.Timeout):
			t.Fatalf("an Append did not return within %v of Close", s.feat.Timeout)
		}
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if !s.feat.Persistent || reopen == nil {
		return
	}
	l = reopen()
	for _, a := range all {
		es, err := l.Read(ctx, a.pos.Partition, a.pos.Offset, 1)
		if err != nil {
			t.Fatalf("acknowledged record at %+v after reopen: %v", a.pos, err)
		}
		checkEntries(t, es[:1], []engine.Record{a.r})
	}
}

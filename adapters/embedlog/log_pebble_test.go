package embedlog_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/mdsync/mdsync/adapters/embedlog"
	"github.com/mdsync/mdsync/adapters/logtest"
	"github.com/mdsync/mdsync/engine"
)

const testMaxRecord = 64 << 10

// factory opens logs on a fresh temp dir; reopen opens the same dir again.
func factory(t testing.TB, partitions int32) (engine.Log, func() engine.Log) {
	opts := embedlog.Options{
		Dir:            t.TempDir(),
		Partitions:     partitions,
		MaxRecordBytes: testMaxRecord,
		Pebble:         &pebble.Options{Logger: quietLogger{}},
	}
	open := func() engine.Log {
		l, err := embedlog.Open(opts)
		if err != nil {
			t.Fatalf("embedlog.Open: %v", err)
		}
		return l
	}
	return open(), open
}

func TestConformance(t *testing.T) {
	logtest.Run(t, factory, logtest.Features{
		Persistent:     true,
		MaxRecordBytes: testMaxRecord,
		AtomicRejects:  true,
	})
}

// quietLogger drops Pebble's informational chatter from test output.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any)                   {}
func (quietLogger) Errorf(f string, a ...any)              { fmt.Fprintf(os.Stderr, "pebble: "+f+"\n", a...) }
func (quietLogger) Fatalf(f string, a ...any)              { panic(fmt.Sprintf(f, a...)) }
func (quietLogger) Eventf(context.Context, string, ...any) {}
func (quietLogger) IsTracingEnabled(context.Context) bool  { return false }

func TestPartitionCountIsPersisted(t *testing.T) {
	dir := t.TempDir()
	open := func(n int32) (*embedlog.Log, error) {
		return embedlog.Open(embedlog.Options{Dir: dir, Partitions: n, Pebble: &pebble.Options{Logger: quietLogger{}}})
	}
	l, err := open(0)
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Partitions(); got != embedlog.DefaultPartitions {
		t.Fatalf("new log with Partitions 0: %d partitions, want %d", got, embedlog.DefaultPartitions)
	}
	if _, err := l.Append(context.Background(), []engine.Record{{Partition: 7, Value: []byte("v")}}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := open(4); err == nil || !strings.Contains(err.Error(), "8 partitions") {
		t.Fatalf("reopen with 4 partitions: err = %v, want a partition count mismatch", err)
	}
	for _, n := range []int32{0, 8} {
		l, err := open(n)
		if err != nil {
			t.Fatalf("reopen with Partitions %d: %v", n, err)
		}
		if end, err := l.End(context.Background(), 7); err != nil || end != 1 {
			t.Fatalf("reopen with Partitions %d: End(7) = %d, %v; want 1", n, end, err)
		}
		l.Close()
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts embedlog.Options
	}{
		{"no dir", embedlog.Options{}},
		{"negative partitions", embedlog.Options{Dir: "d", Partitions: -1}},
		{"negative max record", embedlog.Options{Dir: "d", MaxRecordBytes: -1}},
		{"huge max record", embedlog.Options{Dir: "d", MaxRecordBytes: 2 << 30}},
		{"WAL disabled", embedlog.Options{Dir: "d", Pebble: &pebble.Options{DisableWAL: true}}},
		{"read only", embedlog.Options{Dir: "d", Pebble: &pebble.Options{ReadOnly: true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.FS = vfs.NewMem()
			if l, err := embedlog.Open(tc.opts); err == nil {
				l.Close()
				t.Fatal("Open accepted invalid options")
			}
		})
	}
	var o embedlog.Options
	o.EnsureDefaults()
	if o.MaxRecordBytes != embedlog.DefaultMaxRecordBytes || o.FS != vfs.Default || o.Partitions != 0 {
		t.Fatalf("EnsureDefaults: %+v", o)
	}
}

// An ack, or an entry a reader saw, taken before a crash.
type ackedRecord struct {
	pos   engine.Position
	value string
}

// TestCrashKeepsAcknowledged simulates power loss with pebble's crashable
// MemFS while appenders and tailing readers run: every record whose Append
// returned nil, and every record a Read returned, before the crash must be
// in the log recovered from the crash image, at the same position.
func TestCrashKeepsAcknowledged(t *testing.T) {
	for round, unsynced := range []int{0, 50, 0, 90} {
		t.Run(fmt.Sprintf("round=%d/unsynced=%d%%", round, unsynced), func(t *testing.T) {
			crashTest(t, int64(round), unsynced)
		})
	}
}

func crashTest(t *testing.T, seed int64, unsyncedPercent int) {
	const partitions = 4
	fs := vfs.NewCrashableMem()
	opts := embedlog.Options{Dir: "log", Partitions: partitions, FS: fs, Pebble: &pebble.Options{Logger: quietLogger{}}}
	l, err := embedlog.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu    sync.Mutex
		acked []ackedRecord // Appends that returned nil
		seen  []ackedRecord // entries Reads returned
		wg    sync.WaitGroup
	)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				var recs []engine.Record
				for k := 0; k <= i%3; k++ {
					recs = append(recs, engine.Record{
						Partition: int32((g + i + k) % partitions),
						Key:       []byte(fmt.Sprint(g)),
						Value:     []byte(fmt.Sprintf("%d/%d/%d", g, i, k)),
					})
				}
				pos, err := l.Append(ctx, recs)
				if err != nil {
					return // ctx cancelled or log closed: the crash has been taken
				}
				mu.Lock()
				for k, p := range pos {
					acked = append(acked, ackedRecord{p, string(recs[k].Value)})
				}
				mu.Unlock()
			}
		}()
	}
	for p := int32(0); p < partitions; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for from := int64(0); ; {
				es, err := l.Read(ctx, p, from, 50)
				if err != nil {
					return
				}
				mu.Lock()
				for _, e := range es {
					seen = append(seen, ackedRecord{engine.Position{Partition: p, Offset: e.Offset}, string(e.Value)})
				}
				mu.Unlock()
				from += int64(len(es))
			}
		}()
	}

	time.Sleep(150 * time.Millisecond)
	// Copy what was promised, then crash: everything in the copies happened
	// before the crash image was taken.
	mu.Lock()
	promised := append(append([]ackedRecord(nil), acked...), seen...)
	mu.Unlock()
	var crashed *vfs.MemFS
	if unsyncedPercent == 0 {
		crashed = fs.CrashClone(vfs.CrashCloneCfg{})
	} else {
		crashed = fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: unsyncedPercent, RNG: rand.New(rand.NewPCG(uint64(seed), 1))})
	}
	cancel()
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if len(acked) == 0 || len(seen) == 0 {
		t.Fatalf("nothing happened before the crash: %d acked, %d seen", len(acked), len(seen))
	}

	opts.FS = crashed
	r, err := embedlog.Open(opts)
	if err != nil {
		t.Fatalf("open after crash: %v", err)
	}
	defer r.Close()
	verifyPromised(t, r, promised)
	t.Logf("%d records promised (acked or read) before the crash, all recovered; %+v", len(promised), l.Stats())
}

// verifyPromised checks every promised record is in l at its position, and
// that the recovered log is readable end to end.
func verifyPromised(t *testing.T, l engine.Log, promised []ackedRecord) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stored := make(map[engine.Position]string)
	for p := int32(0); p < l.Partitions(); p++ {
		end, err := l.End(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		for from := int64(0); from < end; {
			es, err := l.Read(ctx, p, from, 1000)
			if err != nil {
				t.Fatalf("read %d/%d after crash: %v", p, from, err)
			}
			for _, e := range es {
				stored[engine.Position{Partition: p, Offset: e.Offset}] = string(e.Value)
			}
			from += int64(len(es))
		}
	}
	for _, a := range promised {
		got, ok := stored[a.pos]
		if !ok {
			t.Fatalf("record %q acknowledged at %+v is lost after the crash", a.value, a.pos)
		}
		if got != a.value {
			t.Fatalf("at %+v: %q after the crash, %q before", a.pos, got, a.value)
		}
	}
}

// TestSIGKILL runs appenders in a child process, kills it with SIGKILL
// mid-stream and checks every record the child reported as acknowledged.
func TestSIGKILL(t *testing.T) {
	if dir := os.Getenv("EMBEDLOG_SIGKILL_CHILD"); dir != "" {
		sigkillChild(dir)
		return
	}
	if testing.Short() {
		t.Skip("spawns a process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSIGKILL$")
	cmd.Env = append(os.Environ(), "EMBEDLOG_SIGKILL_CHILD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var promised []ackedRecord
	sc := bufio.NewScanner(out)
	for sc.Scan() && len(promised) < 2000 {
		var a ackedRecord
		if _, err := fmt.Sscanf(sc.Text(), "ack %d %d %s", &a.pos.Partition, &a.pos.Offset, &a.value); err != nil {
			continue // test framework output
		}
		promised = append(promised, a)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if len(promised) < 2000 {
		t.Fatalf("child acknowledged only %d records before exiting", len(promised))
	}
	l, err := embedlog.Open(embedlog.Options{Dir: filepath.Join(dir, "log"), Pebble: &pebble.Options{Logger: quietLogger{}}})
	if err != nil {
		t.Fatalf("open after SIGKILL: %v", err)
	}
	defer l.Close()
	verifyPromised(t, l, promised)
}

// sigkillChild appends forever, printing each acknowledged record, until
// the parent kills it.
func sigkillChild(dir string) {
	l, err := embedlog.Open(embedlog.Options{Dir: filepath.Join(dir, "log"), Partitions: 4, Pebble: &pebble.Options{Logger: quietLogger{}}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	var n atomic.Int64
	for g := 0; g < 8; g++ {
		go func() {
			for {
				i := n.Add(1)
				v := fmt.Sprintf("v%d", i)
				pos, err := l.Append(context.Background(), []engine.Record{{Partition: int32(i % 4), Value: []byte(v)}})
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(2)
				}
				mu.Lock()
				fmt.Fprintf(w, "ack %d %d %s\n", pos[0].Partition, pos[0].Offset, v)
				w.Flush()
				mu.Unlock()
			}
		}()
	}
	select {}
}

// A rejected Append writes nothing even when it races into the same group
// commit as accepted ones.
func TestRejectedAppendInGroupWritesNothing(t *testing.T) {
	l, _ := factory(t, 2)
	defer l.Close()
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			recs := []engine.Record{{Partition: 0, Value: []byte("ok")}}
			if g%2 == 1 {
				recs = append(recs, engine.Record{Partition: 1, Value: make([]byte, testMaxRecord+1)})
			}
			_, err := l.Append(ctx, recs)
			if (g%2 == 1) != errors.Is(err, engine.ErrRecordTooLarge) {
				t.Errorf("appender %d: %v", g, err)
			}
		}()
	}
	wg.Wait()
	for p, want := range []int64{8, 0} {
		if end, _ := l.End(ctx, int32(p)); end != want {
			t.Fatalf("End(%d) = %d, want %d", p, end, want)
		}
	}
}

func benchFactory(tb testing.TB, partitions int32) (engine.Log, func() engine.Log) {
	l, err := embedlog.Open(embedlog.Options{
		Dir:        tb.TempDir(),
		Partitions: partitions,
		Pebble:     &pebble.Options{Logger: quietLogger{}},
	})
	if err != nil {
		tb.Fatal(err)
	}
	// Records per fsync shows group commit at work; only Append measures it.
	if b, ok := tb.(*testing.B); ok && strings.Contains(b.Name(), "Append") {
		b.Cleanup(func() {
			if s := l.Stats(); s.Commits > 0 {
				b.ReportMetric(float64(s.Records)/float64(s.Commits), "records/commit")
			}
		})
	}
	return l, nil
}

func BenchmarkLog(b *testing.B) { logtest.Bench(b, benchFactory) }

// BenchmarkRawPebbleSyncBatch writes the same keys and bytes as
// logtest.Bench's Append benchmarks with plain Pebble Sync batches, one
// record per batch, and no log on top: the floor the log is measured against.
// With several writers Pebble's own commit pipeline shares fsyncs.
func BenchmarkRawPebbleSyncBatch(b *testing.B) {
	for _, writers := range []int{1, 16, 128} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			db, err := pebble.Open(b.TempDir(), &pebble.Options{Logger: quietLogger{}})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			value := make([]byte, 1+logtest.BenchRecordBytes-16)
			var next atomic.Int64
			var wg sync.WaitGroup
			b.SetBytes(logtest.BenchRecordBytes)
			b.ReportAllocs()
			b.ResetTimer()
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					key := make([]byte, 13)
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						key[0] = 'r'
						binary.BigEndian.PutUint32(key[1:], uint32(i%logtest.BenchPartitions))
						binary.BigEndian.PutUint64(key[5:], uint64(i))
						batch := db.NewBatch()
						_ = batch.Set(key, value, nil)
						if err := batch.Commit(pebble.Sync); err != nil {
							b.Error(err)
						}
						batch.Close()
					}
				}()
			}
			wg.Wait()
		})
	}
}

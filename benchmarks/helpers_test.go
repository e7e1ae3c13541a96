package benchmarks

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

const benchApp = "bench"

// quietLogger keeps Pebble's informational chatter out of benchmark output.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any)                   {}
func (quietLogger) Errorf(f string, a ...any)              { fmt.Fprintf(os.Stderr, "pebble: "+f+"\n", a...) }
func (quietLogger) Fatalf(f string, a ...any)              { panic(fmt.Sprintf(f, a...)) }
func (quietLogger) Eventf(context.Context, string, ...any) {}
func (quietLogger) IsTracingEnabled(context.Context) bool  { return false }

// loginOp is a login as a device submits it: realistic ids and a device
// name and extension like the SDKs send.
func loginOp(user string, seq int, platform int32) *pb.Event {
	id := fmt.Sprintf("dev-%s-%06d", user, seq)
	return &pb.Event{
		App: benchApp, ClientOpId: fmt.Sprintf("op-%s-%06d", user, seq),
		Kind:  pb.Kind_KIND_LOGIN,
		Actor: &pb.Actor{User: user, LoginId: id},
		Payload: &pb.Event_Login{Login: &pb.Login{
			Platform: platform, LoginId: id,
			DeviceName: "Pixel 8 Pro / Android 15", Extension: `{"appVersion":"4.9.1","locale":"en-US"}`,
		}},
	}
}

// kickOp is a device of user kicking another of its devices.
func kickOp(user string, seq int, by, target string) *pb.Event {
	return &pb.Event{
		App: benchApp, ClientOpId: fmt.Sprintf("op-%s-%06d", user, seq),
		Kind:    pb.Kind_KIND_KICK_DEVICE,
		Actor:   &pb.Actor{User: user, LoginId: by},
		Payload: &pb.Event_KickDevice{KickDevice: &pb.KickDevice{LoginId: target}},
	}
}

// envelope fills the fields engine.Submit assigns before appending, so
// benchmarks that bypass Submit write byte-for-byte what it would.
func envelope(op *pb.Event, now int64) *pb.Event {
	stream := engine.StreamKeyFor(op)
	op.SchemaVersion = engine.SchemaVersion
	op.StreamKey = stream
	op.EventId = engine.EventID(stream, op.Actor.User, op.ClientOpId)
	op.TimeUnixMs = now
	return op
}

// sessionEvents returns n encoded session events spread over users, in log
// order: each user logs in on rotating platforms (so the per-platform limit
// evicts), and every fourth operation of a user kicks its previous device.
func sessionEvents(tb testing.TB, n, users int) []*pb.Event {
	tb.Helper()
	out := make([]*pb.Event, 0, n)
	for i := 0; i < n; i++ {
		u, seq := i%users, i/users
		user := fmt.Sprintf("user-%07d", u)
		var op *pb.Event
		if seq%4 == 3 {
			prev := fmt.Sprintf("dev-%s-%06d", user, seq-1)
			op = kickOp(user, seq, fmt.Sprintf("dev-%s-%06d", user, seq-2), prev)
		} else {
			op = loginOp(user, seq, int32(1+seq%2))
		}
		if err := engine.Validate(op); err != nil {
			tb.Fatalf("generated op %d is invalid: %v", i, err)
		}
		out = append(out, envelope(op, 1_700_000_000_000+int64(i)))
	}
	return out
}

// encodeAll encodes evs as log records, partitioned as the engine would.
func encodeAll(tb testing.TB, evs []*pb.Event, partitions int32) []engine.Record {
	tb.Helper()
	recs := make([]engine.Record, len(evs))
	for i, ev := range evs {
		v, err := engine.Encode(ev)
		if err != nil {
			tb.Fatal(err)
		}
		k := []byte(ev.StreamKey)
		recs[i] = engine.Record{Partition: engine.PartitionFor(k, partitions), Key: k, Value: v}
	}
	return recs
}

func openRawPebble(tb testing.TB, dir string, fs vfs.FS) *pebble.DB {
	tb.Helper()
	if fs == nil {
		fs = vfs.Default
	}
	db, err := pebble.Open(dir, &pebble.Options{FS: fs, Logger: quietLogger{}})
	if err != nil {
		tb.Fatal(err)
	}
	return db
}

// runConcurrent calls op(i) for i in [0, n) from workers goroutines taking
// indexes from a shared counter, and returns the wall time and each call's
// latency (indexed by i).
func runConcurrent(workers, n int, op func(i int) error) (time.Duration, []time.Duration, error) {
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		first atomic.Pointer[error]
	)
	lat := make([]time.Duration, n)
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || first.Load() != nil {
					return
				}
				t := time.Now()
				if err := op(i); err != nil {
					first.CompareAndSwap(nil, &err)
					return
				}
				lat[i] = time.Since(t)
			}
		}()
	}
	wg.Wait()
	if e := first.Load(); e != nil {
		return 0, nil, *e
	}
	return time.Since(start), lat, nil
}

// percentile returns the q-quantile (0..1) of ds by nearest rank; ds is
// sorted in place. A sorted slice is exact, and the samples are few enough.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(q*float64(len(ds))+0.5) - 1
	return ds[max(0, min(i, len(ds)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// countingFS counts the bytes Pebble writes, split into WAL files (.log)
// and everything else (flushed and compacted tables, manifests), so a
// baseline can be sized to write what the code under test wrote.
type countingFS struct {
	vfs.FS
	wal, other *atomic.Int64
}

func newCountingFS() countingFS {
	return countingFS{FS: vfs.Default, wal: new(atomic.Int64), other: new(atomic.Int64)}
}

func (c countingFS) wrap(name string, f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	n := c.other
	if strings.HasSuffix(name, ".log") {
		n = c.wal
	}
	return countingFile{File: f, n: n}, nil
}

func (c countingFS) Create(name string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := c.FS.Create(name, cat)
	return c.wrap(name, f, err)
}

func (c countingFS) OpenReadWrite(name string, cat vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := c.FS.OpenReadWrite(name, cat, opts...)
	return c.wrap(name, f, err)
}

func (c countingFS) ReuseForWrite(oldname, newname string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := c.FS.ReuseForWrite(oldname, newname, cat)
	return c.wrap(newname, f, err)
}

type countingFile struct {
	vfs.File
	n *atomic.Int64
}

func (f countingFile) Write(p []byte) (int, error) {
	n, err := f.File.Write(p)
	f.n.Add(int64(n))
	return n, err
}

func (f countingFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := f.File.WriteAt(p, off)
	f.n.Add(int64(n))
	return n, err
}

package embedlog_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/mdsync/mdsync/adapters/embedlog"
	"github.com/mdsync/mdsync/engine"
)

// gatedFS holds every sync of a WAL file while the test holds gate, and
// fails them while fail is set: the fsync an Append waits for, under the
// test's control.
type gatedFS struct {
	vfs.FS
	gate    sync.RWMutex
	waiting atomic.Int32 // syncs held at the gate
	fail    atomic.Pointer[error]
}

func (fs *gatedFS) wrap(name string, f vfs.File, err error) (vfs.File, error) {
	if err != nil || !strings.HasSuffix(name, ".log") {
		return f, err
	}
	return gatedFile{File: f, fs: fs}, nil
}

func (fs *gatedFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, c)
	return fs.wrap(name, f, err)
}

func (fs *gatedFS) ReuseForWrite(old, name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(old, name, c)
	return fs.wrap(name, f, err)
}

func (fs *gatedFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, o ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.OpenReadWrite(name, c, o...)
	return fs.wrap(name, f, err)
}

type gatedFile struct {
	vfs.File
	fs *gatedFS
}

func (f gatedFile) pass() error {
	f.fs.waiting.Add(1)
	f.fs.gate.RLock()
	f.fs.gate.RUnlock()
	f.fs.waiting.Add(-1)
	if e := f.fs.fail.Load(); e != nil {
		return *e
	}
	return nil
}

func (f gatedFile) Sync() error {
	if err := f.pass(); err != nil {
		return err
	}
	return f.File.Sync()
}

func (f gatedFile) SyncData() error {
	if err := f.pass(); err != nil {
		return err
	}
	return f.File.SyncData()
}

func (f gatedFile) SyncTo(n int64) (bool, error) {
	if err := f.pass(); err != nil {
		return false, err
	}
	return f.File.SyncTo(n)
}

type appendResult struct {
	pos []engine.Position
	err error
}

func goAppend(l engine.Log, r engine.Record) <-chan appendResult {
	ch := make(chan appendResult, 1)
	go func() {
		pos, err := l.Append(context.Background(), []engine.Record{r})
		ch <- appendResult{pos, err}
	}()
	return ch
}

func openGated(t *testing.T) (*embedlog.Log, *gatedFS) {
	t.Helper()
	fs := &gatedFS{FS: vfs.NewMem()}
	l, err := embedlog.Open(embedlog.Options{Dir: "log", Partitions: 2, FS: fs, Pebble: &pebble.Options{Logger: quietLogger{}}})
	if err != nil {
		t.Fatal(err)
	}
	return l, fs
}

// waitHeld waits until a WAL sync is held at the gate.
func waitHeld(t *testing.T, fs *gatedFS) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); fs.waiting.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no WAL sync reached the gate")
		}
	}
}

// nothingVisible checks that partition p still ends at end for End and Read.
func nothingVisible(t *testing.T, l engine.Log, p int32, end int64) {
	t.Helper()
	if got, err := l.End(context.Background(), p); err != nil || got != end {
		t.Fatalf("End(%d) = %d, %v while the fsync is held; want %d", p, got, err, end)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if es, err := l.Read(ctx, p, end, 10); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Read(%d, %d) = %d entries, %v while the fsync is held; want to wait", p, end, len(es), err)
	}
}

// Appends are handed to Pebble, which shows them to its own iterators, before
// their fsync: no Append returns and no reader sees a record until an fsync
// covering it returned, including an Append that arrives while another's
// fsync is in flight (it is written then, and synced by the next fsync).
func TestNothingVisibleBeforeFsync(t *testing.T) {
	l, fs := openGated(t)
	defer l.Close()
	ctx := context.Background()
	if _, err := l.Append(ctx, []engine.Record{{Partition: 0, Value: []byte("a")}}); err != nil {
		t.Fatal(err)
	}

	fs.gate.Lock()
	var release sync.Once
	open := func() { release.Do(fs.gate.Unlock) }
	defer open() // before Close, which waits for the held Appends
	first := goAppend(l, engine.Record{Partition: 0, Value: []byte("b")})
	waitHeld(t, fs)
	second := goAppend(l, engine.Record{Partition: 1, Value: []byte("c")})
	nothingVisible(t, l, 0, 1)
	nothingVisible(t, l, 1, 0)
	select {
	case r := <-first:
		t.Fatalf("Append returned %+v before its fsync", r)
	case r := <-second:
		t.Fatalf("Append made during another's fsync returned %+v before its own", r)
	default:
	}
	open()

	for _, w := range []struct {
		ch    <-chan appendResult
		pos   engine.Position
		value string
	}{{first, engine.Position{Partition: 0, Offset: 1}, "b"}, {second, engine.Position{Partition: 1, Offset: 0}, "c"}} {
		r := <-w.ch
		if r.err != nil || len(r.pos) != 1 || r.pos[0] != w.pos {
			t.Fatalf("Append of %q = %+v, want position %+v", w.value, r, w.pos)
		}
		es, err := l.Read(ctx, w.pos.Partition, w.pos.Offset, 1)
		if err != nil || len(es) != 1 || string(es[0].Value) != w.value {
			t.Fatalf("Read at %+v = %v, %v; want %q", w.pos, es, err, w.value)
		}
	}
}

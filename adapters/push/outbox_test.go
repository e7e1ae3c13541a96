package push

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

func entry(i int) Entry {
	return Entry{App: "app", User: fmt.Sprintf("u%d", i%3), EntryID: fmt.Sprintf("m%03d", i), Seq: uint64(i + 1),
		From: "alice", ChatType: "CHAT_TYPE_USER", ConversationID: "alice", TimeUnixMs: time.Now().UnixMilli()}
}

func openMemOutbox(t *testing.T, fs vfs.FS, opts OutboxOptions) *Outbox {
	t.Helper()
	opts.Dir, opts.FS = "outbox", fs
	ob, err := OpenOutbox(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ob.Close() })
	return ob
}

func pendingKeys(t *testing.T, ob *Outbox) []string {
	t.Helper()
	xs, err := ob.load(0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var ks []string
	for _, x := range xs {
		ks = append(ks, x.e.Key())
	}
	return ks
}

func TestEnqueueIsIdempotentPerKey(t *testing.T) {
	ob := openMemOutbox(t, vfs.NewMem(), OutboxOptions{})
	a, b := entry(1), entry(2)
	if err := ob.Enqueue(a, a, b); err != nil {
		t.Fatal(err)
	}
	if err := ob.Enqueue(b, a); err != nil { // re-applied events
		t.Fatal(err)
	}
	if got := pendingKeys(t, ob); fmt.Sprint(got) != fmt.Sprint([]string{a.Key(), b.Key()}) || ob.Depth() != 2 {
		t.Fatalf("pending %v, depth %d", got, ob.Depth())
	}
	xs, _ := ob.load(0, 10)
	if err := ob.ack(xs[0]); err != nil {
		t.Fatal(err)
	}
	if err := ob.bury(xs[1], 400, "refused"); err != nil {
		t.Fatal(err)
	}
	// Delivered and dead keys are remembered: re-enqueueing does nothing.
	if err := ob.Enqueue(a, b); err != nil {
		t.Fatal(err)
	}
	if ob.Depth() != 0 || len(pendingKeys(t, ob)) != 0 {
		t.Fatalf("re-enqueue after delivery: depth %d, pending %v", ob.Depth(), pendingKeys(t, ob))
	}
	if err := ob.Enqueue(); err != nil {
		t.Fatal(err)
	}
}

func TestEnqueueRejectsIncompleteEntries(t *testing.T) {
	ob := openMemOutbox(t, vfs.NewMem(), OutboxOptions{})
	for _, e := range []Entry{{User: "u", EntryID: "m", TimeUnixMs: 1}, {App: "a", EntryID: "m", TimeUnixMs: 1},
		{App: "a", User: "u", TimeUnixMs: 1}, {App: "a", User: "u", EntryID: "m"}} {
		if err := ob.Enqueue(entry(1), e); err == nil {
			t.Errorf("%+v accepted", e)
		}
	}
	if ob.Depth() != 0 {
		t.Error("a rejected call wrote part of its entries")
	}
}

func TestEnqueueDropsStaleAndForgetsOldKeys(t *testing.T) {
	ob := openMemOutbox(t, vfs.NewMem(), OutboxOptions{MaxAge: time.Hour})
	now := time.Now()
	ob.now = func() time.Time { return now }
	old := entry(1)
	old.TimeUnixMs = now.Add(-2 * time.Hour).UnixMilli()
	fresh := entry(2)
	if err := ob.Enqueue(old, fresh); err != nil {
		t.Fatal(err)
	}
	if got := pendingKeys(t, ob); len(got) != 1 || got[0] != fresh.Key() {
		t.Fatalf("pending %v, want only the fresh entry", got)
	}
	xs, _ := ob.load(0, 10)
	if err := ob.ack(xs[0]); err != nil {
		t.Fatal(err)
	}
	if n, err := ob.prune(100); err != nil || n != 0 {
		t.Fatalf("prune within MaxAge: %d, %v", n, err)
	}
	now = now.Add(time.Hour + time.Second)
	if n, err := ob.prune(100); err != nil || n != 1 {
		t.Fatalf("prune after MaxAge: %d, %v", n, err)
	}
	// The key is forgotten, but the entry is now older than MaxAge too, so
	// it still cannot be pushed again.
	if err := ob.Enqueue(fresh); err != nil || ob.Depth() != 0 {
		t.Fatalf("re-enqueue after prune: depth %d, %v", ob.Depth(), err)
	}
}

func TestEnqueuePreview(t *testing.T) {
	e := entry(1)
	e.body = []byte("a secret message")
	for _, c := range []struct {
		n    int
		want string
	}{{0, ""}, {8, "a secret"}} {
		ob := openMemOutbox(t, vfs.NewMem(), OutboxOptions{PreviewBytes: c.n})
		if err := ob.Enqueue(e); err != nil {
			t.Fatal(err)
		}
		xs, _ := ob.load(0, 1)
		if xs[0].e.Preview != c.want {
			t.Errorf("PreviewBytes %d: preview %q, want %q", c.n, xs[0].e.Preview, c.want)
		}
	}
}

// TestEnqueueDurableOnReturn simulates power loss right after Enqueue
// returns: only fsynced data survives in the crash clone.
func TestEnqueueDurableOnReturn(t *testing.T) {
	fs := vfs.NewCrashableMem()
	ob := openMemOutbox(t, fs, OutboxOptions{})
	var want []string
	for i := range 5 {
		if err := ob.Enqueue(entry(i)); err != nil {
			t.Fatal(err)
		}
		want = append(want, entry(i).Key())
	}
	xs, _ := ob.load(0, 10)
	if err := ob.ack(xs[0]); err != nil { // not fsynced: may be lost, never wrongly kept
		t.Fatal(err)
	}
	crashed := fs.CrashClone(vfs.CrashCloneCfg{})
	ob2 := openMemOutbox(t, crashed, OutboxOptions{})
	got := pendingKeys(t, ob2)
	if len(got) < 4 || len(got) > 5 || fmt.Sprint(got) != fmt.Sprint(want[5-len(got):]) {
		t.Fatalf("after crash: pending %v, want %v (the first maybe acked)", got, want)
	}
	if ob2.Depth() != len(got) {
		t.Errorf("depth %d, pending %d", ob2.Depth(), len(got))
	}
	// New positions continue after the survivors.
	if err := ob2.Enqueue(entry(9)); err != nil {
		t.Fatal(err)
	}
	if got := pendingKeys(t, ob2); got[len(got)-1] != entry(9).Key() {
		t.Errorf("new entry not last: %v", got)
	}
}

func TestOutboxClosed(t *testing.T) {
	ob := openMemOutbox(t, vfs.NewMem(), OutboxOptions{})
	if err := ob.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ob.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := ob.Enqueue(entry(1)); !errors.Is(err, ErrClosed) {
		t.Errorf("Enqueue after Close: %v", err)
	}
	if _, err := ob.DeadLetters(0); !errors.Is(err, ErrClosed) {
		t.Errorf("DeadLetters after Close: %v", err)
	}
	if _, err := ob.load(0, 1); !errors.Is(err, ErrClosed) {
		t.Errorf("load after Close: %v", err)
	}
}

func TestOutboxOptionsValidate(t *testing.T) {
	for _, o := range []OutboxOptions{{PreviewBytes: -1}, {MaxAge: -time.Second}} {
		if _, err := OpenOutbox(OutboxOptions{Dir: "x", FS: vfs.NewMem(), PreviewBytes: o.PreviewBytes, MaxAge: o.MaxAge}); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

package embedlog_test

import (
	"context"
	"errors"
	"testing"

	"github.com/mdsync/mdsync/adapters/embedlog"
	"github.com/mdsync/mdsync/engine"
)

// TestReadOnly: a log opened read-only reads what was written, keeps the
// ends it found, refuses appends, and is never created.
func TestReadOnly(t *testing.T) {
	dir := t.TempDir()
	if _, err := embedlog.Open(embedlog.Options{Dir: dir, ReadOnly: true}); err == nil {
		t.Fatal("a read-only open created a log")
	}
	ctx := context.Background()
	w, err := embedlog.Open(embedlog.Options{Dir: dir, Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Append(ctx, []engine.Record{{Partition: 1, Key: []byte("k"), Value: []byte("v1")}, {Partition: 1, Value: []byte("v2")}}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := embedlog.Open(embedlog.Options{Dir: dir, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Partitions() != 2 {
		t.Errorf("partitions %d", r.Partitions())
	}
	if end, err := r.End(ctx, 1); err != nil || end != 2 {
		t.Errorf("end %d %v", end, err)
	}
	ents, err := r.Read(ctx, 1, 0, 10)
	if err != nil || len(ents) != 2 || string(ents[0].Key) != "k" || string(ents[1].Value) != "v2" {
		t.Fatalf("read %v %v", ents, err)
	}
	if _, err := r.Append(ctx, []engine.Record{{Partition: 0, Value: []byte("x")}}); !errors.Is(err, embedlog.ErrReadOnly) {
		t.Errorf("append: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(ctx, 1, 0, 1); !errors.Is(err, engine.ErrLogClosed) {
		t.Errorf("read after close: %v", err)
	}
}

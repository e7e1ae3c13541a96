package logsource

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/mdsync/mdsync/adapters/embedlog"
	"github.com/mdsync/mdsync/engine"
)

// TestSnapshotOfAWritingLog: while a holder appends without pause (with a
// small memtable, so Pebble flushes and compacts under the snapshots), every
// snapshot opens, holds a dense prefix of what was written (offsets 0..end,
// each record's value as written: the first snapshot reads all of it, the
// next ones from a little before the previous end), and ends never go
// backwards; the
// holder's appends all succeed.
func TestSnapshotOfAWritingLog(t *testing.T) {
	data := t.TempDir()
	dir := filepath.Join(data, "log")
	lg, err := embedlog.Open(embedlog.Options{Dir: dir, Partitions: 2, Pebble: &pebble.Options{MemTableSize: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	defer lg.Close()
	ctx := context.Background()
	value := func(p int32, off int64) []byte {
		v := bytes.Repeat([]byte{byte(off)}, 16<<10)
		binary.BigEndian.PutUint64(v, uint64(off))
		v[8] = byte(p)
		return v
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var appendErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		next := []int64{0, 0}
		for {
			select {
			case <-stop:
				return
			default:
			}
			recs := make([]engine.Record, 0, 16)
			for i := 0; i < 16; i++ {
				p := int32(i % 2)
				recs = append(recs, engine.Record{Partition: p, Key: []byte("k"), Value: value(p, next[p])})
				next[p]++
			}
			if _, err := lg.Append(ctx, recs); err != nil {
				appendErr = err
				return
			}
		}
	}()
	src := Source{Data: data, TempDir: t.TempDir()}
	last := []int64{0, 0}
	for i := 0; i < 30; i++ {
		snap, err := src.Open(ctx)
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("snapshot %d: %v", i, err)
		}
		for p := int32(0); p < 2; p++ {
			end, err := snap.End(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			if end < last[p] {
				t.Errorf("snapshot %d: partition %d ends at %d, an earlier one at %d", i, p, end, last[p])
			}
			// What the previous snapshot read is checked again from a
			// little before its end: the prefix is dense and unchanged.
			from := max(0, last[p]-64)
			last[p] = end
			for off := from; off < end; {
				ents, err := snap.Read(ctx, p, off, 500)
				if err != nil {
					t.Fatalf("snapshot %d: read %d/%d of %d: %v", i, p, off, end, err)
				}
				for _, e := range ents {
					if e.Offset != off || !bytes.Equal(e.Value, value(p, off)) {
						t.Fatalf("snapshot %d: record %d/%d is not what was written", i, p, off)
					}
					off++
				}
			}
		}
		if _, err := snap.Append(ctx, []engine.Record{{Partition: 0, Value: []byte("x")}}); !errors.Is(err, embedlog.ErrReadOnly) {
			t.Errorf("append to a snapshot: %v", err)
		}
		if err := snap.Close(); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if appendErr != nil {
		t.Fatalf("the holder's append failed: %v", appendErr)
	}
	if last[0] == 0 {
		t.Fatal("no snapshot saw a record")
	}
	// The point of the test: Pebble flushed (and so removed write-ahead
	// logs) while snapshots were taken.
	if ssts, _ := filepath.Glob(filepath.Join(dir, "*.sst")); len(ssts) < 2 {
		t.Fatalf("%d table files: the holder never flushed", len(ssts))
	}
	t.Logf("last snapshot ends %v; the holder wrote through %d commits", last, lg.Stats().Commits)
}

// TestOpenRefusesWhatIsNotThere: no log, no topic partitions out of range.
func TestOpenRefusesWhatIsNotThere(t *testing.T) {
	ctx := context.Background()
	if _, err := (Source{Data: t.TempDir()}).Open(ctx); engine.CodeOf(err) != engine.CodeNotFound {
		t.Errorf("empty data dir: %v", err)
	}
	if _, err := (Source{Kafka: "127.0.0.1:1", Topic: "t", Partitions: 5000}).Open(ctx); engine.CodeOf(err) != engine.CodeInvalidArgument {
		t.Errorf("5000 partitions: %v", err)
	}
}

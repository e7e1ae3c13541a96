package embedlog_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/mdsync/mdsync/engine"
)

// A read answered from the in-memory tail returns what Pebble holds: while
// appends go on, followers at the end and readers from offset 0 (past the
// tail's bounds, so from Pebble) read every record, and a reopened log,
// which has no tail, reads the same; the entries a read returns are the
// caller's (changing them changes no later read).
func TestTailReadsWhatPebbleHolds(t *testing.T) {
	const parts, appends = 3, 1000
	l, reopen := factory(t, parts)
	ctx := context.Background()
	want := make([][][]byte, parts)
	var mu sync.Mutex
	read := func(lg engine.Log, p int32, from int64, max int) []engine.Entry {
		t.Helper()
		es, err := lg.Read(ctx, p, from, max)
		if err != nil {
			t.Errorf("Read(%d, %d): %v", p, from, err)
		}
		return es
	}
	check := func(p int32, es []engine.Entry, what string) {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range es {
			if e.Partition != p || e.Offset >= int64(len(want[p])) || !bytes.Equal(e.Value, want[p][e.Offset]) ||
				!bytes.Equal(e.Key, []byte(fmt.Sprint("k", p))) {
				t.Errorf("%s: partition %d offset %d: %q, want %q", what, p, e.Offset, e.Value, want[p][e.Offset])
				return
			}
		}
	}
	var wg sync.WaitGroup
	for p := range int32(parts) {
		wg.Add(1)
		go func() { // a follower at the end, scribbling on what it read
			defer wg.Done()
			var from int64
			for from < appends*2 {
				es := read(l, p, from, 7)
				check(p, es, "follower")
				for _, e := range es {
					e.Value[0] ^= 0xff
				}
				from += int64(len(es))
			}
		}()
	}
	for i := range appends {
		var recs []engine.Record
		for p := range int32(parts) {
			for j := range 2 {
				recs = append(recs, engine.Record{Partition: p, Key: []byte(fmt.Sprint("k", p)),
					Value: bytes.Repeat([]byte(fmt.Sprintf("v%d.%d.%d|", p, i, j)), 1+i%800)})
			}
		}
		mu.Lock()
		for _, r := range recs {
			want[r.Partition] = append(want[r.Partition], bytes.Clone(r.Value))
		}
		mu.Unlock()
		if _, err := l.Append(ctx, recs); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	all := func(lg engine.Log, what string) {
		for p := range int32(parts) {
			for from := int64(0); from < appends*2; {
				es := read(lg, p, from, 500)
				check(p, es, what)
				from += int64(len(es))
			}
		}
	}
	all(l, "from 0")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = reopen()
	defer l.Close()
	all(l, "reopened")
}

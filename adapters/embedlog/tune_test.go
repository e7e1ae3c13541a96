package embedlog

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/mdsync/mdsync/engine"
)

type tuneQuietLogger struct{}

func (tuneQuietLogger) Infof(string, ...interface{})  {}
func (tuneQuietLogger) Errorf(string, ...interface{}) {}
func (tuneQuietLogger) Fatalf(format string, args ...interface{}) {
	panic(fmt.Sprintf(format, args...))
}

func TestPartitionSpans(t *testing.T) {
	for _, tc := range []struct {
		name       string
		start, end []byte
	}{
		{"meta key", metaPartitionsKey, []byte{recordPrefix}},
		{"empty key", nil, []byte{recordPrefix}},
		{"first record of partition 0", recordKey(nil, 0, 0), recordKey(nil, 1, 0)[:5]},
		{"a record of partition 3", recordKey(nil, 3, 12345), recordKey(nil, 4, 0)[:5]},
		{"last partition", recordKey(nil, 1<<31-1, 7), []byte{recordPrefix, 0x80, 0, 0, 0}},
		{"past the records", []byte{recordPrefix + 1}, nil},
		{"a short record key", []byte{recordPrefix, 0}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			policy, end, err := partitionSpans(tc.start)
			if err != nil || policy != (pebble.SpanPolicy{}) {
				t.Fatalf("partitionSpans(%x) = %+v, %v; want the default policy", tc.start, policy, err)
			}
			if !bytes.Equal(end, tc.end) {
				t.Fatalf("partitionSpans(%x) ends at %x, want %x", tc.start, end, tc.end)
			}
			// A span must end after its start, or Pebble would cut a table
			// before its first key.
			if end != nil && bytes.Compare(end, tc.start) <= 0 {
				t.Fatalf("span of %x ends at %x, not after it", tc.start, end)
			}
		})
	}
}

// TestTablesHoldOnePartition appends to several partitions through enough
// flushes and compactions to fill several levels, then checks that every
// table Pebble wrote holds the records of one partition only (what lets
// compactions move the log's tables instead of rewriting them), and that
// every record reads back, after a reopen too.
func TestTablesHoldOnePartition(t *testing.T) {
	const (
		parts   = 4
		groups  = 600
		perCall = 16
	)
	fs := vfs.NewMem()
	// Small memtables and files make many flushes and compactions in a
	// short test; the span policy comes from tunePebble.
	open := func() *Log {
		po := &pebble.Options{Logger: tuneQuietLogger{}, MemTableSize: 64 << 10, L0CompactionFileThreshold: 8}
		po.TargetFileSizes[0] = 16 << 10
		po.LBaseMaxBytes = 256 << 10
		l, err := Open(Options{Dir: "log", FS: fs, Partitions: parts, Pebble: po})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	l := open()
	ctx := context.Background()
	val := bytes.Repeat([]byte("protobuf-ish value "), 8)
	for g := 0; g < groups; g++ {
		recs := make([]engine.Record, perCall)
		for i := range recs {
			recs[i] = engine.Record{Partition: int32((g*perCall + i) % parts), Key: []byte(fmt.Sprint("k", g, i)), Value: val}
		}
		if _, err := l.Append(ctx, recs); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.db.Flush(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); l.db.Metrics().Compact.NumInProgress > 0; {
		if time.Now().After(deadline) {
			t.Fatal("compactions did not settle")
		}
		time.Sleep(10 * time.Millisecond)
	}
	m := l.db.Metrics()
	if m.Flush.Count < 10 || m.Compact.Count < 1 {
		t.Fatalf("%d flushes and %d compactions: the test did not exercise the LSM", m.Flush.Count, m.Compact.Count)
	}
	levels, err := l.db.SSTables()
	if err != nil {
		t.Fatal(err)
	}
	var tables int
	for lvl, ts := range levels {
		for _, tab := range ts {
			tables++
			lo, hi := tab.Smallest.UserKey, tab.Largest.UserKey
			if len(lo) != recordKeyLen || len(hi) != recordKeyLen {
				continue // the meta key's table
			}
			if !bytes.Equal(lo[:5], hi[:5]) {
				t.Errorf("L%d table %s spans partitions %d..%d", lvl, tab.FileNum,
					binary.BigEndian.Uint32(lo[1:5]), binary.BigEndian.Uint32(hi[1:5]))
			}
		}
	}
	if tables < 2*parts {
		t.Fatalf("%d tables: the test did not exercise the LSM", tables)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = open()
	defer l.Close()
	for p := int32(0); p < parts; p++ {
		want := int64(groups * perCall / parts)
		es, err := l.Read(ctx, p, 0, int(want)+1)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(es)) != want {
			t.Fatalf("partition %d: read %d records, want %d", p, len(es), want)
		}
	}
}

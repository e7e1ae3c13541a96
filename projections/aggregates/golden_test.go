package aggregates_test

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/projections/aggregates"
	"github.com/mdsync/mdsync/projections/storetest"
)

// The counts of a fixed history are pinned (recorded before aggregates
// became a handler of the projector's runner): the runner may change how
// they are computed, not what they are. The hashes were re-recorded when
// reasons and chat types took the protocol's spelling (REASON_KICKED,
// CHAT_TYPE_USER); the same counts spelled the old way hash to the first
// recording (85ccfe38…, 848bdfe1…).
func TestCountsGolden(t *testing.T) {
	for _, c := range []struct {
		parts int32
		n     int
		seed  uint64
		want  string
	}{
		{3, 20_000, 1, "ccb8b2dd89499903e556ccd3130306f6f7ed5dce03155f00526cb2df7edaceb2"},
		{4, 20_000, 3, "9c3bb91502215df301b14af5e0b8369bfc4e9e6de5aec7aaff8f104fb64c8bcf"},
	} {
		a, err := aggregates.Open(aggregates.Options{Dir: "agg", FS: vfs.NewMem(), Partitions: c.parts})
		if err != nil {
			t.Fatal(err)
		}
		for p, es := range storetest.History(c.parts, c.n, c.seed) {
			for i := 0; i < len(es); i += 300 {
				if err := a.Apply(int32(p), es[i:min(i+300, len(es))]); err != nil {
					t.Fatal(err)
				}
			}
		}
		counts, err := a.App("app", 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		a.Close()
		b, err := json.Marshal(counts)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		if got := hex.EncodeToString(sum[:]); got != c.want {
			t.Errorf("History(%d, %d, %d): counts %s hash to %s, want %s", c.parts, c.n, c.seed, b, got, c.want)
		}
	}
}

// A database written by the projector this package had before the runner
// (no layout mark) is emptied on Open and rebuilt from offset 0: its
// counters would otherwise be counted twice from a checkpoint of another
// key layout.
func TestOpenEmptiesEarlierLayout(t *testing.T) {
	fs := vfs.NewMem()
	db, err := pebble.Open("agg", &pebble.Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string][]byte{
		"mpartitions":                    {0, 0, 0, 1},
		"c\x00\x00\x00\x00":              {0x08, 0x64}, // the old checkpoint key
		"n\x00\x00\x00\x00app\x00logins": binary.BigEndian.AppendUint64(nil, 5),
	} {
		if err := db.Set([]byte(k), v, pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	a, err := aggregates.Open(aggregates.Options{Dir: "agg", FS: fs, Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if cp := a.Checkpoint(0); cp.NextOffset != 0 {
		t.Fatalf("checkpoint %v after opening an earlier layout, want offset 0", cp)
	}
	c, err := a.App("app", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if c.Logins != 0 {
		t.Fatalf("logins %d from the earlier layout survived", c.Logins)
	}
}

package aggregates_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"testing"

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

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
// they are computed, not what they are.
func TestCountsGolden(t *testing.T) {
	for _, c := range []struct {
		parts int32
		n     int
		seed  uint64
		want  string
	}{
		{3, 20_000, 1, "85ccfe38e323399eb63debbc69f4bf7dd07cd21a6ddf24bf15e51f03d908a2ae"},
		{4, 20_000, 3, "848bdfe126e3b739e53069926b8403be5cdd0c59ce1d2ca72f8a33a6f397e269"},
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

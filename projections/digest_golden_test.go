package projections

import (
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/projections/storetest"
)

// The digest of a fixed history is pinned: a change to how the projector
// applies the log (its runner, its handlers, its caches) must not change a
// byte of the state it derives. These values were recorded before the
// projector became one runner with handlers; a deliberate change of the
// state's layout updates them in the same commit and says why.
//
// Updated when timeline entries became stored as they are sent (format 2,
// projections/entries.go: a small head and the entry's wire JSON instead
// of the TimelineEntry protobuf); every other table is unchanged. Updated
// again (the multi-partition histories only) when a fan-out's single-device
// copies for one partition became one partition copy (Decision.fanout
// lists it once with its recipients).
func TestDigestGolden(t *testing.T) {
	for _, c := range []struct {
		parts int32
		n     int
		seed  uint64
		want  string
	}{
		{3, 20_000, 1, "a26c7f6808712b8926f5054281d75d3a8c87bd6702a329be58170318a05a5132"},
		{1, 5_000, 2, "5f090ef3f5946c2a4b9351a9e88d87b2e1e918b9a17cbca79a9cb22d2e13b1be"},
		{4, 20_000, 3, "21808fff42d6c1531ba2692f349d0a92d941459bb6c18b39a9f38f9075634143"},
	} {
		s, err := Open(Options{FS: vfs.NewMem(), Partitions: c.parts})
		if err != nil {
			t.Fatal(err)
		}
		for p, es := range storetest.History(c.parts, c.n, c.seed) {
			for i := 0; i < len(es); i += 300 {
				if err := s.Apply(int32(p), es[i:min(i+300, len(es))]); err != nil {
					t.Fatal(err)
				}
			}
		}
		got, err := s.Digest()
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		if got != c.want {
			t.Errorf("History(%d, %d, %d): digest %s, want %s", c.parts, c.n, c.seed, got, c.want)
		}
	}
}

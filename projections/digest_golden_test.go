package projections

import (
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/projections/storetest"
)

// The digest of a fixed history is pinned: a change to how the projector
// applies the log (its runner, its handlers, its caches) must not change a
// byte of the state it derives. A deliberate change of the state's layout
// updates them in the same commit and says why.
//
// History of the values: recorded before the projector became one runner
// with handlers (unchanged by it); changed by issue 12's compact storage
// (decisions.go): a decision no longer stores what its key and the audit
// table hold (app, user, client op id, the derived event id, the message
// id equal to it, the ended sessions of a session operation), and the
// ended table points at the audit row instead of copying it. Same
// decisions read back (TestStoredDecisionsReadBackWhole), fewer bytes
// written per event (benchmarks/RESULTS.md).
func TestDigestGolden(t *testing.T) {
	for _, c := range []struct {
		parts int32
		n     int
		seed  uint64
		want  string
	}{
		{3, 20_000, 1, "6446262b3c002b1cad3bc20c8cde07f98f290d63b4d51c5919bfc27a364d27f6"},
		{1, 5_000, 2, "893055678d4c5442169b6d0aaaf0a0631ccdb7498a235ba81ac18f814fc8d146"},
		{4, 20_000, 3, "0b9c9d619bb9f275d6d5bfc160530d000b6d0bf24e0899bcb61bf3f350a254cb"},
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

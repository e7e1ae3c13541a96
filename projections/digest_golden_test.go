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
func TestDigestGolden(t *testing.T) {
	for _, c := range []struct {
		parts int32
		n     int
		seed  uint64
		want  string
	}{
		{3, 20_000, 1, "fb1803f6bd48e201fc4efe32fd219fe30f6c0d282ec04fd8b410a0226b3ccefd"},
		{1, 5_000, 2, "24e418d4e35c88df73cdae428eba2741ccd44603d4b5a423b958666e302d60e4"},
		{4, 20_000, 3, "6b972c9f74fe2d4abc9bb5c69e07d44fa16a3842d687e4fb35e63c9734f007a2"},
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

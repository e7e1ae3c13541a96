package projections

import (
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/projections/storetest"
)

// The hot state changes no byte of what is applied: a store with the cache
// and the key filter (reopened halfway, so the filter is loaded from
// disk and retries of operations decided before the reopen are caught)
// reaches the digest of a store that reads everything from Pebble. A tiny
// cache exercises the generation turnover.
func TestHotStateIsTransparent(t *testing.T) {
	const parts = 3
	hist := storetest.History(parts, 20_000, 21)
	digest := func(hot int, reopen bool) string {
		fs := vfs.NewMem()
		open := func() *Store {
			s, err := Open(Options{Dir: "s", FS: fs, Partitions: parts, HotKeys: hot})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		s := open()
		for p, es := range hist {
			for i := 0; i < len(es); i += 97 {
				if reopen && i >= len(es)/2 && i < len(es)/2+97 {
					s.Close()
					s = open()
				}
				if err := s.Apply(int32(p), es[i:min(i+97, len(es))]); err != nil {
					t.Fatal(err)
				}
			}
		}
		defer s.Close()
		d, err := s.Digest()
		if err != nil {
			t.Fatal(err)
		}
		var dups uint64
		for p := range int32(parts) {
			dups += s.Checkpoint(p).Duplicates
		}
		if dups == 0 {
			t.Fatal("the history retries nothing: the dedup is not exercised")
		}
		return d
	}
	want := digest(-1, false)
	for _, c := range []struct {
		hot    int
		reopen bool
	}{{0, false}, {0, true}, {16, true}} {
		if got := digest(c.hot, c.reopen); got != want {
			t.Errorf("HotKeys %d, reopen %v: digest %s, want %s (no hot state)", c.hot, c.reopen, got, want)
		}
	}
}

func TestKeyFilter(t *testing.T) {
	f := newKeyFilter(0)
	for i := range 10_000 {
		f.add(decisionKey("s", "u", string(rune(i))))
	}
	for i := range 10_000 {
		if !f.mayContain(decisionKey("s", "u", string(rune(i)))) {
			t.Fatalf("key %d added and not contained", i)
		}
	}
	fp := 0
	for i := range 100_000 {
		if f.mayContain(decisionKey("s", "v", string(rune(i)))) {
			fp++
		}
	}
	if fp > 100 {
		t.Fatalf("%d false positives in 100,000", fp)
	}
}

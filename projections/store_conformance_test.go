package projections

import (
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/mdsync/mdsync/projections/storetest"
)

// The Pebble store passes the projection store conformance suite, with and
// without Options.Sync (with it, no applied batch is lost in a crash). Crashes are Pebble's crashable in-memory FS cloned
// at the instant of the crash: variant 0 keeps only what was synced, 1 a
// random half of the rest, 2 everything written.
func TestStoreConformance(t *testing.T) {
	for _, sync := range []bool{false, true} {
		name := "NoSync"
		if sync {
			name = "Sync"
		}
		t.Run(name, func(t *testing.T) { storetest.Run(t, pebbleHarness(sync)) })
	}
}

func pebbleHarness(syncWrites bool) storetest.Harness {
	var mu sync.Mutex
	fss := map[storetest.Store]*vfs.MemFS{}
	open := func(t *testing.T, fs *vfs.MemFS, parts int32) storetest.Store {
		t.Helper()
		s, err := Open(Options{Dir: "store", FS: fs, Partitions: parts, Sync: syncWrites})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		mu.Lock()
		fss[s] = fs
		mu.Unlock()
		return s
	}
	return storetest.Harness{
		ErrGap:  ErrGap,
		Durable: syncWrites,
		Open: func(t *testing.T, parts int32) storetest.Store {
			return open(t, vfs.NewCrashableMem(), parts)
		},
		Crash: func(t *testing.T, s storetest.Store, variant int) storetest.Store {
			mu.Lock()
			fs := fss[s]
			mu.Unlock()
			clone := fs.CrashClone(vfs.CrashCloneCfg{
				UnsyncedDataPercent: []int{0, 50, 100}[variant%3],
				RNG:                 rand.New(rand.NewPCG(uint64(variant), 1)),
			})
			// The crashed process's store goes away; its files do not matter.
			_ = s.Close()
			return open(t, clone, s.Partitions())
		},
	}
}

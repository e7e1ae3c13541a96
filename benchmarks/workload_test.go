package benchmarks

import (
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// The projection benchmark's workload must be what RESULTS.md says it is:
// every event decided (none skipped as undecodable), kicks that find their
// target, and logins that evict once a platform is full. Runs in memory, fast.
func TestSessionWorkloadIsDecided(t *testing.T) {
	const users = 50
	evs := sessionEvents(t, 20*users, users)
	var decided, kicked, evicted int
	st, err := projections.Open(projections.Options{FS: vfs.NewMem(), Partitions: 1,
		OnApplied: func(_ int32, a projections.Applied) {
			ds := a.Decisions
			for _, d := range ds {
				decided++
				if d.Code != 0 {
					t.Errorf("%s of %s refused: %d %s", engine.KindName(d.Kind), d.ClientOpId, d.Code, d.Message)
				}
				for _, e := range d.Ended {
					if d.Kind == pb.Kind_KIND_KICK_DEVICE {
						kicked++
					} else if e.Code == 206 { // logged in on another device
						evicted++
					}
				}
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	recs := encodeAll(t, evs, 1)
	entries := make([]engine.Entry, len(recs))
	for i, r := range recs {
		entries[i] = engine.Entry{Offset: int64(i), Key: r.Key, Value: r.Value}
	}
	for i := 0; i < len(entries); i += applyBatch {
		if err := st.Apply(0, entries[i:min(i+applyBatch, len(entries))]); err != nil {
			t.Fatal(err)
		}
	}
	if decided != len(evs) || kicked != len(evs)/4 || evicted == 0 {
		t.Fatalf("%d events: %d decided, %d kicked (want %d), %d evicted (want > 0)", len(evs), decided, kicked, len(evs)/4, evicted)
	}
}

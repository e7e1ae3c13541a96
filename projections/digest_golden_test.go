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
// with handlers (unchanged by it). Changed when timeline entries became
// stored as they are sent (format 2, projections/entries.go: a small head
// and the entry's wire JSON instead of the TimelineEntry protobuf); again
// (multi-partition histories only) when a fan-out's single-device copies
// for one partition became one partition copy (Decision.fanout lists it
// once with its recipients); and by issue 12's compact storage
// (decisions.go): a decision no longer stores what its key and the audit
// table hold (app, user, client op id, the derived event id, the message
// id equal to it, the ended sessions of a session operation), and the
// ended table points at the audit row instead of copying it. Same
// decisions read back (TestStoredDecisionsReadBackWhole), fewer bytes
// written per event (benchmarks/RESULTS.md). Changed by issue 13's
// bodies (bodies.go): a group message's member entries reference its
// source stored once per partition (format 3, with a reference count)
// instead of each holding it; the same entries read back
// (TestTimelineJSONMatchesTimeline, TestBodiesCountedAndDropped), and an
// older store migrates to these values (TestBodiesMigratedOnOpen).
// Changed by issue 13's runs (runs.go): a member's consecutive entries of
// a group's messages are one run over the partition's run index, and a
// body's count names its index entry; the same reads for every user
// (TestRunsReadAsEntries). Changed when a run's extension stopped writing
// the member's conversation (runs.go, advanceConv): it is written when the
// run starts and when it stops being the open one, and read as of the
// last seq; the same snapshots (TestRunsReadAsEntries). Changed when a
// delivery stopped writing a user's absent contacts and groups it does not
// change (they were written empty, which reads as absent: the same reads).
// Changed when a run's extension stopped writing the member's meta
// (runs.go, "The meta off the write path"): a new run's pointer ends with
// the derived mark, the conversation's counter counts its open runs and
// the set of open runs is a table (o); the meta is written when a run
// starts or stops being the open one, and its last seq read from the
// pointer and the counter; the same reads (TestRunsReadAsEntries,
// TestRunConversationsReadMidStream).
func TestDigestGolden(t *testing.T) {
	checkGoldens(t, []goldenDigest{
		{3, 20_000, 1, "0d4440ec108d9d69845c7a77167deae3b735b6297d4c514ab51281f3a0195af9"},
		{1, 5_000, 2, "402eb964b447c31beba6983e9bb68c7bebeae57af9bd1081383b258918a99704"},
		{4, 20_000, 3, "661e53a59528dbf55a8ed17a112b0e15700fd5094cd10e1a76808934489ab62c"},
	})
}

// The build before derived runs wrote these digests (the values above
// until derived runs): with derivedRunsOn off this code writes the same
// bytes, so TestRunsFromBeforeDerivedRead reads a store as that build
// wrote it.
func TestDigestGoldenBeforeDerivedRuns(t *testing.T) {
	derivedRunsOn = false
	defer func() { derivedRunsOn = true }()
	checkGoldens(t, []goldenDigest{
		{3, 20_000, 1, "65367cbff733a98496d210a32fa7f807f30e44338a1fca53a68461e34400db48"},
		{1, 5_000, 2, "d57e08a97857c2a3573063f21d79a953f2bd43f94b2c8160bf2e07cb42a2bf7f"},
		{4, 20_000, 3, "cdc46aaac8f9ae01a574677121588a58b9e5221cef3271f86a6061a6228847b0"},
	})
}

// goldenDigest is the digest a store must have after History(parts, n, seed).
type goldenDigest struct {
	parts int32
	n     int
	seed  uint64
	want  string
}

func checkGoldens(t *testing.T, cs []goldenDigest) {
	t.Helper()
	for _, c := range cs {
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

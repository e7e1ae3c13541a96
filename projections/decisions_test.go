package projections

import (
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections/storetest"
	"google.golang.org/protobuf/proto"
)

// A decision is stored compact (decisions.go) and read back whole: for
// every operation of a mixed history, Store.Decision returns exactly the
// decision the runner made (ended sessions, message id, event id and all),
// and the actor rule still finds how each ended login ID's session ended.
func TestStoredDecisionsReadBackWhole(t *testing.T) {
	const parts = 3
	made := map[engine.Position]*pb.Decision{}
	s, err := Open(Options{FS: vfs.NewMem(), Partitions: parts, OnApplied: func(_ int32, a Applied) {
		for _, d := range a.Decisions {
			made[engine.Position{Partition: d.Partition, Offset: d.Offset}] = proto.Clone(d).(*pb.Decision)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	hist := storetest.History(parts, 6_000, 4)
	for p, es := range hist {
		for i := 0; i < len(es); i += 300 {
			if err := s.Apply(int32(p), es[i:min(i+300, len(es))]); err != nil {
				t.Fatal(err)
			}
		}
	}
	var checked, withEnded, messages, refusedEnded int
	for _, es := range hist {
		for _, en := range es {
			want, ok := made[engine.Position{Partition: en.Partition, Offset: en.Offset}]
			if !ok {
				continue // a duplicate or a skipped record
			}
			ev, err := engine.Decode(en.Value)
			if err != nil {
				t.Fatal(err)
			}
			got, ok, err := s.Decision(ev.App, ev.StreamKey, ev.Actor.User, ev.ClientOpId)
			if err != nil || !ok {
				t.Fatalf("decision of %s at %d/%d: %v %v", ev.ClientOpId, en.Partition, en.Offset, ok, err)
			}
			if ev.Kind == pb.Kind_KIND_POLICY_SET {
				continue // Store.Decision reads one partition's copy; the engine merges them
			}
			if !proto.Equal(got, want) {
				t.Fatalf("decision of %s at %d/%d read back as\n%v\nwant\n%v", ev.ClientOpId, en.Partition, en.Offset, got, want)
			}
			checked++
			if len(want.Ended) > 0 {
				withEnded++
				for _, e := range want.Ended {
					if err := s.ActorSession(ev.App, e.User, e.GetSession().GetLoginId()); engine.CodeOf(err) == 0 {
						continue // logged in again since
					} else if engine.CodeOf(err) != engine.CodeNotFound {
						refusedEnded++
					}
				}
			}
			if want.MessageId != "" {
				messages++
			}
		}
	}
	if checked == 0 || withEnded == 0 || messages == 0 || refusedEnded == 0 {
		t.Fatalf("history too thin: %d decisions, %d with ended sessions, %d messages, %d ended login IDs refused with their end's code",
			checked, withEnded, messages, refusedEnded)
	}
}

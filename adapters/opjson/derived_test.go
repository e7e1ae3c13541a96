package opjson

import (
	"testing"

	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// TestPolicyCopiesAreDerived: a policy change is one operation, appended
// once per partition; only partition 0's record makes a row, so an export
// replays it once.
func TestPolicyCopiesAreDerived(t *testing.T) {
	for p, want := range []RowKind{RowEvent, RowDerived, RowDerived} {
		ev := &pb.Event{App: "demo", ClientOpId: "op", Kind: pb.Kind_KIND_POLICY_SET, Actor: &pb.Actor{User: "admin", Admin: true},
			Payload: &pb.Event_PolicySet{PolicySet: &pb.PolicySet{Version: 1, Partition: int32(p), Partitions: 3, DefaultLimit: 2}}}
		if _, kind := Encode(ev); kind != want {
			t.Errorf("policy copy on partition %d: kind %d, want %d", p, kind, want)
		}
	}
}

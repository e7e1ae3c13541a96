package engine

import (
	"testing"

	pb "github.com/mdsync/mdsync/engine/enginepb"
)

func TestEndedByLoginID(t *testing.T) {
	for _, tc := range []struct {
		name string
		e    *pb.Ended
		want string
	}{
		{"evicted by a newer login", &pb.Ended{Reason: pb.Reason_REASON_LOGIN_OTHER_DEVICE, ByLoginId: "A5", ByActor: &pb.Actor{User: "u", LoginId: "A5"}}, "A5"},
		{"kicked by a device", &pb.Ended{Reason: pb.Reason_REASON_KICKED, ByActor: &pb.Actor{User: "u", LoginId: "K2"}}, "K2"},
		{"kicked by the admin", &pb.Ended{Reason: pb.Reason_REASON_KICKED, ByActor: &pb.Actor{Admin: true}}, ""},
		{"kicked by the user's backend", &pb.Ended{Reason: pb.Reason_REASON_KICKED, ByActor: &pb.Actor{User: "u"}}, ""},
		{"logout", &pb.Ended{Reason: pb.Reason_REASON_LOGOUT, ByActor: &pb.Actor{User: "u", LoginId: "A1"}}, ""},
		{"password changed from a device", &pb.Ended{Reason: pb.Reason_REASON_PASSWORD_CHANGED, ByActor: &pb.Actor{User: "u", LoginId: "A1"}}, ""},
	} {
		if got := EndedByLoginID(tc.e); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

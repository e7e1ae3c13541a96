package engine

import (
	"testing"

	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// Two users who asked each other: when one accepts, neither keeps a request.
func TestMutualContactRequestsSettleOnAccept(t *testing.T) {
	pol := DefaultPolicy()
	ev := func(actor string, k pb.Kind, peer string) *pb.Event {
		return &pb.Event{App: "a", EventId: actor + peer + k.String(), ClientOpId: "o", Kind: k, Actor: &pb.Actor{User: actor},
			Payload: &pb.Event_Contact{Contact: &pb.ContactOp{User: peer}}}
	}
	state := func() UserState {
		return UserState{Contacts: &pb.Contacts{}, Groups: &pb.UserGroups{}, Meta: &pb.TimelineMeta{}}
	}
	alice, bob := state(), state()
	// alice → bob and bob → alice, each applied on both sides.
	aReq := ev("alice", pb.Kind_KIND_CONTACT_REQUEST, "bob")
	ac, _, dls := ApplyContact(alice.Contacts, pol, aReq, Position{})
	alice.Contacts = ac
	bob, _ = ApplyDelivery(bob, pol, dls[1])
	bReq := ev("bob", pb.Kind_KIND_CONTACT_REQUEST, "alice")
	bc, _, dls := ApplyContact(bob.Contacts, pol, bReq, Position{})
	bob.Contacts = bc
	alice, _ = ApplyDelivery(alice, pol, dls[1])
	// bob accepts alice's request.
	acc := ev("bob", pb.Kind_KIND_CONTACT_ACCEPT, "alice")
	bc, d, dls := ApplyContact(bob.Contacts, pol, acc, Position{})
	if d.Code != 0 {
		t.Fatalf("accept refused: %v", d)
	}
	alice, _ = ApplyDelivery(alice, pol, dls[1])
	for name, c := range map[string]*pb.Contacts{"alice": alice.Contacts, "bob": bc} {
		if len(c.Friends) != 1 || len(c.RequestsIn) != 0 || len(c.RequestsOut) != 0 {
			t.Fatalf("%s: %v", name, c)
		}
	}
}

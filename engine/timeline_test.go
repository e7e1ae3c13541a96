package engine

import (
	"testing"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// A delivery that does not read the recipient's contacts (or groups), by
// ReadsContacts (ReadsGroups), applies the same with empty ones and leaves
// them unchanged: the projector does not load them for it. Every kind with
// every payload, to the actor and to another user whose contacts and
// groups name the actor and the group (blocked, friend, requests).
func TestDeliveryNeedsOnlyWhatItReads(t *testing.T) {
	pol := DefaultPolicy()
	payloads := []func(*pb.Event){
		func(e *pb.Event) {
			e.Payload = &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob"}}
		},
		func(e *pb.Event) {
			e.Payload = &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_GROUP, To: "g"}}
		},
		func(e *pb.Event) { e.Payload = &pb.Event_Contact{Contact: &pb.ContactOp{User: "bob"}} },
		func(e *pb.Event) {
			e.Payload = &pb.Event_Group{Group: &pb.GroupOp{GroupId: "g", Users: []string{"bob"}}}
		},
		func(e *pb.Event) {
			e.Payload = &pb.Event_Thread{Thread: &pb.ThreadOp{GroupId: "g", ThreadId: "t", Users: []string{"bob"}}}
		},
		func(e *pb.Event) {
			e.Payload = &pb.Event_Conversation{Conversation: &pb.ConversationRef{ChatType: pb.ChatType_CHAT_TYPE_GROUP, ConversationId: "g"}}
		},
	}
	full := func() UserState {
		return UserState{
			Contacts: &pb.Contacts{Blocked: []string{"alice"}, Friends: []string{"alice"}, RequestsIn: []string{"alice"}, RequestsOut: []string{"alice"}},
			Groups:   &pb.UserGroups{Groups: []string{"g"}, Threads: []string{"g/t"}},
			Meta:     &pb.TimelineMeta{Epoch: "e", FirstSeq: 1, LastSeq: 3},
		}
	}
	skipped := [2]int{}
	for k := range pb.Kind_name {
		for _, pl := range payloads {
			for _, to := range []string{"alice", "bob"} {
				ev := &pb.Event{App: "a", EventId: "x", Kind: pb.Kind(k), Actor: &pb.Actor{User: "alice"}, TimeUnixMs: 5}
				pl(ev)
				d := &pb.Deliver{Recipient: to, Source: ev}
				a := full()
				ea, cha, ok := applyOrPanic(&a, pol, d)
				if !ok {
					continue // a payload this kind does not take (validation refuses it)
				}
				if !ReadsContacts(d) {
					skipped[0]++
					b := full()
					b.Contacts = &pb.Contacts{}
					eb, chb := ApplyDeliveryInPlace(&b, pol, d)
					if !proto.Equal(ea, eb) || !proto.Equal(a.Meta, b.Meta) || !proto.Equal(a.Conv, b.Conv) || !proto.Equal(a.Groups, b.Groups) ||
						cha.Contacts || chb.Contacts || !proto.Equal(b.Contacts, &pb.Contacts{}) || !proto.Equal(a.Contacts, full().Contacts) {
						t.Errorf("%v %v to %s: with empty contacts %v %v, want %v %v", pb.Kind(k), ev.Payload, to, eb, b, ea, a)
					}
				}
				if !ReadsGroups(d) {
					skipped[1]++
					b := full()
					b.Groups = &pb.UserGroups{}
					eb, chb := ApplyDeliveryInPlace(&b, pol, d)
					if !proto.Equal(ea, eb) || !proto.Equal(a.Meta, b.Meta) || !proto.Equal(a.Conv, b.Conv) || !proto.Equal(a.Contacts, b.Contacts) ||
						cha.Groups || chb.Groups || !proto.Equal(b.Groups, &pb.UserGroups{}) || !proto.Equal(a.Groups, full().Groups) {
						t.Errorf("%v %v to %s: with empty groups %v %v, want %v %v", pb.Kind(k), ev.Payload, to, eb, b, ea, a)
					}
				}
			}
		}
	}
	if skipped[0] < 100 || skipped[1] < 100 {
		t.Fatalf("%v deliveries applied without contacts, groups", skipped)
	}
}

// applyOrPanic is ApplyDeliveryInPlace, ok false when it panics: a kind
// given a payload it never carries.
func applyOrPanic(st *UserState, pol *pb.Policy, d *pb.Deliver) (e *pb.TimelineEntry, ch Changed, ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	e, ch = ApplyDeliveryInPlace(st, pol, d)
	return e, ch, true
}

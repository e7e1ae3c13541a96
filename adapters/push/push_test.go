package push

import (
	"reflect"
	"testing"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

func msgEvent(actor, loginID string, ct pb.ChatType, to string, body string) *pb.Event {
	return &pb.Event{
		App: "app", EventId: "ev-" + to, Kind: pb.Kind_KIND_MESSAGE_SEND, TimeUnixMs: 1_700_000_000_000,
		Actor:   &pb.Actor{User: actor, LoginId: loginID},
		Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: ct, To: to, Body: []byte(body)}},
	}
}

// entries runs a user message through the engine's own decide and apply
// functions and returns the timeline entry each recipient gets.
func entries(t *testing.T, ev *pb.Event) map[string]*pb.TimelineEntry {
	t.Helper()
	pol := engine.DefaultPolicy()
	sess := &pb.UserSessions{Sessions: []*pb.Session{{LoginId: "alice-phone"}, {LoginId: "alice-pc"}}}
	d, dls := engine.ApplyUserMessage(sess, pol, ev, engine.Position{Partition: 0, Offset: 7})
	if d.Code != 0 {
		t.Fatalf("message refused: %d %s", d.Code, d.Message)
	}
	out := map[string]*pb.TimelineEntry{}
	for _, dl := range dls {
		if dl.Source == nil {
			dl.Source = ev
		}
		_, e := engine.ApplyDelivery(engine.UserState{Contacts: &pb.Contacts{}, Groups: &pb.UserGroups{}, Meta: &pb.TimelineMeta{}}, pol, dl)
		if e == nil {
			t.Fatalf("delivery to %s dropped", dl.Recipient)
		}
		out[dl.Recipient] = e
	}
	return out
}

func TestCandidatesUserMessage(t *testing.T) {
	es := entries(t, msgEvent("alice", "alice-phone", pb.ChatType_CHAT_TYPE_USER, "bob", "hello bob"))
	if _, ok := Candidates("app", "alice", es["alice"]); ok {
		t.Error("the sender's own copy (other devices) must not push")
	}
	got, ok := Candidates("app", "bob", es["bob"])
	if !ok {
		t.Fatal("the recipient's copy must push")
	}
	want := Entry{App: "app", User: "bob", EntryID: "ev-bob", Seq: 1, From: "alice", ChatType: "CHAT_TYPE_USER",
		ConversationID: "alice", TimeUnixMs: 1_700_000_000_000}
	if string(got.body) != "hello bob" {
		t.Errorf("body = %q", got.body)
	}
	got.body = nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("entry:\n got %+v\nwant %+v", got, want)
	}
	if got.Key() != "app/bob/ev-bob" {
		t.Errorf("key = %q", got.Key())
	}
}

func TestCandidatesNothingToPush(t *testing.T) {
	self := entries(t, msgEvent("alice", "alice-phone", pb.ChatType_CHAT_TYPE_SELF_DEVICE, "alice-pc", "to my pc"))
	note := entries(t, msgEvent("alice", "alice-phone", pb.ChatType_CHAT_TYPE_USER, "alice", "note to self"))
	cases := map[string]struct {
		user string
		e    *pb.TimelineEntry
	}{
		"message to own device": {"alice", self["alice"]},
		"note to self":          {"alice", note["alice"]},
		"multi-device copy": {"alice", &pb.TimelineEntry{EntryId: "x", From: "alice", MultiDevice: true,
			Source: msgEvent("alice", "alice-phone", pb.ChatType_CHAT_TYPE_GROUP, "g1", "hi")}},
		"own message in a group": {"alice", &pb.TimelineEntry{EntryId: "x", From: "alice",
			Source: msgEvent("alice", "", pb.ChatType_CHAT_TYPE_GROUP, "g1", "hi"), ChatType: pb.ChatType_CHAT_TYPE_GROUP}},
		"chatroom message": {"bob", &pb.TimelineEntry{EntryId: "x", From: "alice", ChatType: pb.ChatType_CHAT_TYPE_CHATROOM,
			Source: msgEvent("alice", "alice-phone", pb.ChatType_CHAT_TYPE_CHATROOM, "room", "hi")}},
		"receipt": {"bob", &pb.TimelineEntry{EntryId: "x", From: "alice", Source: &pb.Event{
			Kind: pb.Kind_KIND_READ_RECEIPT, Actor: &pb.Actor{User: "alice"},
			Payload: &pb.Event_Receipt{Receipt: &pb.Receipt{ChatType: pb.ChatType_CHAT_TYPE_USER, ConversationId: "bob"}}}}},
		"contact request": {"bob", &pb.TimelineEntry{EntryId: "x", From: "alice", Source: &pb.Event{
			Kind: pb.Kind_KIND_CONTACT_REQUEST, Actor: &pb.Actor{User: "alice"}}}},
		"no source": {"bob", &pb.TimelineEntry{EntryId: "x", From: "alice"}},
		"nil entry": {"bob", nil},
	}
	for name, c := range cases {
		if e, ok := Candidates("app", c.user, c.e); ok {
			t.Errorf("%s: pushed %+v", name, e)
		}
	}
	if len(self) != 1 || len(note) != 1 {
		t.Errorf("engine fan-out changed: self %d, note %d copies", len(self), len(note))
	}
}

func TestCandidatesGroupAndThread(t *testing.T) {
	for _, ct := range []pb.ChatType{pb.ChatType_CHAT_TYPE_GROUP, pb.ChatType_CHAT_TYPE_THREAD} {
		e := &pb.TimelineEntry{Seq: 4, EntryId: "m1", From: "alice", ChatType: ct, ConversationId: "g1",
			Source: msgEvent("alice", "alice-phone", ct, "g1", "hi all")}
		got, ok := Candidates("app", "bob", e)
		if !ok || got.ConversationID != "g1" || got.From != "alice" || got.Seq != 4 {
			t.Errorf("%v: got %+v, %v", ct, got, ok)
		}
	}
	e := &pb.TimelineEntry{EntryId: "m1", From: "alice", ChatType: pb.ChatType_CHAT_TYPE_GROUP,
		Source: msgEvent("alice", "", pb.ChatType_CHAT_TYPE_GROUP, "g1", "x")}
	if got, _ := Candidates("app", "bob", e); got.ChatType != "CHAT_TYPE_GROUP" {
		t.Errorf("chat type = %q, want CHAT_TYPE_GROUP", got.ChatType)
	}
}

func TestPreview(t *testing.T) {
	cases := []struct {
		in   string
		n    int
		want string
	}{
		{"hello", 0, ""},
		{"hello", 3, "hel"},
		{"hello", 10, "hello"},
		{"héllo", 2, "h"}, // never half a rune
		{"héllo", 3, "hé"},
		{"\xff\xfebinary", 4, ""},
	}
	for _, c := range cases {
		if got := preview([]byte(c.in), c.n); got != c.want {
			t.Errorf("preview(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
}

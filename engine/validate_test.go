package engine

import (
	"strings"
	"testing"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

func validLogin() *pb.Event {
	return &pb.Event{
		App: "app", ClientOpId: "op1", Kind: pb.Kind_KIND_LOGIN,
		Actor:   &pb.Actor{User: "alice"},
		Payload: &pb.Event_Login{Login: &pb.Login{Platform: 1, LoginId: "dev1", DeviceName: "phone", Extension: "ext"}},
	}
}

func TestValidateRules(t *testing.T) {
	long := func(n int) string { return strings.Repeat("x", n) }
	cases := []struct {
		name string
		mut  func(ev *pb.Event)
		code Code
	}{
		{"ok", func(ev *pb.Event) {}, CodeOK},
		{"nil actor", func(ev *pb.Event) { ev.Actor = nil }, CodeMissingField},
		{"missing app", func(ev *pb.Event) { ev.App = "" }, CodeMissingField},
		{"app too long", func(ev *pb.Event) { ev.App = long(MaxIDBytes + 1) }, CodeTooLarge},
		{"app bad chars", func(ev *pb.Event) { ev.App = "a/b" }, CodeInvalidArgument},
		{"app NUL", func(ev *pb.Event) { ev.App = "a\x00b" }, CodeInvalidArgument},
		{"missing user", func(ev *pb.Event) { ev.Actor.User = "" }, CodeMissingField},
		{"missing op id", func(ev *pb.Event) { ev.ClientOpId = "" }, CodeMissingField},
		{"op id too long", func(ev *pb.Event) { ev.ClientOpId = long(65) }, CodeTooLarge},
		{"reserved op id prefix", func(ev *pb.Event) { ev.ClientOpId = "dlv.0123abcd" }, CodeInvalidArgument},
		{"unknown kind", func(ev *pb.Event) { ev.Kind = 9999 }, CodeUnknownKind},
		{"unspecified kind", func(ev *pb.Event) { ev.Kind = 0 }, CodeUnknownKind},
		{"platform 0", func(ev *pb.Event) { ev.GetLogin().Platform = 0 }, CodeInvalidArgument},
		{"platform 101", func(ev *pb.Event) { ev.GetLogin().Platform = 101 }, CodeInvalidArgument},
		{"platform 100", func(ev *pb.Event) { ev.GetLogin().Platform = 100 }, CodeOK},
		{"platform -1", func(ev *pb.Event) { ev.GetLogin().Platform = -1 }, CodeInvalidArgument},
		{"missing login id", func(ev *pb.Event) { ev.GetLogin().LoginId = "" }, CodeMissingField},
		{"device name max", func(ev *pb.Event) { ev.GetLogin().DeviceName = long(MaxDeviceNameBytes) }, CodeOK},
		{"device name too long", func(ev *pb.Event) { ev.GetLogin().DeviceName = long(MaxDeviceNameBytes + 1) }, CodeTooLarge},
		{"device name bad utf8", func(ev *pb.Event) { ev.GetLogin().DeviceName = "\xff" }, CodeInvalidArgument},
		{"extension too long", func(ev *pb.Event) { ev.GetLogin().Extension = long(MaxExtensionBytes + 1) }, CodeTooLarge},
		{"actor login id differs", func(ev *pb.Event) { ev.Actor.LoginId = "other" }, CodeInvalidArgument},
		{"login without payload", func(ev *pb.Event) { ev.Payload = nil }, CodeMissingField},
		{"login with wrong payload", func(ev *pb.Event) {
			ev.Payload = &pb.Event_KickDevice{KickDevice: &pb.KickDevice{LoginId: "x"}}
		}, CodeMissingField},
		{"kick without target", func(ev *pb.Event) {
			ev.Kind = pb.Kind_KIND_KICK_DEVICE
			ev.Payload = &pb.Event_KickDevice{KickDevice: &pb.KickDevice{}}
		}, CodeMissingField},
		{"logout without login id", func(ev *pb.Event) { ev.Kind = pb.Kind_KIND_LOGOUT; ev.Payload = nil }, CodeMissingField},
		{"kick all with payload", func(ev *pb.Event) { ev.Kind = pb.Kind_KIND_KICK_ALL_DEVICES }, CodeInvalidArgument},
		{"policy limit 0", func(ev *pb.Event) { setPolicy(ev, 4, &pb.PlatformLimit{Platform: 1, Limit: 0}) }, CodeInvalidArgument},
		{"policy limit 101", func(ev *pb.Event) { setPolicy(ev, 4, &pb.PlatformLimit{Platform: 1, Limit: 101}) }, CodeInvalidArgument},
		{"policy platform 101", func(ev *pb.Event) { setPolicy(ev, 4, &pb.PlatformLimit{Platform: 101, Limit: 1}) }, CodeInvalidArgument},
		{"policy unsorted", func(ev *pb.Event) {
			setPolicy(ev, 4, &pb.PlatformLimit{Platform: 2, Limit: 1}, &pb.PlatformLimit{Platform: 1, Limit: 1})
		}, CodeInvalidArgument},
		{"policy default 0", func(ev *pb.Event) { setPolicy(ev, 0) }, CodeInvalidArgument},
		{"policy no mode", func(ev *pb.Event) { setPolicy(ev, 4); ev.GetPolicySet().Mode = 0 }, CodeInvalidArgument},
		{"policy negative retention", func(ev *pb.Event) { setPolicy(ev, 4); ev.GetPolicySet().TimelineMaxEntries = -1 }, CodeInvalidArgument},
		{"policy retention too old", func(ev *pb.Event) { setPolicy(ev, 4); ev.GetPolicySet().TimelineMaxAgeMs = MaxTimelineAgeMs + 1 }, CodeInvalidArgument},
		{"policy ok", func(ev *pb.Event) { setPolicy(ev, 4, &pb.PlatformLimit{Platform: 1, Limit: 10}) }, CodeOK},
		{"message body too large", func(ev *pb.Event) { setMessage(ev, pb.ChatType_CHAT_TYPE_USER, make([]byte, MaxBodyBytes+1)) }, CodeTooLarge},
		{"message no chat type", func(ev *pb.Event) { setMessage(ev, 0, nil) }, CodeInvalidArgument},
		{"message bad chat type", func(ev *pb.Event) { setMessage(ev, 77, nil) }, CodeInvalidArgument},
		{"thread message without group", func(ev *pb.Event) { setMessage(ev, pb.ChatType_CHAT_TYPE_THREAD, nil) }, CodeMissingField},
		{"message ok", func(ev *pb.Event) { setMessage(ev, pb.ChatType_CHAT_TYPE_USER, []byte("hi")) }, CodeOK},
		{"group kick without users", func(ev *pb.Event) { setGroup(ev, pb.Kind_KIND_GROUP_KICK, nil) }, CodeMissingField},
		{"group too many users", func(ev *pb.Event) { setGroup(ev, pb.Kind_KIND_GROUP_KICK, manyUsers(MaxUsersPerOp+1)) }, CodeTooLarge},
		{"group duplicate users", func(ev *pb.Event) { setGroup(ev, pb.Kind_KIND_GROUP_KICK, []string{"u1", "u1"}) }, CodeInvalidArgument},
		{"group assign two owners", func(ev *pb.Event) { setGroup(ev, pb.Kind_KIND_GROUP_ASSIGN_OWNER, []string{"u1", "u2"}) }, CodeInvalidArgument},
		{"group ok", func(ev *pb.Event) { setGroup(ev, pb.Kind_KIND_GROUP_KICK, []string{"u1"}) }, CodeOK},
		{"contact self", func(ev *pb.Event) {
			ev.Kind = pb.Kind_KIND_CONTACT_REQUEST
			ev.Payload = &pb.Event_Contact{Contact: &pb.ContactOp{User: "alice"}}
		}, CodeInvalidArgument},
		{"conversation mark 20", func(ev *pb.Event) {
			ev.Kind = pb.Kind_KIND_CONVERSATION_MARK
			ev.Payload = &pb.Event_Conversation{Conversation: &pb.ConversationRef{ChatType: 1, ConversationId: "bob", Mark: 20}}
		}, CodeInvalidArgument},
		{"thread without group", func(ev *pb.Event) {
			ev.Kind = pb.Kind_KIND_THREAD_CREATE
			ev.Payload = &pb.Event_Thread{Thread: &pb.ThreadOp{ThreadId: "t1"}}
		}, CodeMissingField},
		{"derived deliver refused", func(ev *pb.Event) {
			ev.Kind = pb.Kind_KIND_DELIVER
			ev.Payload = &pb.Event_Deliver{Deliver: &pb.Deliver{Recipient: "bob"}}
		}, CodeForbidden},
		{"chatroom ok", func(ev *pb.Event) {
			ev.Kind = pb.Kind_KIND_CHATROOM_JOIN
			ev.Payload = &pb.Event_Chatroom{Chatroom: &pb.ChatroomOp{RoomId: "r1"}}
		}, CodeOK},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev := validLogin()
			c.mut(ev)
			err := Validate(ev)
			if got := CodeOf(err); got != c.code {
				t.Fatalf("code %d (%v), want %d", got, err, c.code)
			}
		})
	}
}

func setPolicy(ev *pb.Event, def int32, limits ...*pb.PlatformLimit) {
	ev.Kind = pb.Kind_KIND_POLICY_SET
	ev.Payload = &pb.Event_PolicySet{PolicySet: &pb.PolicySet{
		Mode: pb.PlatformMode_PLATFORM_MODE_MULTI, DefaultLimit: def, Limits: limits,
		AutoLogin: pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST,
	}}
}

func setMessage(ev *pb.Event, ct pb.ChatType, body []byte) {
	ev.Kind = pb.Kind_KIND_MESSAGE_SEND
	ev.Payload = &pb.Event_Message{Message: &pb.MessageSend{ChatType: ct, To: "bob", ClientMsgId: "m1", Body: body}}
}

func setGroup(ev *pb.Event, k pb.Kind, users []string) {
	ev.Kind = k
	ev.Payload = &pb.Event_Group{Group: &pb.GroupOp{GroupId: "g1", Users: users}}
}

func manyUsers(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = "u" + strings.Repeat("x", i%10) + string(rune('a'+i%26)) + string(rune('a'+i/26%26))
	}
	return out
}

// Every kind in the proto enum has a table entry, a payload validator and a
// JSON name that round-trips.
func TestEveryKindDefined(t *testing.T) {
	for v, name := range pb.Kind_name {
		if v == 0 {
			continue
		}
		ki, ok := LookupKind(pb.Kind(v))
		if !ok {
			t.Fatalf("%s has no KindInfo", name)
		}
		if k, ok := KindByName(ki.Name); !ok || k != ki.Kind {
			t.Fatalf("%s: name %q does not round-trip", name, ki.Name)
		}
		ev := &pb.Event{App: "a", ClientOpId: "o", Kind: ki.Kind, Actor: &pb.Actor{User: "u"}}
		if err := Validate(ev); CodeOf(err) == CodeInternal {
			t.Fatalf("%s: no validator: %v", name, err)
		}
	}
	if len(Kinds()) != len(pb.Kind_name)-1 {
		t.Fatalf("kind table has %d entries, enum %d", len(Kinds()), len(pb.Kind_name)-1)
	}
}

func TestEncodeDeterministic(t *testing.T) {
	ev := validLogin()
	a, _ := Encode(ev)
	b, _ := Encode(proto.Clone(ev).(*pb.Event))
	if string(a) != string(b) {
		t.Fatal("encoding differs")
	}
	back, err := Decode(a)
	if err != nil || !proto.Equal(back, ev) {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := Decode([]byte{0xff, 0xff}); CodeOf(err) != CodeInvalidArgument {
		t.Fatalf("corrupt record: %v", err)
	}
}

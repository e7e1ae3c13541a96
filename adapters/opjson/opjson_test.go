package opjson

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// genEvent builds an operation of kind ki as a client submits it (no field
// the engine assigns at append: event id, time, stream key, schema and
// policy version), with values drawn from rng and text from s. It fails
// the test for a payload it does not know, so a payload added to engine
// fails here until the codec and this generator handle it.
func genEvent(t testing.TB, ki engine.KindInfo, rng *rand.Rand, s string) *pb.Event {
	text := func() string { // any valid UTF-8, often empty
		if rng.IntN(4) == 0 {
			return ""
		}
		a, b := rng.IntN(len(s)+1), rng.IntN(len(s)+1)
		return strings.ToValidUTF8(s[min(a, b):max(a, b)], "?")
	}
	id := func(prefix string) string { return prefix + string(rune('a'+rng.IntN(26))) + text() }
	users := func() []string {
		var us []string
		for range rng.IntN(4) {
			us = append(us, id("u"))
		}
		return us
	}
	chat := func() pb.ChatType {
		if rng.IntN(8) == 0 {
			return pb.ChatType(rng.Int32N(200)) // unknown to this build, or zero
		}
		return pb.ChatType(1 + rng.IntN(len(pb.ChatType_name)-1))
	}
	ev := &pb.Event{
		App: id("app"), ClientOpId: id("op"), Kind: ki.Kind,
		TimeUnixMs: rng.Int64N(1 << 50),
		Actor:      &pb.Actor{User: id("user"), Admin: rng.IntN(2) == 0},
	}
	if rng.IntN(2) == 0 {
		ev.Actor.LoginId = id("L")
	}
	switch ki.Payload() {
	case "empty":
	case "login":
		l := &pb.Login{Platform: rng.Int32N(101), LoginId: id("L"), DeviceName: text(), Extension: text(), AutoLogin: rng.IntN(2) == 0}
		ev.Actor.LoginId = l.LoginId // one login_id field names both
		ev.Payload = &pb.Event_Login{Login: l}
	case "kick_device":
		ev.Payload = &pb.Event_KickDevice{KickDevice: &pb.KickDevice{LoginId: id("L")}}
	case "policy_set":
		ps := &pb.PolicySet{
			Mode:               pb.PlatformMode_PLATFORM_MODE_MULTI,
			DefaultLimit:       rng.Int32N(10),
			AutoLogin:          pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST,
			TimelineMaxEntries: rng.Int64N(1 << 20),
			TimelineMaxAgeMs:   rng.Int64N(1 << 40),
		}
		if rng.IntN(2) == 0 {
			ps.Mode = pb.PlatformMode_PLATFORM_MODE_SINGLE
		}
		if rng.IntN(2) == 0 {
			ps.AutoLogin = pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KEEP_CURRENT
		}
		for p := int32(1); p <= 100; p += 1 + rng.Int32N(40) { // sorted, distinct
			ps.Limits = append(ps.Limits, &pb.PlatformLimit{Platform: p, Limit: rng.Int32N(10)})
		}
		ev.Payload = &pb.Event_PolicySet{PolicySet: ps}
	case "message":
		body := []byte(text())
		if rng.IntN(3) == 0 {
			body = []byte(s) // any bytes: not UTF-8 goes as body_base64
		}
		ev.Payload = &pb.Event_Message{Message: &pb.MessageSend{
			ChatType: chat(), To: id("to"), ClientMsgId: id("m"), ContentType: text(), Body: body, GroupId: text(),
		}}
	case "receipt":
		ev.Payload = &pb.Event_Receipt{Receipt: &pb.Receipt{ChatType: chat(), ConversationId: id("c"), MessageId: id("m")}}
	case "conversation":
		ev.Payload = &pb.Event_Conversation{Conversation: &pb.ConversationRef{ChatType: chat(), ConversationId: id("c"), Mark: rng.Int32N(20)}}
	case "contact":
		ev.Payload = &pb.Event_Contact{Contact: &pb.ContactOp{User: id("u"), Ext: text()}}
	case "group":
		g := &pb.GroupOp{GroupId: id("g"), Users: users(), Name: text(), Reason: text(), MuteMs: rng.Int64N(1 << 35)}
		for i := range rng.IntN(4) { // sorted by key, distinct
			g.Attributes = append(g.Attributes, &pb.Attribute{Key: string(rune('a'+i)) + id("k"), Value: text()})
		}
		ev.Payload = &pb.Event_Group{Group: g}
	case "thread":
		ev.Payload = &pb.Event_Thread{Thread: &pb.ThreadOp{ThreadId: id("t"), GroupId: id("g"), Name: text(), Users: users(), MessageId: text()}}
	case "chatroom":
		ev.Payload = &pb.Event_Chatroom{Chatroom: &pb.ChatroomOp{RoomId: id("r")}}
	case "presence":
		ev.Actor.LoginId = id("L")
		ev.Payload = &pb.Event_Presence{Presence: &pb.DevicePresence{
			RemoteAddr: text(), Process: text(), Incarnation: id("i"), Connection: rng.Uint64(), LastSeenUnixMs: rng.Int64N(1 << 50),
		}}
	default:
		t.Fatalf("kind %s: payload %q has no generator (and maybe no JSON mapping): handle it in opjson", ki.Name, ki.Payload())
	}
	return ev
}

// roundTrip checks Decode(Marshal(Encode(ev))) == ev.
func roundTrip(t testing.TB, ev *pb.Event) {
	t.Helper()
	r, kind := Encode(ev)
	if kind != RowEvent {
		t.Fatalf("Encode(%v) = kind %d", ev, kind)
	}
	b, err := Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	l := Decode(7, b, "default-app")
	if l.Err != nil {
		t.Fatalf("Decode(%s): %v", b, l.Err)
	}
	if l.Op != engine.KindName(ev.Kind) || l.TimeMs != ev.TimeUnixMs {
		t.Fatalf("Decode(%s): op %q time %d, want %q %d", b, l.Op, l.TimeMs, engine.KindName(ev.Kind), ev.TimeUnixMs)
	}
	got := proto.Clone(l.Event).(*pb.Event)
	got.TimeUnixMs = l.TimeMs
	if !proto.Equal(got, ev) {
		t.Fatalf("round trip of %s:\n got %v\nwant %v", b, got, ev)
	}
}

// submittable is every kind a client may submit.
func submittable() []engine.KindInfo {
	var out []engine.KindInfo
	for _, k := range engine.Kinds() {
		if k.Category != engine.CatDerived {
			out = append(out, k)
		}
	}
	return out
}

// FuzzRoundTrip: for generated events of every kind, decode(encode(ev)) ==
// ev. The seed corpus holds every kind.
func FuzzRoundTrip(f *testing.F) {
	kinds := submittable()
	for i := range kinds {
		f.Add(uint16(i), uint64(i), "héllo\x00wörld \"<&>\" \xff\xfe")
		f.Add(uint16(i), uint64(i)*7919, "")
	}
	f.Fuzz(func(t *testing.T, k uint16, seed uint64, s string) {
		ki := kinds[int(k)%len(kinds)]
		rng := rand.New(rand.NewPCG(seed, uint64(len(s))))
		roundTrip(t, genEvent(t, ki, rng, s))
	})
}

// TestEveryKindHandled fails when a kind in engine.Kinds() has no JSON
// mapping: a submittable kind must decode from its minimal line and round
// trip; a derived one is refused on input and makes no row on output.
func TestEveryKindHandled(t *testing.T) {
	for _, ki := range engine.Kinds() {
		l := Decode(1, []byte(`{"op":"`+ki.Name+`","user":"u"}`), "demo")
		if ki.Category == engine.CatDerived {
			if engine.CodeOf(l.Err) != engine.CodeForbidden {
				t.Errorf("derived op %s: err = %v, want %d", ki.Name, l.Err, engine.CodeForbidden)
			}
			if _, kind := Encode(&pb.Event{Kind: ki.Kind, Actor: &pb.Actor{User: "u"}}); kind != RowDerived {
				t.Errorf("derived op %s: Encode kind %d, want RowDerived", ki.Name, kind)
			}
			continue
		}
		if _, ok := PayloadFields[ki.Payload()]; !ok {
			t.Errorf("kind %s: payload %q has no fields in PayloadFields", ki.Name, ki.Payload())
		}
		if engine.CodeOf(l.Err) == engine.CodeUnknownKind || engine.CodeOf(l.Err) == engine.CodeInternal {
			t.Errorf("kind %s: %v", ki.Name, l.Err)
		}
		rng := rand.New(rand.NewPCG(uint64(ki.Kind), 1))
		for range 50 {
			roundTrip(t, genEvent(t, ki, rng, "some text é\xff"))
		}
	}
}

// TestDecodeChatTypeSpellings: Encode produces the protocol's spelling;
// the enum's number and the old short form are accepted too.
func TestDecodeChatTypeSpellings(t *testing.T) {
	r, _ := Encode(&pb.Event{Kind: pb.Kind_KIND_READ_RECEIPT, Actor: &pb.Actor{User: "u"},
		Payload: &pb.Event_Receipt{Receipt: &pb.Receipt{ChatType: pb.ChatType_CHAT_TYPE_SELF_DEVICE}}})
	if r.ChatType != "CHAT_TYPE_SELF_DEVICE" {
		t.Errorf("Encode chat_type = %v, want CHAT_TYPE_SELF_DEVICE", r.ChatType)
	}
	if got := ReasonName(pb.Reason_REASON_LOGIN_OTHER_DEVICE); got != "REASON_LOGIN_OTHER_DEVICE" {
		t.Errorf("ReasonName = %q", got)
	}
	for _, in := range []string{`"CHAT_TYPE_USER"`, `"user"`, `1`, `"USER"`} {
		l := Decode(1, []byte(`{"op":"message_send","user":"u","chat_type":`+in+`,"to":"b","client_msg_id":"m"}`), "demo")
		if l.Err != nil || l.Event.GetMessage().GetChatType() != pb.ChatType_CHAT_TYPE_USER {
			t.Errorf("chat_type %s: %v %v", in, l.Event, l.Err)
		}
	}
	for _, in := range []string{`"nobody"`, `"unspecified"`, `"CHAT_TYPE_UNSPECIFIED"`, `"CHAT_TYPE_"`, `true`} {
		if l := Decode(1, []byte(`{"op":"message_send","user":"u","chat_type":`+in+`}`), "demo"); engine.CodeOf(l.Err) != engine.CodeInvalidArgument {
			t.Errorf("chat_type %s: err %v, want %d", in, l.Err, engine.CodeInvalidArgument)
		}
	}
	if !slices.Contains(PayloadFields["message"], "chat_type") {
		t.Fatal("message has no chat_type field")
	}
}

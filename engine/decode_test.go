package engine

import (
	"testing"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// decodeSeeds are records of every shape decodeEvent takes, and a few it
// leaves to proto.Unmarshal.
func decodeSeeds(tb testing.TB) [][]byte {
	tb.Helper()
	actor := &pb.Actor{User: "alice", LoginId: "dev-1"}
	msg := &pb.Event{SchemaVersion: 1, App: "app", StreamKey: UserStream("app", "alice"), EventId: "0123456789abcdef",
		ClientOpId: "op-1", Kind: pb.Kind_KIND_MESSAGE_SEND, Actor: actor, TimeUnixMs: 1_700_000_000_123,
		Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob", ClientMsgId: "m1",
			ContentType: "text/plain", Body: []byte("hello"), GroupId: "g"}}}
	evs := []*pb.Event{
		msg,
		{App: "app", Kind: pb.Kind_KIND_LOGIN, Actor: &pb.Actor{User: "u", Admin: true}, TimeUnixMs: -1,
			Payload: &pb.Event_Login{Login: &pb.Login{Platform: -3, LoginId: "d", DeviceName: "phone é", Extension: "x", AutoLogin: true}}},
		{App: "app", Kind: pb.Kind_KIND_KICK_DEVICE, Actor: actor, Payload: &pb.Event_KickDevice{KickDevice: &pb.KickDevice{LoginId: "d2"}}},
		{App: "app", Kind: pb.Kind_KIND_DELIVER, Actor: actor, Payload: &pb.Event_Deliver{Deliver: &pb.Deliver{
			Recipient: "bob", From: "alice", MultiDevice: true, ExcludeLoginId: "x", OnlyLoginId: "y", Source: msg,
			SourcePartition: 3, SourceOffset: 1 << 40}}},
		{App: "app", Kind: pb.Kind_KIND_DELIVER, Payload: &pb.Event_Deliver{Deliver: &pb.Deliver{
			Recipients: []string{"a", "b", "c"}, From: "alice", Source: msg}}},
		{Kind: pb.Kind(999), Payload: &pb.Event_Message{Message: &pb.MessageSend{}}},
		{App: "app", Kind: pb.Kind_KIND_LOGOUT, Actor: actor},                                                     // no payload
		{App: "app", Kind: pb.Kind_KIND_GROUP_CREATE, Payload: &pb.Event_Group{Group: &pb.GroupOp{GroupId: "g"}}}, // not taken
		{},
	}
	var out [][]byte
	for _, ev := range evs {
		b, err := Encode(ev)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, b)
	}
	// An unknown field, a field twice, invalid UTF-8: proto.Unmarshal's.
	b, _ := Encode(msg)
	out = append(out, protowire.AppendVarint(protowire.AppendTag(append([]byte(nil), b...), 19, protowire.VarintType), 5))
	out = append(out, protowire.AppendString(protowire.AppendTag(append([]byte(nil), b...), 2, protowire.BytesType), "other"))
	out = append(out, protowire.AppendString(protowire.AppendTag(nil, 2, protowire.BytesType), "a\xffb"))
	// A record above sharedRecordMax: its strings are copied one by one.
	big := proto.Clone(msg).(*pb.Event)
	big.GetMessage().Body = make([]byte, 2*sharedRecordMax)
	b, _ = Encode(big)
	return append(out, b)
}

// TestDecodeTakesTheCommonShapes: the records of the common shapes are
// decoded by decodeEvent (else the fuzz test compares proto.Unmarshal with
// itself), and to what proto.Unmarshal gives.
func TestDecodeTakesTheCommonShapes(t *testing.T) {
	seeds := decodeSeeds(t)
	for i, b := range seeds {
		ev, ok := decodeEvent(b, 0)
		if want := i < 7 || i == 8 || i == 12; ok != want {
			t.Fatalf("seed %d: taken %v, want %v", i, ok, want)
		}
		checkDecode(t, b)
		if ok {
			ref := &pb.Event{}
			if err := proto.Unmarshal(b, ref); err != nil || !proto.Equal(ev, ref) {
				t.Fatalf("seed %d: %v, want %v (%v)", i, ev, ref, err)
			}
		}
	}
}

// checkDecode: Decode(b) is proto.Unmarshal(b): the same error or the
// same message, re-encoded to the same bytes (unknown fields included).
func checkDecode(t *testing.T, b []byte) {
	t.Helper()
	ref := &pb.Event{}
	rerr := proto.Unmarshal(b, ref)
	got, err := Decode(b)
	if (err == nil) != (rerr == nil) {
		t.Fatalf("%x: Decode error %v, proto.Unmarshal error %v", b, err, rerr)
	}
	if err != nil {
		return
	}
	if !proto.Equal(got, ref) {
		t.Fatalf("%x: Decode %v, proto.Unmarshal %v", b, got, ref)
	}
	gb, _ := Encode(got)
	rb, _ := Encode(ref)
	if string(gb) != string(rb) {
		t.Fatalf("%x: re-encoded %x, proto.Unmarshal's %x", b, gb, rb)
	}
	if fast, ok := decodeEvent(b, 0); ok {
		// The event must not alias the record: the log may reuse it.
		for i := range b {
			b[i] ^= 0xff
		}
		same := proto.Equal(fast, ref)
		for i := range b {
			b[i] ^= 0xff
		}
		if !same {
			t.Fatalf("%x: the decoded event aliases the record", b)
		}
	}
}

func FuzzDecodeEvent(f *testing.F) {
	for _, b := range decodeSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkDecode(t, b) })
}

// BenchmarkDecode: Decode of a message, a login, a kick and a relayed
// copy; BenchmarkDecodeUnmarshal is proto.Unmarshal of the same records.
func BenchmarkDecode(b *testing.B) {
	seeds := decodeSeeds(b)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		for _, r := range seeds[:4] {
			if _, err := Decode(r); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkDecodeUnmarshal(b *testing.B) {
	seeds := decodeSeeds(b)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		for _, r := range seeds[:4] {
			if err := proto.Unmarshal(r, &pb.Event{}); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// TestIsEventID: IsEventID is EventID compared, for short and long inputs
// (past its stack buffer) and for ids that differ in one character.
func TestIsEventID(t *testing.T) {
	long := string(make([]byte, 300))
	for _, in := range [][3]string{{"u\x00app\x00alice", "alice", "op-1"}, {"", "", ""}, {long, "u", "op"}, {"s", long, long}} {
		id := EventID(in[0], in[1], in[2])
		if !IsEventID(id, in[0], in[1], in[2]) {
			t.Fatalf("%q: its own id refused", in)
		}
		for i := range id {
			b := []byte(id)
			b[i] ^= 1
			if IsEventID(string(b), in[0], in[1], in[2]) {
				t.Fatalf("%q: %s taken for %s", in, b, id)
			}
		}
		if IsEventID(id[:31], in[0], in[1], in[2]) || IsEventID(id, in[0], in[1], in[2]+"x") {
			t.Fatalf("%q: a short id or another op taken", in)
		}
	}
}

package engine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// The reference: decode protojson into any, turn the 64-bit fields'
// strings into numbers, marshal again (what partJSON did before
// numbers64).
func referencePartJSON(m proto.Message) ([]byte, error) {
	b, err := partOptions.Marshal(m)
	if err != nil {
		return nil, err
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	numbers(v, m.ProtoReflect().Descriptor())
	return json.Marshal(v)
}

// numbers turns the 64-bit integer fields of v, the JSON of a message of
// descriptor md, from strings into numbers, recursively.
func numbers(v any, md protoreflect.MessageDescriptor) {
	obj, ok := v.(map[string]any)
	if !ok {
		return
	}
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		x, ok := obj[fd.TextName()]
		if !ok {
			continue
		}
		switch {
		case fd.IsMap():
			if m, ok := x.(map[string]any); ok {
				for k, e := range m {
					if is64(fd.MapValue()) {
						m[k] = number(e)
					} else if fd.MapValue().Message() != nil {
						numbers(e, fd.MapValue().Message())
					}
				}
			}
		case fd.IsList():
			if l, ok := x.([]any); ok {
				for j, e := range l {
					if is64(fd) {
						l[j] = number(e)
					} else if fd.Message() != nil {
						numbers(e, fd.Message())
					}
				}
			}
		case is64(fd):
			obj[fd.TextName()] = number(x)
		case fd.Message() != nil:
			numbers(x, fd.Message())
		}
	}
}

func number(x any) any {
	if s, ok := x.(string); ok {
		return json.Number(s)
	}
	return x
}

// fill sets every field of m (lists: two elements; messages: to depth 3;
// oneofs: the option variant selects, by index), so every field of the
// schema is encoded somewhere.
func fill(m protoreflect.Message, variant, depth int) {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if o := fd.ContainingOneof(); o != nil && !o.IsSynthetic() && o.Fields().Get(variant%o.Fields().Len()) != fd {
			continue
		}
		switch {
		case fd.IsMap():
			continue // the schema has none
		case fd.IsList():
			l := m.Mutable(fd).List()
			for j := 0; j < 2; j++ {
				if fd.Message() != nil {
					if depth == 0 {
						break
					}
					e := l.NewElement()
					fill(e.Message(), variant+j, depth-1)
					l.Append(e)
				} else {
					l.Append(scalar(fd, variant+j))
				}
			}
		case fd.Message() != nil:
			if depth > 0 {
				fill(m.Mutable(fd).Message(), variant, depth-1)
			}
		default:
			m.Set(fd, scalar(fd, variant))
		}
	}
}

func scalar(fd protoreflect.FieldDescriptor, v int) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(v%2 == 0)
	case protoreflect.EnumKind:
		vals := fd.Enum().Values()
		return protoreflect.ValueOfEnum(vals.Get(v % vals.Len()).Number())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(-7 - v))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(uint32(7 + v))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(-1_700_000_000_123 - int64(v))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(1<<53 - 1 - uint64(v))
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(1.5)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(-2.25)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString("s \"12\" \\ é\u2028 {\"seq\":\"3\"}")
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{0, 1, 2, 250})
	}
	panic(fd.Kind())
}

// TestNumbers64MatchesTheReference: for every message the gateway sends (and the timeline stores)
// as a part, with every field set, the one-pass rewrite reads back as the
// same JSON value as the decode-and-re-marshal it replaced.
func TestNumbers64MatchesTheReference(t *testing.T) {
	for _, m := range []proto.Message{&pb.TimelineEntry{}, &pb.Contacts{}, &pb.UserGroups{}, &pb.Conversation{}} {
		for variant := 0; variant < 12; variant++ {
			x := m.ProtoReflect().New()
			fill(x, variant, 3)
			got, err := MarshalPart(x.Interface())
			if err != nil {
				t.Fatal(err)
			}
			want, err := referencePartJSON(x.Interface())
			if err != nil {
				t.Fatal(err)
			}
			var g, w any
			for _, p := range []struct {
				b []byte
				v *any
			}{{got, &g}, {want, &w}} {
				d := json.NewDecoder(bytes.NewReader(p.b))
				d.UseNumber()
				if err := d.Decode(p.v); err != nil {
					t.Fatalf("%T variant %d: %v\n%s", m, variant, err, p.b)
				}
			}
			if !reflect.DeepEqual(g, w) {
				t.Fatalf("%T variant %d:\n got %s\nwant %s", m, variant, got, want)
			}
			if _, entry := m.(*pb.TimelineEntry); entry && !bytes.Contains(got, []byte(":-17000000001")) {
				t.Fatalf("%T variant %d: no 64-bit number in %s", m, variant, got)
			}
		}
	}
	if _, err := numbers64([]byte(`{"seq":"1"`), (&pb.TimelineEntry{}).ProtoReflect().Descriptor()); err == nil {
		t.Fatal("no error for truncated JSON")
	}
}

func BenchmarkPartJSONReference(b *testing.B) {
	e := &pb.TimelineEntry{Seq: 121, From: "alice", MultiDevice: true, ConversationId: "bob",
		Source: &pb.Event{Kind: pb.Kind_KIND_MESSAGE_SEND, TimeUnixMs: 1_700_000_000_123, App: "a", EventId: "0123456789abcdef",
			Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob", Body: make([]byte, 200)}}}}
	for i := 0; i < b.N; i++ {
		if _, err := referencePartJSON(e); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPartJSON(b *testing.B) {
	e := &pb.TimelineEntry{Seq: 121, From: "alice", MultiDevice: true, ConversationId: "bob",
		Source: &pb.Event{Kind: pb.Kind_KIND_MESSAGE_SEND, TimeUnixMs: 1_700_000_000_123, App: "a", EventId: "0123456789abcdef",
			Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob", Body: make([]byte, 200)}}}}
	for i := 0; i < b.N; i++ {
		if _, err := MarshalPart(e); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkProtojsonOnly is the floor: protojson alone, no rewrite.
func BenchmarkProtojsonOnly(b *testing.B) {
	e := &pb.TimelineEntry{Seq: 121, From: "alice", MultiDevice: true, ConversationId: "bob",
		Source: &pb.Event{Kind: pb.Kind_KIND_MESSAGE_SEND, TimeUnixMs: 1_700_000_000_123, App: "a", EventId: "0123456789abcdef",
			Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob", Body: make([]byte, 200)}}}}
	for i := 0; i < b.N; i++ {
		if _, err := partOptions.Marshal(e); err != nil {
			b.Fatal(err)
		}
	}
}

// MarshalPart writes most messages directly; its bytes are the reference
// way's (protojson, then numbers64) byte for byte, for every message of
// the schema with every field set, in every oneof variant, and for
// strings that need every kind of escape.
func TestMarshalPartMatchesProtojson(t *testing.T) {
	strs := []string{"", "plain", "s \"12\" \\ é\u2028 {\"seq\":\"3\"}", "\x00\x01\x07\x08\x09\x0a\x0b\x0c\x0d\x1b\x1f ~\x7f",
		"\ufffd valid replacement char, 日本語, emoji \U0001F600", "</script>&<>'"}
	var msgs []protoreflect.MessageDescriptor
	for _, fd := range []protoreflect.FileDescriptor{pb.File_mdsync_v1_event_proto, pb.File_mdsync_v1_state_proto} {
		for i := 0; i < fd.Messages().Len(); i++ {
			msgs = append(msgs, fd.Messages().Get(i))
		}
	}
	direct := 0
	for _, md := range msgs {
		mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName())
		if err != nil {
			t.Fatal(err)
		}
		for variant := 0; variant < 24; variant++ {
			x := mt.New()
			fill(x, variant, 3)
			setStrings(x, strs[variant%len(strs)])
			got, err := MarshalPart(x.Interface())
			if err != nil {
				t.Fatal(err)
			}
			want, err := marshalPartReference(x.Interface())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s variant %d:\n got %s\nwant %s", md.FullName(), variant, got, want)
			}
			if _, err := appendMessage(nil, x); err == nil {
				direct++
			}
		}
		// The empty message.
		if got, _ := MarshalPart(mt.New().Interface()); string(got) != "{}" {
			t.Fatalf("%s empty: %s", md.FullName(), got)
		}
	}
	if direct == 0 {
		t.Fatal("no message was encoded directly: the comparison is of the reference with itself")
	}
	// A string that is not UTF-8 is refused as protojson refuses it.
	bad := &pb.TimelineEntry{From: "a\xffb"}
	if _, err := MarshalPart(bad); err == nil {
		t.Fatal("no error for a string that is not UTF-8")
	}
}

// setStrings sets every populated string field of m, at any depth, to s.
func setStrings(m protoreflect.Message, s string) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Kind() == protoreflect.StringKind:
			l := v.List()
			for j := 0; j < l.Len(); j++ {
				l.Set(j, protoreflect.ValueOfString(s+fmt.Sprint(j)))
			}
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for j := 0; j < l.Len(); j++ {
				setStrings(l.Get(j).Message(), s)
			}
		case fd.Kind() == protoreflect.StringKind:
			m.Set(fd, protoreflect.ValueOfString(s))
		case fd.Message() != nil && !fd.IsMap():
			setStrings(v.Message(), s)
		}
		return true
	})
}

// FuzzAppendEvent: the direct encoding of an event with no payload or a
// message payload is the reference's (protojson, then numbers64) byte for
// byte, strings needing escapes and not UTF-8 included; other payloads
// and a nil message are left to the general way.
func FuzzAppendEvent(f *testing.F) {
	f.Add(uint32(1), "app", "u\x00app\x00alice", "0123456789abcdef", "op-1", int32(23), "alice", "dev-1", false,
		int64(1_700_000_000_123), uint8(1), int32(1), "bob", "cm-1", "text/plain", []byte("hello"), "")
	f.Add(uint32(0), "", "", "", "", int32(0), "", "", true, int64(-5), uint8(0), int32(0), "", "", "", []byte(nil), "")
	f.Add(uint32(7), "a\"\\\n\x01\u2028é", "s", "e", "c", int32(999), "u\xff", "l", true, int64(0), uint8(2), int32(77), "t", "m", "ct", []byte{0, 1, 2}, "g")
	f.Add(uint32(1), "app", "s", "e", "c", int32(1), "u", "l", false, int64(1), uint8(3), int32(1), "", "", "", []byte(nil), "")
	f.Fuzz(func(t *testing.T, sv uint32, app, stream, id, op string, kind int32, user, login string, admin bool,
		ms int64, shape uint8, ct int32, to, cmid, ctype string, body []byte, gid string) {
		ev := &pb.Event{SchemaVersion: sv, App: app, StreamKey: stream, EventId: id, ClientOpId: op, Kind: pb.Kind(kind), TimeUnixMs: ms}
		if user != "" || login != "" || admin {
			ev.Actor = &pb.Actor{User: user, LoginId: login, Admin: admin}
		}
		msg := &pb.MessageSend{ChatType: pb.ChatType(ct), To: to, ClientMsgId: cmid, ContentType: ctype, Body: body, GroupId: gid}
		switch shape % 5 {
		case 1:
			ev.Payload = &pb.Event_Message{Message: msg}
		case 2:
			ev.Payload = &pb.Event_Message{Message: &pb.MessageSend{}}
		case 3:
			ev.Payload = &pb.Event_Login{Login: &pb.Login{LoginId: login}}
		case 4:
			ev.Payload = &pb.Event_Message{}
		}
		want, werr := marshalPartReference(ev)
		got, ok := appendEvent([]byte("x"), ev)
		direct := shape%5 < 3
		if ok != (direct && werr == nil) {
			t.Fatalf("%v: direct %v, reference error %v", ev, ok, werr)
		}
		if ok && !bytes.Equal(got[1:], want) {
			t.Fatalf("%v:\n got %s\nwant %s", ev, got[1:], want)
		}
		if !ok && string(got) != "x" {
			t.Fatalf("refused, but appended %q", got)
		}
		// MarshalPart, the way callers take, agrees whichever way it went.
		if mp, err := MarshalPart(ev); (err == nil) != (werr == nil) || !bytes.Equal(mp, want) {
			t.Fatalf("MarshalPart(%v) = %s, %v; want %s, %v", ev, mp, err, want, werr)
		}
	})
}

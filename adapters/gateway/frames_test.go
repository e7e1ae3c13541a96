package gateway

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// FuzzDecodeFrame: the client frame decoder never panics, refuses with a
// code, and every frame it accepts satisfies the protocol's limits.
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range []string{
		`{"type":"login","id":"1","app":"app","user":"alice","password":"pw","platform":1,"device_name":"d","extension":"{}","auto_login":true}`,
		`{"type":"resume","id":"2","app":"app","user":"alice","token":"t","login_id":"A1","epoch":"e","seq":42}`,
		`{"type":"op","id":"3","event":{"kind":"KIND_MESSAGE_SEND","client_op_id":"m-1","message":{"chat_type":"CHAT_TYPE_USER","to":"bob","client_msg_id":"m-1","body":"aGk="}}}`,
		`{"type":"ack","epoch":"e","seq":18446744073709551615}`,
		`{"type":"history","id":"4","chat_type":2,"conversation_id":"g1","before":10,"limit":100}`,
		`{"type":"self_ids","id":"5"}`, `{"type":"ping"}`, `{"type":"nope"}`, `{}`, `[]`, `{"type":"ack","seq":-1,"epoch":"e"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, id, err := decodeFrame(b)
		if err != nil {
			if fr != nil {
				t.Fatal("a refused frame was returned")
			}
			if c := engine.CodeOf(err); c != engine.CodeInvalidArgument && c != engine.CodeMissingField &&
				c != engine.CodeTooLarge && c != engine.CodeUnknownKind && c != engine.CodeForbidden {
				t.Fatalf("refusal code %d", c)
			}
			if len(id) > maxRequestIDBytes {
				t.Fatalf("refusal carries an id of %d bytes", len(id))
			}
			return
		}
		if id != fr.ID || len(fr.ID) > maxRequestIDBytes {
			t.Fatalf("id %q / %q", id, fr.ID)
		}
		switch fr.Type {
		case typeLogin, typeResume:
			if !engine.ValidID(fr.App) || !engine.ValidID(fr.User) || (fr.Password == "" && fr.Token == "") ||
				len(fr.Password) > maxCredentialBytes || len(fr.Token) > maxCredentialBytes {
				t.Fatalf("accepted %s with bad identity: %+v", fr.Type, fr)
			}
			if fr.Type == typeResume && !engine.ValidID(fr.LoginID) {
				t.Fatalf("resume without a login id: %+v", fr)
			}
			if fr.Type == typeLogin {
				if fr.LoginID != "" && !engine.ValidID(fr.LoginID) {
					t.Fatalf("bad login id %q", fr.LoginID)
				}
				if fr.Platform < engine.MinPlatform || fr.Platform > engine.MaxPlatform ||
					len(fr.DeviceName) > engine.MaxDeviceNameBytes || len(fr.Extension) > engine.MaxExtensionBytes {
					t.Fatalf("accepted login out of range: %+v", fr)
				}
			}
			if len(fr.Epoch) > maxEpochBytes {
				t.Fatal("long epoch")
			}
		case typeOp:
			if fr.Event == nil {
				t.Fatal("op without event")
			}
		case typeAck:
			if fr.Epoch == "" || len(fr.Epoch) > maxEpochBytes {
				t.Fatalf("ack epoch %q", fr.Epoch)
			}
		case typeHistory:
			if fr.Limit < 1 || fr.Limit > maxHistoryLimit || !engine.ValidID(fr.ConversationID) {
				t.Fatalf("history %+v", fr)
			}
			if _, ok := pb.ChatType_name[int32(fr.ChatType)]; !ok || fr.ChatType == pb.ChatType_CHAT_TYPE_UNSPECIFIED {
				t.Fatalf("chat type %d", fr.ChatType)
			}
		case typeSelfIDs, typePing:
		default:
			t.Fatalf("accepted type %q", fr.Type)
		}
	})
}

// TestPartJSONNumbers: 64-bit integers of protobuf parts are JSON numbers
// (the frames around them use numbers too), and the part still reads back
// as the same message with protojson.
func TestPartJSONNumbers(t *testing.T) {
	e := &pb.TimelineEntry{Seq: 121, From: "alice", MultiDevice: true, ConversationId: "bob",
		Source: &pb.Event{Kind: pb.Kind_KIND_MESSAGE_SEND, TimeUnixMs: 1_700_000_000_123, App: "a",
			Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob", Body: []byte("<hi>")}}}}
	b, err := pjson.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m["seq"] != float64(121) || m["source"].(map[string]any)["time_unix_ms"] != float64(1_700_000_000_123) {
		t.Fatalf("64-bit fields are not numbers: %s", b)
	}
	back := &pb.TimelineEntry{}
	if err := protojson.Unmarshal(b, back); err != nil || !proto.Equal(back, e) {
		t.Fatalf("round trip: %v\n%s", err, b)
	}
	f, err := encodeEvent("ep", e)
	if err != nil {
		t.Fatal(err)
	}
	var ev struct {
		Seq   json.Number `json:"seq"`
		Entry struct {
			Seq json.Number `json:"seq"`
		} `json:"entry"`
	}
	d := json.NewDecoder(bytes.NewReader(f))
	d.UseNumber()
	if err := d.Decode(&ev); err != nil || ev.Seq != "121" || ev.Entry.Seq != "121" {
		t.Fatalf("event frame %s (%v)", f, err)
	}
}

func BenchmarkEncodeEvent(b *testing.B) {
	e := &pb.TimelineEntry{Seq: 121, From: "alice", MultiDevice: true, ConversationId: "bob",
		Source: &pb.Event{Kind: pb.Kind_KIND_MESSAGE_SEND, TimeUnixMs: 1_700_000_000_123, App: "a", EventId: "0123456789abcdef",
			Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob", Body: make([]byte, 200)}}}}
	for i := 0; i < b.N; i++ {
		if _, err := encodeEvent("ep", e); err != nil {
			b.Fatal(err)
		}
	}
}

// TestEncodeEventMatchesJSONMarshal: the hand-built event frame reads
// back as the frame json.Marshal writes, for plain and escaped epochs.
func TestEncodeEventMatchesJSONMarshal(t *testing.T) {
	e := &pb.TimelineEntry{Seq: 1 << 40, EntryId: "e<1>", From: "b&ob", MultiDevice: true, SourceOffset: 17_000_000_001, ChatType: pb.ChatType_CHAT_TYPE_GROUP,
		Source: &pb.Event{Kind: pb.Kind_KIND_MESSAGE_SEND, TimeUnixMs: 1_700_000_000_123, Payload: &pb.Event_Message{Message: &pb.MessageSend{To: "g\u2028", Body: []byte{0, 250}}}}}
	for _, epoch := range []string{"0123abcdef", "", "a<b>\"c"} {
		got, err := encodeEvent(epoch, e)
		if err != nil {
			t.Fatal(err)
		}
		part, _ := pjson.Marshal(e)
		want, _ := json.Marshal(eventFrame{Type: "event", Epoch: epoch, Seq: e.Seq, Name: entryName(e), Entry: part})
		// The same JSON value (encoding/json also escapes <, >, & and
		// U+2028 inside the entry's strings; both read back the same).
		if g, w := decodeNumbers(t, got), decodeNumbers(t, want); !reflect.DeepEqual(g, w) {
			t.Fatalf("epoch %q:\n got %s\nwant %s", epoch, got, want)
		}
	}
}

func decodeNumbers(t *testing.T, b []byte) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil || d.More() {
		t.Fatalf("not one JSON value (%v): %s", err, b)
	}
	return v
}

// FuzzFastFrame: fastFrame accepts only frames the full decoder accepts,
// with the same result, so decodeFrame gives every input what the full
// decoder gives (a refusal included: same code, message and id).
func FuzzFastFrame(f *testing.F) {
	for _, s := range fastFrameSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		full, fullID, fullErr := decodeFrameFull(b)
		if fast, ok := fastFrame(b); ok {
			if fullErr != nil {
				t.Fatalf("fast path accepted what the full decoder refuses (%v)", fullErr)
			}
			if !sameFrame(fast, full) {
				t.Fatalf("fast %+v\nfull %+v", fast, full)
			}
		}
		got, id, err := decodeFrameFields(b)
		if id != fullID || (err == nil) != (fullErr == nil) || (err != nil && (err.Error() != fullErr.Error() || engine.CodeOf(err) != engine.CodeOf(fullErr))) {
			t.Fatalf("decodeFrameFields (%q, %v), full decoder (%q, %v)", id, err, fullID, fullErr)
		}
		if err == nil && !sameFrame(got, full) {
			t.Fatalf("got %+v\nfull %+v", got, full)
		}
	})
}

// fastFrameSeeds: the plain shapes, and near misses the full decoder must
// answer (escapes, repeated or differently cased keys, bad numbers, bad
// events, trailing data, long ids).
var fastFrameSeeds = []string{
	opFrameJSON,
	`{"type":"op","id":"3","event":{"kind":"KIND_MESSAGE_SEND","client_op_id":"m-1","message":{"chat_type":"CHAT_TYPE_USER","to":"bob","client_msg_id":"m-1","body":"aGk="}}}`,
	` {"type" : "op" , "event" : {"kind":"KIND_CONVERSATION_PIN","client_op_id":"p","conversation":{"chat_type":1,"conversation_id":"bob"}} } `,
	`{"type":"ack","epoch":"e","seq":18446744073709551615}`, `{"type":"ack","epoch":"e","seq":18446744073709551616}`,
	`{"type":"ack","epoch":"e"}`, `{"type":"ack","seq":3}`, `{"type":"ack","epoch":"","seq":3}`, `{"type":"ack","epoch":"e","seq":-1}`,
	`{"type":"ack","epoch":"e","seq":01}`, `{"type":"ack","epoch":"e","seq":1.0}`, `{"type":"ack","epoch":"e","seq":1e3}`, `{"type":"ack","epoch":"e","seq":"7"}`,
	`{"type":"ack","id":"a","epoch":"e","seq":0}`, `{"Type":"ack","epoch":"e","seq":1}`, `{"type":"ack","type":"op","epoch":"e","seq":1}`,
	`{"type":"op","id":"x\u0041","event":{"kind":"KIND_MESSAGE_SEND"}}`, `{"type":"op","id":"é","event":{}}`,
	`{"type":"op","id":"1","event":null}`, `{"type":"op","id":"1"}`, `{"type":"op","id":"1","event":{"kind":"KIND_NOPE"}}`,
	`{"type":"op","id":"1","event":{"kind":"KIND_MESSAGE_SEND","client_op_id":"m"}}`, `{"type":"op","id":"1","event":{"kind":"KIND_LOGIN"}}`,
	`{"type":"op","id":"1","event":{"kind":"KIND_MESSAGE_SEND","x":"}"}}`, `{"type":"op","id":"1","event":{"kind":"KIND_MESSAGE_SEND",}}`,
	`{"type":"op","id":"1","event":{"a":"\"}"}}`, `{"type":"op","id":"1","event":{}}x`, `{"type":"op","id":"1","event":{}}{}`,
	`{"type":"op","id":"12345678901234567890123456789012345678901234567890123456789012345","event":{}}`, `{"type":"op","seq":1,"event":{}}`,
	`{"type":"ping"}`, `{}`, `{ }`, `[]`, `{"type":"op",}`, `{"type":"op" "id":"1"}`,
}

const opFrameJSON = `{"type":"op","id":"r-1042","event":{"kind":"KIND_MESSAGE_SEND","client_op_id":"c-7-1042","message":{"chat_type":"CHAT_TYPE_USER","to":"u00042","client_msg_id":"c-7-1042","body":"aGVsbG8gZnJvbSB0aGUgbG9hZCBnZW5lcmF0b3I="}}}`

func sameFrame(a, b *frame) bool {
	ae, be := a.Event, b.Event
	x, y := *a, *b
	x.Event, y.Event = nil, nil
	return reflect.DeepEqual(x, y) && proto.Equal(ae, be)
}

// TestFastFrameSeeds runs FuzzFastFrame's checks on its seeds in every
// test run, and shows that the plain shapes take the fast path.
func TestFastFrameSeeds(t *testing.T) {
	for _, s := range []string{opFrameJSON, fastFrameSeeds[2], fastFrameSeeds[3], `{"type":"ack","epoch":"e"}`} {
		if _, ok := fastFrame([]byte(s)); !ok {
			t.Errorf("fast path refused %s", s)
		}
	}
}

// BenchmarkDecodeOpFrame: an op frame of a 1:1 message through
// decodeFrame and through the full decoder alone, against raw: only
// json.Valid's scan of the same bytes. Compare each with raw in one run.
func BenchmarkDecodeOpFrame(b *testing.B) {
	frameB := []byte(opFrameJSON)
	b.Run("raw", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if !json.Valid(frameB) {
				b.Fatal("invalid")
			}
		}
	})
	for _, c := range []struct {
		name string
		fn   func([]byte) (*frame, string, error)
	}{{"full", decodeFrameFull}, {"decodeFrame", decodeFrame}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := c.fn(frameB); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// FuzzFastMessageEvent: fastMessageEvent accepts only events protojson
// (engine.DecodeEventJSON, as the gateway reads them) accepts, with the
// same result.
func FuzzFastMessageEvent(f *testing.F) {
	for _, s := range fastEventSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fast, ok := fastMessageEvent(b)
		if !ok {
			return
		}
		full, err := engine.DecodeEventJSON(b, false)
		if err != nil {
			t.Fatalf("fast path accepted what protojson refuses (%v)", err)
		}
		if !proto.Equal(fast, full) {
			t.Fatalf("fast %v\nfull %v", fast, full)
		}
	})
}

// fastEventSeeds: the SDK's shape in both key spellings, and near misses
// protojson must answer (repeated keys, numbers and null for strings and
// enums, URL or unpadded base64, escapes, other payloads, unknown names).
var fastEventSeeds = []string{
	`{"kind":"KIND_MESSAGE_SEND","client_op_id":"c-7-1042","message":{"chat_type":"CHAT_TYPE_USER","to":"u00042","client_msg_id":"c-7-1042","body":"aGVsbG8gZnJvbSB0aGUgbG9hZCBnZW5lcmF0b3I="}}`,
	`{"clientOpId":"c","kind":"KIND_MESSAGE_SEND","message":{"chatType":"CHAT_TYPE_GROUP","to":"g","clientMsgId":"c","contentType":"text/plain","body":"","groupId":"g"}}`,
	` { "kind" : "KIND_MESSAGE_SEND" , "message" : { "chat_type" : "CHAT_TYPE_THREAD" , "to" : "t" , "group_id" : "g" , "body" : "aGk=" } } `,
	`{"kind":"KIND_MESSAGE_SEND","kind":"KIND_MESSAGE_SEND","message":{"to":"a"}}`,
	`{"kind":"KIND_MESSAGE_SEND","client_op_id":"a","clientOpId":"b","message":{"to":"a"}}`,
	`{"kind":"KIND_MESSAGE_SEND","message":{"to":"a","to":"b"}}`,
	`{"kind":"KIND_MESSAGE_SEND","message":{"clientMsgId":"a","client_msg_id":"b"}}`,
	`{"kind":"KIND_MESSAGE_SEND","message":{"to":"a"},"message":{"to":"b"}}`,
	`{"kind":6,"message":{"to":"a"}}`, `{"kind":"KIND_MESSAGE_SEND","message":{"chat_type":1,"to":"a"}}`,
	`{"kind":"KIND_MESSAGE_SEND","message":{"chat_type":"CHAT_TYPE_NOPE","to":"a"}}`,
	`{"kind":"KIND_MESSAGE_SEND","message":{"to":null}}`, `{"kind":"KIND_MESSAGE_SEND","message":null}`,
	`{"kind":"KIND_MESSAGE_SEND","message":{"body":"aGk"}}`, `{"kind":"KIND_MESSAGE_SEND","message":{"body":"a-_k"}}`,
	`{"kind":"KIND_MESSAGE_SEND","message":{"body":"aG=k"}}`, `{"kind":"KIND_MESSAGE_SEND","message":{"body":"aGl="}}`,
	`{"kind":"KIND_MESSAGE_SEND","message":{"to":"a\u0041"}}`, `{"kind":"KIND_MESSAGE_SEND","message":{"to":"é"}}`,
	`{"kind":"KIND_MESSAGE_SEND","message":{}}`, `{"kind":"KIND_MESSAGE_SEND"}`, `{}`, `{"kind":"KIND_UNSPECIFIED","message":{"to":"a"}}`,
	`{"kind":"KIND_NOPE","message":{"to":"a"}}`, `{"kind":"KIND_LOGOUT","message":{"to":"a"}}`,
	`{"kind":"KIND_MESSAGE_SEND","message":{"to":"a"},"receipt":{}}`, `{"kind":"KIND_MESSAGE_SEND","app":"x","message":{"to":"a"}}`,
	`{"kind":"KIND_MESSAGE_SEND","message":{"to":"a","extra":"b"}}`, `{"kind":"KIND_MESSAGE_SEND","message":{"to":"a"}} x`,
	`{"kind":"KIND_MESSAGE_SEND","message":{"to":"a",}}`, `{"kind":"KIND_MESSAGE_SEND",,"message":{"to":"a"}}`,
}

// The SDK's own encoding of a message takes the fast path, and the seeds
// pass FuzzFastMessageEvent's check in every test run.
func TestFastMessageEvent(t *testing.T) {
	ev := &pb.Event{Kind: pb.Kind_KIND_MESSAGE_SEND, ClientOpId: "m-1", Payload: &pb.Event_Message{Message: &pb.MessageSend{
		ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob", ClientMsgId: "m-1", ContentType: "text/plain", Body: []byte("hello")}}}
	for _, opts := range []protojson.MarshalOptions{{UseProtoNames: true}, {}} {
		b, err := opts.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := fastMessageEvent(b)
		if !ok || !proto.Equal(got, ev) {
			t.Fatalf("fast path on %s: %v, %v", b, got, ok)
		}
	}
	for _, s := range fastEventSeeds[:3] {
		if _, ok := fastMessageEvent([]byte(s)); !ok {
			t.Errorf("fast path refused %s", s)
		}
	}
	for _, s := range fastEventSeeds {
		fast, ok := fastMessageEvent([]byte(s))
		if !ok {
			continue
		}
		full, err := engine.DecodeEventJSON([]byte(s), false)
		if err != nil || !proto.Equal(fast, full) {
			t.Errorf("%s: fast %v, protojson %v (%v)", s, fast, full, err)
		}
	}
}

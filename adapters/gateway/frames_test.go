package gateway

import (
	"testing"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
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
			if c := engine.CodeOf(err); c != engine.CodeInvalidArgument && c != engine.CodeMissingField {
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

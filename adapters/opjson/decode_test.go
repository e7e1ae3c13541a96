package opjson

import (
	"testing"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// TestParseOpMapping checks the JSON-to-event mapping of the fields whose
// meaning depends on the op.
func TestParseOpMapping(t *testing.T) {
	l := Decode(7, []byte(`{"op":"kick_device","app":"a","user":"u","login_id":"target","by_login_id":"me"}`), "demo")
	if l.Err != nil || l.Event.Actor.LoginId != "me" || l.Event.GetKickDevice().GetLoginId() != "target" || l.Event.ClientOpId != "line-7" || l.TimeMs != 7000 {
		t.Errorf("kick_device = %v %v", l.Event, l.Err)
	}
	l = Decode(1, []byte(`{"op":"policy_set","limits":{"10":3,"2":1},"auto_login":"keep_current"}`), "demo")
	ps := l.Event.GetPolicySet()
	if l.Err != nil || l.Event.App != "demo" || l.Event.Actor.User != "admin" || !l.Event.Actor.Admin ||
		len(ps.Limits) != 2 || ps.Limits[0].Platform != 2 || ps.DefaultLimit != engine.DefaultPlatformLimit ||
		ps.AutoLogin != pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KEEP_CURRENT {
		t.Errorf("policy_set = %v %v", l.Event, l.Err)
	}
	l = Decode(1, []byte(`{"op":"group_member_attributes_changed","user":"u","group_id":"g","attributes":{"z":"1","a":"2"}}`), "demo")
	if l.Err != nil || l.Event.GetGroup().Attributes[0].Key != "a" {
		t.Errorf("attributes not sorted: %v %v", l.Event, l.Err)
	}
	l = Decode(1, []byte(`{"op":"message_send","user":"u","chat_type":4,"to":"t","group_id":"g","client_msg_id":"m"}`), "demo")
	if l.Err != nil || l.Event.GetMessage().ChatType != pb.ChatType_CHAT_TYPE_THREAD {
		t.Errorf("numeric chat_type: %v %v", l.Event, l.Err)
	}
	for _, bad := range []string{
		`{"op":"message_send","user":"u","chat_type":"dm"}`,
		`{"op":"login","user":"u","auto_login":"yes"}`,
		`{"op":"policy_set","auto_login":true}`,
		`{"op":"login","user":"u","time_ms":-1}`,
		`{"user":"u"}`,
	} {
		if l := Decode(1, []byte(bad), "demo"); l.Err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

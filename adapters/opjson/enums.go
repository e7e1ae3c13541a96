package opjson

import (
	"encoding/json"
	"fmt"
	"strings"

	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// Enums are spelled as the protocol spells them (docs/protocol.md: "the
// protobuf value name", "CHAT_TYPE_USER", "REASON_KICKED"), in every JSON
// this codec and the tools built on it produce. On input the short forms
// of earlier replay files and exports ("user") are accepted too.

// ChatTypeJSON is a chat type's JSON value: its protobuf name
// ("CHAT_TYPE_USER"), or its number when this build does not know it; nil
// for the zero value (the field is left out).
func ChatTypeJSON(c pb.ChatType) any {
	if c == 0 {
		return nil
	}
	if _, ok := pb.ChatType_name[int32(c)]; ok {
		return c.String()
	}
	return int32(c)
}

// ParseChatType reads a chat type's name: the protobuf name
// ("CHAT_TYPE_USER") or the short form of earlier files ("user"), in any
// case. The zero value is refused.
func ParseChatType(s string) (pb.ChatType, error) {
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "CHAT_TYPE_") {
		name = "CHAT_TYPE_" + name
	}
	v, ok := pb.ChatType_value[name]
	if !ok || v == 0 {
		return 0, fmt.Errorf("chat_type %q is not CHAT_TYPE_USER, CHAT_TYPE_GROUP, CHAT_TYPE_CHATROOM, CHAT_TYPE_THREAD or CHAT_TYPE_SELF_DEVICE", s)
	}
	return pb.ChatType(v), nil
}

// ReasonName is the JSON name of why a session ended: its protobuf name
// ("REASON_LOGIN_OTHER_DEVICE"), as the gateway's kicked frame says it.
func ReasonName(r pb.Reason) string { return r.String() }

// chatType is a chat type in JSON: a name (ParseChatType) or the enum's
// number.
type chatType pb.ChatType

func (c *chatType) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := ParseChatType(s)
		*c = chatType(v)
		return err
	}
	var n int32
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("chat_type is a name or a number")
	}
	*c = chatType(n)
	return nil
}

package opjson

import (
	"encoding/json"
	"fmt"
	"strings"

	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// ChatTypeJSON is a chat type's JSON value ("user", "group"...), or its
// number when this build does not know it; nil for the zero value.
func ChatTypeJSON(c pb.ChatType) any {
	if c == 0 {
		return nil
	}
	if _, ok := pb.ChatType_name[int32(c)]; ok {
		return strings.ToLower(strings.TrimPrefix(c.String(), "CHAT_TYPE_"))
	}
	return int32(c)
}

// ReasonName is the JSON name of a reason: "login_other_device", "kicked"...
func ReasonName(r pb.Reason) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "REASON_"))
}

// chatType is a chat type in JSON: "user", "group", "chatroom", "thread",
// "self_device", or the enum's number.
type chatType pb.ChatType

func (c *chatType) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, ok := pb.ChatType_value["CHAT_TYPE_"+strings.ToUpper(s)]
		if !ok || v == 0 {
			return fmt.Errorf("chat_type %q is not user, group, chatroom, thread or self_device", s)
		}
		*c = chatType(v)
		return nil
	}
	var n int32
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("chat_type is a name or a number")
	}
	*c = chatType(n)
	return nil
}

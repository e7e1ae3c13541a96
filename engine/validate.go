package engine

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Limits on every size and range the engine accepts. They are part of the
// wire contract (docs/operations.md) and change only with a version note.
const (
	MaxIDBytes          = 64        // app, user, login, group, thread, room, op ids
	MaxDeviceNameBytes  = 128       // seeds: a device name shown to a kicked device
	MaxExtensionBytes   = 1024      // login extension
	MaxNameBytes        = 128       // group and thread names
	MaxReasonBytes      = 512       // group reasons, contact ext
	MaxBodyBytes        = 64 << 10  // message body
	MaxContentTypeBytes = 64        // message content type
	MaxUsersPerOp       = 100       // users named by one group/thread op
	MaxAttributes       = 20        // member attributes per op
	MaxAttrValueBytes   = 512       // one attribute value
	MaxEventBytes       = 128 << 10 // one encoded event
	MinPlatform         = 1         // seeds: osType is in [1,100]
	MaxPlatform         = 100
	MaxPlatformLimit    = 100 // devices per platform
	MaxMark             = 19  // conversation mark index 0..19
	MaxMuteMillis       = int64(365 * 24 * 3600 * 1000)
	MaxTimelineEntries  = 10_000_000                         // retention by count, per user
	MaxTimelineAgeMs    = int64(10 * 365 * 24 * 3600 * 1000) // retention by age
	MaxRemoteAddrBytes  = 128                                // a device's address (IPv6 with zone and port fits)
	MaxProcessBytes     = 256                                // a process's advertised host:port
)

// ReservedOpIDPrefix starts the client op ids of derived events (fan-out
// copies). A caller's op id may not start with it, or it could claim the
// identity of a future copy and have that copy dropped as a duplicate.
const ReservedOpIDPrefix = "dlv."

// ValidID reports whether s is a well-formed id: 1..64 bytes of letters,
// digits and "_-.@". The narrow alphabet keeps ids safe as key parts
// (no NUL, no separators) and in URLs.
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > MaxIDBytes {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '_' || c == '-' || c == '.' || c == '@':
		default:
			return false
		}
	}
	return true
}

func checkID(field, s string) error {
	if s == "" {
		return Errorf(CodeMissingField, "%s is required", field)
	}
	if len(s) > MaxIDBytes {
		return Errorf(CodeTooLarge, "%s is %d bytes, limit %d", field, len(s), MaxIDBytes)
	}
	if !ValidID(s) {
		return Errorf(CodeInvalidArgument, "%s %q: only letters, digits and _-.@ are allowed", field, s)
	}
	return nil
}

func checkText(field, s string, max int) error {
	if len(s) > max {
		return Errorf(CodeTooLarge, "%s is %d bytes, limit %d", field, len(s), max)
	}
	if !utf8.ValidString(s) {
		return Errorf(CodeInvalidArgument, "%s is not valid UTF-8", field)
	}
	return nil
}

func checkUsers(field string, users []string, required bool) error {
	if required && len(users) == 0 {
		return Errorf(CodeMissingField, "%s is required", field)
	}
	if len(users) > MaxUsersPerOp {
		return Errorf(CodeTooLarge, "%s has %d entries, limit %d", field, len(users), MaxUsersPerOp)
	}
	seen := make(map[string]struct{}, len(users))
	for _, u := range users {
		if err := checkID(field, u); err != nil {
			return err
		}
		if _, dup := seen[u]; dup {
			return Errorf(CodeInvalidArgument, "%s lists %q twice", field, u)
		}
		seen[u] = struct{}{}
	}
	return nil
}

func checkPlatform(p int32) error {
	if p < MinPlatform || p > MaxPlatform {
		return Errorf(CodeInvalidArgument, "platform %d is outside [%d,%d]", p, MinPlatform, MaxPlatform)
	}
	return nil
}

func checkChatType(t pb.ChatType) error {
	if _, ok := pb.ChatType_name[int32(t)]; !ok || t == pb.ChatType_CHAT_TYPE_UNSPECIFIED {
		return Errorf(CodeInvalidArgument, "chat_type %d is not a chat type", int32(t))
	}
	return nil
}

// Validate checks an operation as a caller submits it: the app, the actor,
// the client op id, the kind and its payload. It returns an *Error with a
// code; nothing is appended for an operation that fails it. Envelope fields
// the engine assigns (stream key, event id, time) are not checked here.
func Validate(ev *pb.Event) error {
	if ev == nil {
		return Errorf(CodeMissingField, "operation is required")
	}
	if err := checkID("app", ev.App); err != nil {
		return err
	}
	if ev.Actor == nil {
		return Errorf(CodeMissingField, "actor is required")
	}
	if err := checkID("actor.user", ev.Actor.User); err != nil {
		return err
	}
	if ev.Actor.LoginId != "" {
		if err := checkID("actor.login_id", ev.Actor.LoginId); err != nil {
			return err
		}
	}
	if err := checkID("client_op_id", ev.ClientOpId); err != nil {
		return err
	}
	if strings.HasPrefix(ev.ClientOpId, ReservedOpIDPrefix) {
		return Errorf(CodeInvalidArgument, "client_op_id may not start with %q (reserved for fan-out copies)", ReservedOpIDPrefix)
	}
	ki, ok := kindByValue[ev.Kind]
	if !ok {
		return UnknownKind(strconv.Itoa(int(ev.Kind)))
	}
	if err := validatePayload(ki, ev); err != nil {
		return err
	}
	if n := proto.Size(ev); n > MaxEventBytes {
		return Errorf(CodeTooLarge, "operation is %d bytes encoded, limit %d", n, MaxEventBytes)
	}
	return nil
}

// UnknownKind is the refusal of an operation whose kind mdsync does not
// know, named as the caller wrote it (a number, or a quoted name). Every
// path that reads operations (WebSocket, REST, replay) refuses with it.
func UnknownKind(kind string) *Error {
	return Errorf(CodeUnknownKind, "kind %s is not a known operation", kind)
}

// DecodeEventJSON reads an operation in protobuf's JSON mapping of
// mdsync.v1.Event, as the WebSocket `op` frame and POST /v1/operations
// carry it. Unknown fields are refused when strict, else ignored. An
// unknown kind name is UnknownKind (1002), like an unknown kind number in
// Validate; anything else that does not parse is 1001. The caller then
// sets what it owns (app, actor) and submits: Validate checks the values.
func DecodeEventJSON(b []byte, strict bool) (*pb.Event, error) {
	ev := &pb.Event{}
	err := (protojson.UnmarshalOptions{DiscardUnknown: !strict}).Unmarshal(b, ev)
	if err != nil || ev.Kind == pb.Kind_KIND_UNSPECIFIED {
		// An unknown kind name fails a strict read, and reads as kind 0
		// when unknown fields (and enum names) are discarded.
		var k struct {
			Kind json.RawMessage `json:"kind"`
		}
		var name string
		if json.NewDecoder(bytes.NewReader(b)).Decode(&k) == nil && json.Unmarshal(k.Kind, &name) == nil {
			if v, ok := pb.Kind_value[name]; !ok || kindByValue[pb.Kind(v)] == nil {
				return nil, UnknownKind(strconv.Quote(name))
			}
		}
	}
	if err != nil {
		return nil, Errorf(CodeInvalidArgument, "event is not an mdsync.v1.Event in JSON: %v", err)
	}
	return ev, nil
}

func missingPayload(ki *KindInfo, want string) error {
	return Errorf(CodeMissingField, "%s needs a %s payload", ki.Name, want)
}

func validatePayload(ki *KindInfo, ev *pb.Event) error {
	switch ki.payload {
	case plEmpty:
		if ev.Payload != nil && ev.GetEmpty() == nil {
			return Errorf(CodeInvalidArgument, "%s carries no payload", ki.Name)
		}
		if ki.Kind == pb.Kind_KIND_LOGOUT && ev.Actor.LoginId == "" {
			return Errorf(CodeMissingField, "logout needs actor.login_id")
		}
		return nil
	case plLogin:
		l := ev.GetLogin()
		if l == nil {
			return missingPayload(ki, "login")
		}
		if err := checkPlatform(l.Platform); err != nil {
			return err
		}
		if err := checkID("login.login_id", l.LoginId); err != nil {
			return err
		}
		if ev.Actor.LoginId != "" && ev.Actor.LoginId != l.LoginId {
			return Errorf(CodeInvalidArgument, "actor.login_id and login.login_id differ")
		}
		if err := checkText("login.device_name", l.DeviceName, MaxDeviceNameBytes); err != nil {
			return err
		}
		return checkText("login.extension", l.Extension, MaxExtensionBytes)
	case plKick:
		k := ev.GetKickDevice()
		if k == nil {
			return missingPayload(ki, "kick_device")
		}
		return checkID("kick_device.login_id", k.LoginId)
	case plPolicy:
		p := ev.GetPolicySet()
		if p == nil {
			return missingPayload(ki, "policy_set")
		}
		return ValidatePolicy(p)
	case plMessage:
		return validateMessage(ki, ev.GetMessage())
	case plReceipt:
		r := ev.GetReceipt()
		if r == nil {
			return missingPayload(ki, "receipt")
		}
		if err := checkChatType(r.ChatType); err != nil {
			return err
		}
		if err := checkID("receipt.conversation_id", r.ConversationId); err != nil {
			return err
		}
		return checkID("receipt.message_id", r.MessageId)
	case plConversation:
		c := ev.GetConversation()
		if c == nil {
			return missingPayload(ki, "conversation")
		}
		if err := checkChatType(c.ChatType); err != nil {
			return err
		}
		if err := checkID("conversation.conversation_id", c.ConversationId); err != nil {
			return err
		}
		if c.Mark < 0 || c.Mark > MaxMark {
			return Errorf(CodeInvalidArgument, "conversation.mark %d is outside [0,%d]", c.Mark, MaxMark)
		}
		return nil
	case plContact:
		c := ev.GetContact()
		if c == nil {
			return missingPayload(ki, "contact")
		}
		if err := checkID("contact.user", c.User); err != nil {
			return err
		}
		if c.User == ev.Actor.User {
			return Errorf(CodeInvalidArgument, "contact.user is the actor itself")
		}
		return checkText("contact.ext", c.Ext, MaxReasonBytes)
	case plGroup:
		g := ev.GetGroup()
		if g == nil {
			return missingPayload(ki, "group")
		}
		if err := checkID("group.group_id", g.GroupId); err != nil {
			return err
		}
		if err := checkUsers("group.users", g.Users, ki.needsUsers); err != nil {
			return err
		}
		if err := checkText("group.name", g.Name, MaxNameBytes); err != nil {
			return err
		}
		if err := checkText("group.reason", g.Reason, MaxReasonBytes); err != nil {
			return err
		}
		if g.MuteMs < 0 || g.MuteMs > MaxMuteMillis {
			return Errorf(CodeInvalidArgument, "group.mute_ms %d is outside [0,%d]", g.MuteMs, MaxMuteMillis)
		}
		if len(g.Attributes) > MaxAttributes {
			return Errorf(CodeTooLarge, "group.attributes has %d entries, limit %d", len(g.Attributes), MaxAttributes)
		}
		for i, a := range g.Attributes {
			if err := checkID("group.attributes.key", a.Key); err != nil {
				return err
			}
			if i > 0 && g.Attributes[i-1].Key >= a.Key {
				return Errorf(CodeInvalidArgument, "group.attributes must be sorted by key, without duplicates")
			}
			if err := checkText("group.attributes.value", a.Value, MaxAttrValueBytes); err != nil {
				return err
			}
		}
		if ki.Kind == pb.Kind_KIND_GROUP_MEMBER_ATTRIBUTES_CHANGED && len(g.Attributes) == 0 {
			return Errorf(CodeMissingField, "group.attributes is required")
		}
		if ki.Kind == pb.Kind_KIND_GROUP_ASSIGN_OWNER && len(g.Users) != 1 {
			return Errorf(CodeInvalidArgument, "group_assign_owner names exactly one user")
		}
		return nil
	case plThread:
		t := ev.GetThread()
		if t == nil {
			return missingPayload(ki, "thread")
		}
		if err := checkID("thread.thread_id", t.ThreadId); err != nil {
			return err
		}
		if err := checkID("thread.group_id", t.GroupId); err != nil {
			return err
		}
		if err := checkText("thread.name", t.Name, MaxNameBytes); err != nil {
			return err
		}
		if t.MessageId != "" {
			if err := checkID("thread.message_id", t.MessageId); err != nil {
				return err
			}
		}
		return checkUsers("thread.users", t.Users, ki.needsUsers)
	case plDeliver:
		// Fan-out copies are derived by mdsync from accepted events; a
		// caller can never submit one (invariant 7).
		return Errorf(CodeForbidden, "%s is derived by mdsync and cannot be submitted", ki.Name)
	case plPresence:
		p := ev.GetPresence()
		if p == nil {
			return missingPayload(ki, "presence")
		}
		if ev.Actor.LoginId == "" {
			return Errorf(CodeMissingField, "%s needs actor.login_id", ki.Name)
		}
		if err := checkText("presence.remote_addr", p.RemoteAddr, MaxRemoteAddrBytes); err != nil {
			return err
		}
		if err := checkText("presence.process", p.Process, MaxProcessBytes); err != nil {
			return err
		}
		if err := checkID("presence.incarnation", p.Incarnation); err != nil {
			return err
		}
		if p.LastSeenUnixMs < 0 {
			return Errorf(CodeInvalidArgument, "presence.last_seen_unix_ms %d is negative", p.LastSeenUnixMs)
		}
		return nil
	case plChatroom:
		c := ev.GetChatroom()
		if c == nil {
			return missingPayload(ki, "chatroom")
		}
		return checkID("chatroom.room_id", c.RoomId)
	}
	return Errorf(CodeInternal, "kind %s has no validator", ki.Name)
}

func validateMessage(ki *KindInfo, m *pb.MessageSend) error {
	if m == nil {
		return missingPayload(ki, "message")
	}
	if err := checkChatType(m.ChatType); err != nil {
		return err
	}
	if err := checkID("message.to", m.To); err != nil {
		return err
	}
	if err := checkID("message.client_msg_id", m.ClientMsgId); err != nil {
		return err
	}
	if strings.HasPrefix(m.ClientMsgId, ReservedOpIDPrefix) {
		return Errorf(CodeInvalidArgument, "message.client_msg_id may not start with %q (reserved)", ReservedOpIDPrefix)
	}
	if err := checkText("message.content_type", m.ContentType, MaxContentTypeBytes); err != nil {
		return err
	}
	if len(m.Body) > MaxBodyBytes {
		return Errorf(CodeTooLarge, "message.body is %d bytes, limit %d", len(m.Body), MaxBodyBytes)
	}
	if m.ChatType == pb.ChatType_CHAT_TYPE_THREAD {
		if err := checkID("message.group_id", m.GroupId); err != nil {
			return err
		}
	} else if m.GroupId != "" {
		return Errorf(CodeInvalidArgument, "message.group_id is only for thread messages")
	}
	return nil
}

// Package opjson is the operations JSON codec: one operation (an event as
// a client submits it) per JSON line, as `mdsync replay` reads it and
// `mdsync export` writes it (docs/operations.md, docs/events.md).
//
// Both directions are driven by engine's kind table: the fields an
// operation may carry follow its payload (engine.KindInfo.Payload), and
// FuzzRoundTrip checks Decode(Encode(ev)) == ev for every kind, so a kind
// or payload added to engine fails the tests until it is handled here.
package opjson

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// Line is one parsed input line: the operation, or why it was refused.
type Line struct {
	N      int    // 1-based line number in the input
	Op     string // the op's JSON name ("login"), as far as it was read
	Event  *pb.Event
	TimeMs int64 // the event's time: time_ms, or N seconds when absent
	Err    error // an *engine.Error when the line is refused
}

// MaxLineBytes bounds one input line. An event is at most
// engine.MaxEventBytes encoded; JSON escaping can grow text up to 6x.
const MaxLineBytes = 6*engine.MaxEventBytes + 4096

// ReadLines reads every line of in. Blank lines are skipped but counted, so
// line numbers match an editor's. Lines that do not parse are returned with
// Err set; only a read error fails the call.
func ReadLines(in io.Reader, defApp string) ([]Line, error) {
	br := bufio.NewReaderSize(in, 64<<10)
	var out []Line
	for n := 1; ; n++ {
		b, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(b)) > 0 {
			if len(b) > MaxLineBytes {
				out = append(out, Line{N: n, Err: engine.Errorf(engine.CodeTooLarge, "line is %d bytes, limit %d", len(b), MaxLineBytes)})
			} else {
				out = append(out, Decode(n, b, defApp))
			}
		}
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("opjson: read line %d: %w", n, err)
		}
	}
}

// opJSON is the input schema of docs/operations.md. Which fields an op may
// carry is in PayloadFields; the engine validates values and limits.
type opJSON struct {
	Op         string `json:"op"`
	App        string `json:"app"`
	User       string `json:"user"`
	ClientOpID string `json:"client_op_id"`
	TimeMs     *int64 `json:"time_ms"`
	Admin      bool   `json:"admin"`
	LoginID    string `json:"login_id"`

	Platform   int32  `json:"platform"`
	DeviceName string `json:"device_name"`
	Extension  string `json:"extension"`
	// auto_login is a bool on login and a policy name on policy_set.
	AutoLogin json.RawMessage `json:"auto_login"`
	ByLoginID string          `json:"by_login_id"`

	Mode         string           `json:"mode"`
	DefaultLimit *int32           `json:"default_limit"`
	Limits       map[string]int32 `json:"limits"`

	ChatType       chatType          `json:"chat_type"`
	To             string            `json:"to"`
	ClientMsgID    string            `json:"client_msg_id"`
	ContentType    string            `json:"content_type"`
	Body           string            `json:"body"`
	GroupID        string            `json:"group_id"`
	ConversationID string            `json:"conversation_id"`
	MessageID      string            `json:"message_id"`
	Mark           int32             `json:"mark"`
	Contact        string            `json:"contact"`
	Ext            string            `json:"ext"`
	Users          []string          `json:"users"`
	Name           string            `json:"name"`
	Reason         string            `json:"reason"`
	Attributes     map[string]string `json:"attributes"`
	MuteMs         int64             `json:"mute_ms"`
	ThreadID       string            `json:"thread_id"`
	RoomID         string            `json:"room_id"`
	RemoteAddr     string            `json:"remote_addr"`
	Process        string            `json:"process"`
	Incarnation    string            `json:"incarnation"`
	Connection     uint64            `json:"connection"`
	LastSeenMs     int64             `json:"last_seen_ms"`

	// Fields of `mdsync export` lines (docs/events.md): body_base64 is a
	// body that is not UTF-8, timeline_* are policy retention settings.
	BodyBase64         string `json:"body_base64"`
	TimelineMaxEntries int64  `json:"timeline_max_entries"`
	TimelineMaxAgeMs   int64  `json:"timeline_max_age_ms"`
	// Where an exported event sat in the log; read and ignored, since an
	// operation is appended anew.
	Partition     json.RawMessage `json:"partition"`
	Offset        json.RawMessage `json:"offset"`
	EventID       json.RawMessage `json:"event_id"`
	SchemaVersion json.RawMessage `json:"schema_version"`
	PolicyVersion json.RawMessage `json:"policy_version"`
}

// CommonFields are accepted on every op.
var CommonFields = []string{"op", "app", "user", "client_op_id", "time_ms", "admin",
	// export lines carry their log position; ignored (see opJSON)
	"partition", "offset", "event_id", "schema_version", "policy_version"}

// PayloadFields lists, per payload (engine.KindInfo.Payload), the fields an
// op carrying it takes. A payload missing here is refused by Decode and
// fails TestEveryKindHandled.
var PayloadFields = map[string][]string{
	"login":       {"login_id", "platform", "device_name", "extension", "auto_login"},
	"empty":       {"login_id"},
	"kick_device": {"login_id", "by_login_id"},
	// login_id: a policy set by a device's session (exported as is).
	"policy_set":   {"login_id", "mode", "default_limit", "limits", "auto_login", "timeline_max_entries", "timeline_max_age_ms"},
	"message":      {"login_id", "chat_type", "to", "client_msg_id", "content_type", "body", "body_base64", "group_id"},
	"receipt":      {"login_id", "chat_type", "conversation_id", "message_id"},
	"conversation": {"login_id", "chat_type", "conversation_id", "mark"},
	"contact":      {"login_id", "contact", "ext"},
	"group":        {"login_id", "group_id", "users", "name", "reason", "attributes", "mute_ms"},
	"thread":       {"login_id", "thread_id", "group_id", "name", "users", "message_id"},
	"chatroom":     {"login_id", "room_id"},
	// Presence ops are the gateway's (device_connected, ...): exported so a
	// replay rebuilds the same device table; login_id is the device.
	"presence": {"login_id", "remote_addr", "process", "incarnation", "connection", "last_seen_ms"},
}

func invalid(format string, args ...any) error {
	return engine.Errorf(engine.CodeInvalidArgument, format, args...)
}

// Decode turns line n of an input into an event. Field values are checked
// by engine.Validate on Submit; here only the shape of the line is checked.
// An absent app is defApp, an absent client_op_id "line-N", an absent
// time_ms N seconds.
func Decode(n int, b []byte, defApp string) Line {
	l := Line{N: n}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		l.Err = invalid("not a JSON object: %v", err)
		return l
	}
	if v, ok := raw["op"]; !ok {
		l.Err = engine.Errorf(engine.CodeMissingField, "op is required")
		return l
	} else if err := json.Unmarshal(v, &l.Op); err != nil {
		l.Err = invalid("op is not a string")
		return l
	}
	kind, ok := engine.KindByName(l.Op)
	if !ok {
		l.Err = engine.UnknownKind(strconv.Quote(l.Op)) // as the WebSocket and REST say it
		return l
	}
	ki, _ := engine.LookupKind(kind)
	l.Op = ki.Name // "KIND_LOGIN" is accepted and reported as "login"
	payload := ki.Payload()
	fields, handled := PayloadFields[payload]
	if ki.Category == engine.CatDerived {
		l.Err = engine.Errorf(engine.CodeForbidden, "op %s is derived by mdsync and cannot be submitted", l.Op)
		return l
	} else if !handled {
		l.Err = engine.Errorf(engine.CodeUnknownKind, "op %s has no JSON mapping in this build", l.Op)
		return l
	}
	allowed := append(slices.Clone(CommonFields), fields...)
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys) // report the same field first every run
	for _, k := range keys {
		if slices.Contains(allowed, k) {
			continue
		}
		if knownField(k) {
			l.Err = invalid("field %q is not used by op %s", k, l.Op)
		} else {
			l.Err = invalid("unknown field %q", k)
		}
		return l
	}
	var j opJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		l.Err = invalid("%v", strings.TrimPrefix(err.Error(), "json: "))
		return l
	}
	if _, err := dec.Token(); err != io.EOF {
		l.Err = invalid("trailing data after the JSON object")
		return l
	}
	l.TimeMs = int64(n) * 1000
	if j.TimeMs != nil {
		if *j.TimeMs < 0 {
			l.Err = invalid("time_ms %d is negative", *j.TimeMs)
			return l
		}
		l.TimeMs = *j.TimeMs
	}
	if j.App == "" {
		j.App = defApp
	}
	if j.ClientOpID == "" {
		j.ClientOpID = "line-" + strconv.Itoa(n)
	}
	if kind == pb.Kind_KIND_POLICY_SET && j.User == "" {
		// A policy is an admin operation; lines need not invent an actor.
		j.User, j.Admin = "admin", true
	}
	ev := &pb.Event{
		App: j.App, ClientOpId: j.ClientOpID, Kind: kind,
		Actor: &pb.Actor{User: j.User, LoginId: j.LoginID, Admin: j.Admin},
	}
	if err := fillPayload(ev, payload, &j); err != nil {
		l.Err = err
		return l
	}
	l.Event = ev
	return l
}

func knownField(k string) bool {
	if slices.Contains(CommonFields, k) {
		return true
	}
	for _, fs := range PayloadFields {
		if slices.Contains(fs, k) {
			return true
		}
	}
	return false
}

func fillPayload(ev *pb.Event, payload string, j *opJSON) error {
	switch payload {
	case "login":
		var auto bool
		if len(j.AutoLogin) > 0 {
			if err := json.Unmarshal(j.AutoLogin, &auto); err != nil {
				return invalid("auto_login of a login is true or false")
			}
		}
		ev.Payload = &pb.Event_Login{Login: &pb.Login{
			Platform: j.Platform, LoginId: j.LoginID, DeviceName: j.DeviceName,
			Extension: j.Extension, AutoLogin: auto,
		}}
	case "empty":
		// login_id is the acting device (required by logout).
	case "kick_device":
		ev.Actor.LoginId = j.ByLoginID
		ev.Payload = &pb.Event_KickDevice{KickDevice: &pb.KickDevice{LoginId: j.LoginID}}
	case "policy_set":
		ps, err := policyOf(j)
		if err != nil {
			return err
		}
		ev.Payload = &pb.Event_PolicySet{PolicySet: ps}
	case "message":
		body := []byte(j.Body)
		if j.BodyBase64 != "" {
			var err error
			if j.Body != "" {
				return invalid("body and body_base64 are exclusive")
			}
			if body, err = base64.StdEncoding.DecodeString(j.BodyBase64); err != nil {
				return invalid("body_base64 is not base64: %v", err)
			}
		}
		ev.Payload = &pb.Event_Message{Message: &pb.MessageSend{
			ChatType: pb.ChatType(j.ChatType), To: j.To, ClientMsgId: j.ClientMsgID,
			ContentType: j.ContentType, Body: body, GroupId: j.GroupID,
		}}
	case "receipt":
		ev.Payload = &pb.Event_Receipt{Receipt: &pb.Receipt{
			ChatType: pb.ChatType(j.ChatType), ConversationId: j.ConversationID, MessageId: j.MessageID,
		}}
	case "conversation":
		ev.Payload = &pb.Event_Conversation{Conversation: &pb.ConversationRef{
			ChatType: pb.ChatType(j.ChatType), ConversationId: j.ConversationID, Mark: j.Mark,
		}}
	case "contact":
		ev.Payload = &pb.Event_Contact{Contact: &pb.ContactOp{User: j.Contact, Ext: j.Ext}}
	case "group":
		g := &pb.GroupOp{GroupId: j.GroupID, Users: j.Users, Name: j.Name, Reason: j.Reason, MuteMs: j.MuteMs}
		// The wire wants attributes sorted by key; a JSON object has no order.
		keys := make([]string, 0, len(j.Attributes))
		for k := range j.Attributes {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			g.Attributes = append(g.Attributes, &pb.Attribute{Key: k, Value: j.Attributes[k]})
		}
		ev.Payload = &pb.Event_Group{Group: g}
	case "thread":
		ev.Payload = &pb.Event_Thread{Thread: &pb.ThreadOp{
			ThreadId: j.ThreadID, GroupId: j.GroupID, Name: j.Name, Users: j.Users, MessageId: j.MessageID,
		}}
	case "chatroom":
		ev.Payload = &pb.Event_Chatroom{Chatroom: &pb.ChatroomOp{RoomId: j.RoomID}}
	case "presence":
		ev.Payload = &pb.Event_Presence{Presence: &pb.DevicePresence{
			RemoteAddr: j.RemoteAddr, Process: j.Process, Incarnation: j.Incarnation,
			Connection: j.Connection, LastSeenUnixMs: j.LastSeenMs,
		}}
	default:
		return engine.Errorf(engine.CodeInternal, "op %s has no JSON mapping", engine.KindName(ev.Kind))
	}
	return nil
}

// policyOf builds a policy_set payload; unset fields take the defaults of
// engine.DefaultPolicy, so a line need only say what it changes.
func policyOf(j *opJSON) (*pb.PolicySet, error) {
	ps := &pb.PolicySet{
		Mode:         pb.PlatformMode_PLATFORM_MODE_MULTI,
		DefaultLimit: engine.DefaultPlatformLimit,
		AutoLogin:    pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST,
		// Retention: 0 is the default; the engine validates the range.
		TimelineMaxEntries: j.TimelineMaxEntries,
		TimelineMaxAgeMs:   j.TimelineMaxAgeMs,
	}
	switch j.Mode {
	case "", "multi":
	case "single":
		ps.Mode = pb.PlatformMode_PLATFORM_MODE_SINGLE
	default:
		return nil, invalid("mode %q is not multi or single", j.Mode)
	}
	if j.DefaultLimit != nil {
		ps.DefaultLimit = *j.DefaultLimit
	}
	if len(j.AutoLogin) > 0 {
		var s string
		if err := json.Unmarshal(j.AutoLogin, &s); err != nil {
			return nil, invalid("auto_login of a policy is \"kick_oldest\" or \"keep_current\"")
		}
		switch s {
		case "kick_oldest":
		case "keep_current":
			ps.AutoLogin = pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KEEP_CURRENT
		default:
			return nil, invalid("auto_login %q is not kick_oldest or keep_current", s)
		}
	}
	for k, v := range j.Limits {
		p, err := strconv.ParseInt(k, 10, 32)
		if err != nil {
			return nil, invalid("limits key %q is not a platform number", k)
		}
		ps.Limits = append(ps.Limits, &pb.PlatformLimit{Platform: int32(p), Limit: v})
	}
	// The wire wants limits sorted by platform; a JSON object has no order.
	slices.SortFunc(ps.Limits, func(a, b *pb.PlatformLimit) int { return int(a.Platform) - int(b.Platform) })
	return ps, nil
}

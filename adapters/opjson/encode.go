package opjson

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// Row is one encoded event (docs/events.md, "JSON lines"). Its operation
// fields are those Decode reads (docs/operations.md), so an export is
// replayed as is; partition, offset, event_id, schema_version and
// policy_version are where the event sits in the log, read and ignored by
// Decode.
type Row struct {
	Partition     int32  `json:"partition"`
	Offset        int64  `json:"offset"`
	EventID       string `json:"event_id"`
	SchemaVersion uint32 `json:"schema_version"`
	Op            string `json:"op"`
	App           string `json:"app"`
	User          string `json:"user"`
	ClientOpID    string `json:"client_op_id"`
	TimeMs        int64  `json:"time_ms"`
	Admin         bool   `json:"admin,omitempty"`
	LoginID       string `json:"login_id,omitempty"`

	Platform   int32  `json:"platform,omitempty"`
	DeviceName string `json:"device_name,omitempty"`
	Extension  string `json:"extension,omitempty"`
	// AutoLogin is a bool on login and a policy name on policy_set.
	AutoLogin any    `json:"auto_login,omitempty"`
	ByLoginID string `json:"by_login_id,omitempty"`

	PolicyVersion      uint64           `json:"policy_version,omitempty"`
	Mode               string           `json:"mode,omitempty"`
	DefaultLimit       *int32           `json:"default_limit,omitempty"`
	Limits             map[string]int32 `json:"limits,omitempty"`
	TimelineMaxEntries int64            `json:"timeline_max_entries,omitempty"`
	TimelineMaxAgeMs   int64            `json:"timeline_max_age_ms,omitempty"`

	ChatType       any               `json:"chat_type,omitempty"`
	To             string            `json:"to,omitempty"`
	ClientMsgID    string            `json:"client_msg_id,omitempty"`
	ContentType    string            `json:"content_type,omitempty"`
	Body           *string           `json:"body,omitempty"`
	BodyBase64     string            `json:"body_base64,omitempty"`
	GroupID        string            `json:"group_id,omitempty"`
	ConversationID string            `json:"conversation_id,omitempty"`
	MessageID      string            `json:"message_id,omitempty"`
	Mark           int32             `json:"mark,omitempty"`
	Contact        string            `json:"contact,omitempty"`
	Ext            string            `json:"ext,omitempty"`
	Users          []string          `json:"users,omitempty"`
	Name           string            `json:"name,omitempty"`
	Reason         string            `json:"reason,omitempty"`
	Attributes     map[string]string `json:"attributes,omitempty"`
	MuteMs         int64             `json:"mute_ms,omitempty"`
	ThreadID       string            `json:"thread_id,omitempty"`
	RoomID         string            `json:"room_id,omitempty"`
	RemoteAddr     string            `json:"remote_addr,omitempty"`
	Process        string            `json:"process,omitempty"`
	Incarnation    string            `json:"incarnation,omitempty"`
	Connection     uint64            `json:"connection,omitempty"`
	LastSeenMs     int64             `json:"last_seen_ms,omitempty"`

	// For columnar writers, which keep what JSON leaves out: whether the
	// row is a login (its platform and auto_login are set, even when
	// zero), its auto_login flag, and the message body's bytes.
	IsLogin        bool   `json:"-"`
	LoginAutoLogin bool   `json:"-"`
	BodyBytes      []byte `json:"-"`
}

// RowKind says what RowOf made of a log record.
type RowKind int

const (
	RowEvent      RowKind = iota // an operation: the row is set
	RowDerived                   // a copy of an event already in the log: a fan-out (DELIVER), or a POLICY_SET on a partition > 0
	RowUnreadable                // undecodable, or a kind unknown to this build
)

// RowOf maps one log record to a row. Copies of events already in the log
// (DELIVER fan-out copies, POLICY_SET copies on partitions > 0) make no row.
func RowOf(en engine.Entry) (*Row, RowKind) {
	ev, err := engine.Decode(en.Value)
	if err != nil {
		return nil, RowUnreadable
	}
	r, kind := Encode(ev)
	if r != nil {
		r.Partition, r.Offset = en.Partition, en.Offset
	}
	return r, kind
}

// Encode maps an event to a row (without its log position).
func Encode(ev *pb.Event) (*Row, RowKind) {
	ki, known := engine.LookupKind(ev.Kind)
	if !known || ev.Actor == nil {
		return nil, RowUnreadable
	}
	if ki.Category == engine.CatDerived {
		return nil, RowDerived
	}
	// A policy change is appended once to every partition (engine's
	// setPolicy); partition 0's copy is the operation, the others would
	// replay as further changes.
	if ps := ev.GetPolicySet(); ps != nil && ps.Partition > 0 {
		return nil, RowDerived
	}
	r := &Row{
		EventID: ev.EventId, SchemaVersion: ev.SchemaVersion,
		Op: ki.Name, App: ev.App, User: ev.Actor.User, ClientOpID: ev.ClientOpId, TimeMs: ev.TimeUnixMs,
		Admin: ev.Actor.Admin, LoginID: ev.Actor.LoginId,
	}
	switch pl := ev.Payload.(type) {
	case *pb.Event_Login:
		l := pl.Login
		r.LoginID, r.Platform, r.DeviceName, r.Extension = l.LoginId, l.Platform, l.DeviceName, l.Extension
		r.IsLogin, r.LoginAutoLogin = true, l.AutoLogin
		if l.AutoLogin {
			r.AutoLogin = true
		}
	case *pb.Event_KickDevice:
		r.ByLoginID, r.LoginID = ev.Actor.LoginId, pl.KickDevice.LoginId
	case *pb.Event_PolicySet:
		ps := pl.PolicySet
		r.PolicyVersion = ps.Version
		r.Mode = "multi"
		if ps.Mode == pb.PlatformMode_PLATFORM_MODE_SINGLE {
			r.Mode = "single"
		}
		dl := ps.DefaultLimit
		r.DefaultLimit = &dl
		if ps.AutoLogin == pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KEEP_CURRENT {
			r.AutoLogin = "keep_current"
		} else {
			r.AutoLogin = "kick_oldest"
		}
		if len(ps.Limits) > 0 {
			r.Limits = map[string]int32{}
			for _, l := range ps.Limits {
				r.Limits[strconv.Itoa(int(l.Platform))] = l.Limit
			}
		}
		r.TimelineMaxEntries, r.TimelineMaxAgeMs = ps.TimelineMaxEntries, ps.TimelineMaxAgeMs
	case *pb.Event_Message:
		m := pl.Message
		r.ChatType, r.To, r.ClientMsgID, r.ContentType, r.GroupID = ChatTypeJSON(m.ChatType), m.To, m.ClientMsgId, m.ContentType, m.GroupId
		r.BodyBytes = m.Body
		if len(m.Body) > 0 {
			if utf8.Valid(m.Body) {
				s := string(m.Body)
				r.Body = &s
			} else {
				r.BodyBase64 = base64.StdEncoding.EncodeToString(m.Body)
			}
		}
	case *pb.Event_Receipt:
		r.ChatType, r.ConversationID, r.MessageID = ChatTypeJSON(pl.Receipt.ChatType), pl.Receipt.ConversationId, pl.Receipt.MessageId
	case *pb.Event_Conversation:
		c := pl.Conversation
		r.ChatType, r.ConversationID, r.Mark = ChatTypeJSON(c.ChatType), c.ConversationId, c.Mark
	case *pb.Event_Contact:
		r.Contact, r.Ext = pl.Contact.User, pl.Contact.Ext
	case *pb.Event_Group:
		g := pl.Group
		r.GroupID, r.Users, r.Name, r.Reason, r.MuteMs = g.GroupId, g.Users, g.Name, g.Reason, g.MuteMs
		if len(g.Attributes) > 0 {
			r.Attributes = map[string]string{}
			for _, a := range g.Attributes {
				r.Attributes[a.Key] = a.Value
			}
		}
	case *pb.Event_Thread:
		t := pl.Thread
		r.ThreadID, r.GroupID, r.Name, r.Users, r.MessageID = t.ThreadId, t.GroupId, t.Name, t.Users, t.MessageId
	case *pb.Event_Chatroom:
		r.RoomID = pl.Chatroom.RoomId
	case *pb.Event_Presence:
		p := pl.Presence
		r.RemoteAddr, r.Process, r.Incarnation, r.Connection, r.LastSeenMs = p.RemoteAddr, p.Process, p.Incarnation, p.Connection, p.LastSeenUnixMs
	}
	return r, RowEvent
}

// Marshal encodes a row as one JSON line without its newline, and without
// HTML escaping (names are shown as given).
func Marshal(r *Row) ([]byte, error) {
	var sb strings.Builder
	enc := json.NewEncoder(&sb)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		return nil, err
	}
	return []byte(strings.TrimSuffix(sb.String(), "\n")), nil
}

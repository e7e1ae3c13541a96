package export

import (
	"encoding/json"
	"strconv"

	"github.com/mdsync/mdsync/adapters/opjson"
)

// parquetRow is the Parquet schema of an export (docs/events.md,
// "Parquet"): the JSON lines fields as columns, null where an operation
// does not use one. auto_login is split by type: a login's is the boolean
// auto_login, a policy's the string policy_auto_login.
type parquetRow struct {
	Partition     int32  `parquet:"partition"`
	Offset        int64  `parquet:"offset"`
	EventID       string `parquet:"event_id"`
	SchemaVersion int32  `parquet:"schema_version"`
	Op            string `parquet:"op,dict"`
	App           string `parquet:"app,dict"`
	User          string `parquet:"user"`
	ClientOpID    string `parquet:"client_op_id"`
	TimeMs        int64  `parquet:"time_ms"`
	Admin         bool   `parquet:"admin"`
	LoginID       string `parquet:"login_id,optional"`

	Platform        *int32 `parquet:"platform,optional"`
	DeviceName      string `parquet:"device_name,optional"`
	Extension       string `parquet:"extension,optional"`
	AutoLogin       *bool  `parquet:"auto_login,optional"`
	ByLoginID       string `parquet:"by_login_id,optional"`
	PolicyVersion   *int64 `parquet:"policy_version,optional"`
	Mode            string `parquet:"mode,optional"`
	DefaultLimit    *int32 `parquet:"default_limit,optional"`
	PolicyAutoLogin string `parquet:"policy_auto_login,optional"`
	// LimitsJSON is the limits object as JSON text ({"1":2}), as in JSON lines.
	LimitsJSON         string `parquet:"limits_json,optional"`
	TimelineMaxEntries *int64 `parquet:"timeline_max_entries,optional"`
	TimelineMaxAgeMs   *int64 `parquet:"timeline_max_age_ms,optional"`

	ChatType       string   `parquet:"chat_type,optional,dict"`
	To             string   `parquet:"to,optional"`
	ClientMsgID    string   `parquet:"client_msg_id,optional"`
	ContentType    string   `parquet:"content_type,optional"`
	Body           []byte   `parquet:"body,optional"`
	GroupID        string   `parquet:"group_id,optional"`
	ConversationID string   `parquet:"conversation_id,optional"`
	MessageID      string   `parquet:"message_id,optional"`
	Mark           *int32   `parquet:"mark,optional"`
	Contact        string   `parquet:"contact,optional"`
	Ext            string   `parquet:"ext,optional"`
	Users          []string `parquet:"users,list"`
	Name           string   `parquet:"name,optional"`
	Reason         string   `parquet:"reason,optional"`
	// AttributesJSON is the attributes object as JSON text.
	AttributesJSON string `parquet:"attributes_json,optional"`
	MuteMs         *int64 `parquet:"mute_ms,optional"`
	ThreadID       string `parquet:"thread_id,optional"`
	RoomID         string `parquet:"room_id,optional"`
	RemoteAddr     string `parquet:"remote_addr,optional"`
	Process        string `parquet:"process,optional"`
	Incarnation    string `parquet:"incarnation,optional"`
	Connection     *int64 `parquet:"connection,optional"`
	LastSeenMs     *int64 `parquet:"last_seen_ms,optional"`
}

func parquetRowOf(r *opjson.Row) parquetRow {
	q := parquetRow{
		Partition: r.Partition, Offset: r.Offset, EventID: r.EventID, SchemaVersion: int32(r.SchemaVersion),
		Op: r.Op, App: r.App, User: r.User, ClientOpID: r.ClientOpID, TimeMs: r.TimeMs, Admin: r.Admin,
		LoginID: r.LoginID, DeviceName: r.DeviceName, Extension: r.Extension, ByLoginID: r.ByLoginID,
		Mode: r.Mode, DefaultLimit: r.DefaultLimit,
		To: r.To, ClientMsgID: r.ClientMsgID, ContentType: r.ContentType, Body: r.BodyBytes,
		GroupID: r.GroupID, ConversationID: r.ConversationID, MessageID: r.MessageID,
		Contact: r.Contact, Ext: r.Ext, Users: r.Users, Name: r.Name, Reason: r.Reason,
		ThreadID: r.ThreadID, RoomID: r.RoomID,
		RemoteAddr: r.RemoteAddr, Process: r.Process, Incarnation: r.Incarnation,
	}
	if r.Op == "device_connected" || r.Op == "device_disconnected" {
		c, ls := int64(r.Connection), r.LastSeenMs
		q.Connection, q.LastSeenMs = &c, &ls
	}
	if r.IsLogin {
		p, a := r.Platform, r.LoginAutoLogin
		q.Platform, q.AutoLogin = &p, &a
	}
	if r.Op == "policy_set" {
		v := int64(r.PolicyVersion)
		me, ma := r.TimelineMaxEntries, r.TimelineMaxAgeMs
		q.PolicyVersion, q.TimelineMaxEntries, q.TimelineMaxAgeMs = &v, &me, &ma
		q.PolicyAutoLogin, _ = r.AutoLogin.(string)
		q.LimitsJSON = sortedJSON(r.Limits)
	}
	switch c := r.ChatType.(type) {
	case string:
		q.ChatType = c
	case int32:
		q.ChatType = strconv.Itoa(int(c))
	}
	if r.Op == "conversation_mark" || r.Op == "conversation_unmark" {
		m := r.Mark
		q.Mark = &m
	}
	if r.Op == "group_add_mute" {
		m := r.MuteMs
		q.MuteMs = &m
	}
	if len(r.Attributes) > 0 {
		q.AttributesJSON = sortedJSON(r.Attributes)
	}
	return q
}

// sortedJSON encodes a map as JSON text; encoding/json sorts map keys.
func sortedJSON[V any](m map[string]V) string {
	if m == nil {
		return "{}"
	}
	b, _ := json.Marshal(m)
	return string(b)
}

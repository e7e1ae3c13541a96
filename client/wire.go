package client

import (
	"encoding/json"
	"fmt"
	"time"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Subprotocol is the WebSocket subprotocol of docs/protocol.md, version 1.
const Subprotocol = "mdsync.v1"

// MaxFrameBytes is the largest frame the gateway accepts from a device.
const MaxFrameBytes = 64 << 10

// maxReadBytes bounds a frame from the server. Snapshots and history pages
// can be much larger than a device's frames, but not unbounded.
const maxReadBytes = 32 << 20

// Protobuf payloads travel in protobuf's JSON mapping with .proto field
// names (docs/protocol.md), like the REST API.
var (
	pjson = protojson.MarshalOptions{UseProtoNames: true}
	pread = protojson.UnmarshalOptions{DiscardUnknown: true}
)

// Frames the client sends. One struct per type keeps zero values of one
// type's fields off the wire of another.
type loginFrame struct {
	Type       string `json:"type"`
	ID         string `json:"id"`
	App        string `json:"app"`
	User       string `json:"user"`
	Password   string `json:"password,omitempty"`
	Token      string `json:"token,omitempty"`
	LoginID    string `json:"login_id,omitempty"`
	Platform   int32  `json:"platform,omitempty"`
	DeviceName string `json:"device_name,omitempty"`
	Extension  string `json:"extension,omitempty"`
	AutoLogin  bool   `json:"auto_login,omitempty"`
	// resume only
	Epoch string `json:"epoch,omitempty"`
	Seq   uint64 `json:"seq,omitempty"`
	// Batch: the client takes catch-up as events frames (docs/protocol.md).
	Batch bool `json:"batch,omitempty"`
}

type opFrame struct {
	Type  string          `json:"type"`
	ID    string          `json:"id"`
	Event json.RawMessage `json:"event"`
}

type ackFrame struct {
	Type  string `json:"type"`
	Epoch string `json:"epoch"`
	Seq   uint64 `json:"seq"`
}

type idFrame struct {
	Type string `json:"type"`
	ID   string `json:"id,omitempty"`
}

type historyFrame struct {
	Type           string `json:"type"`
	ID             string `json:"id"`
	ChatType       string `json:"chat_type"`
	ConversationID string `json:"conversation_id"`
	Before         uint64 `json:"before,omitempty"`
	Limit          int    `json:"limit"`
}

// inFrame is any frame the server sends; which fields are set depends on
// Type. Protobuf parts stay raw until the type is known.
type inFrame struct {
	Type    string `json:"type"`
	ID      string `json:"id"`
	Code    int32  `json:"code"`
	Message string `json:"message"`

	// login_result
	LoginID       string `json:"login_id"`
	Reconnect     bool   `json:"reconnect"`
	Resumed       bool   `json:"resumed"`
	PolicyVersion uint64 `json:"policy_version"`

	// result
	EventID   string `json:"event_id"`
	MessageID string `json:"message_id"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
	// RetryAfterMs comes with code 1019 (busy).
	RetryAfterMs int64 `json:"retry_after_ms"`

	// self_ids_result, history_result
	LoginIDs []string          `json:"login_ids"`
	Entries  []json.RawMessage `json:"entries"`

	// event, snapshot
	Epoch         string            `json:"epoch"`
	Seq           uint64            `json:"seq"`
	Name          string            `json:"name"`
	Entry         json.RawMessage   `json:"entry"`
	Resync        bool              `json:"resync"`
	Part          int               `json:"part"` // snapshot: its index, from 0
	More          bool              `json:"more"` // snapshot: more parts follow
	Contacts      json.RawMessage   `json:"contacts"`
	Groups        json.RawMessage   `json:"groups"`
	Conversations []json.RawMessage `json:"conversations"`

	// events: event frames, in order (decoded in the same pass)
	Events []*inFrame `json:"events"`

	// kicked, error
	Reason       string `json:"reason"`
	ByLoginID    string `json:"by_login_id"`
	ByDeviceName string `json:"by_device_name"`
	ByExtension  string `json:"by_extension"`
	Addr         string `json:"addr"`
}

func decodeFrame(b []byte) (*inFrame, error) {
	f := &inFrame{}
	if err := json.Unmarshal(b, f); err != nil {
		return nil, fmt.Errorf("client: bad frame from server: %w", err)
	}
	if f.Type == "" {
		return nil, fmt.Errorf("client: frame without a type from server")
	}
	return f, nil
}

// unmarshalPart decodes one protobuf part; an absent part leaves m empty.
func unmarshalPart(raw json.RawMessage, m proto.Message) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	return pread.Unmarshal(raw, m)
}

func (f *inFrame) snapshot() (Snapshot, error) {
	s := Snapshot{Resync: f.Resync, Epoch: f.Epoch, Seq: f.Seq, Contacts: &pb.Contacts{}, Groups: &pb.UserGroups{}}
	if err := unmarshalPart(f.Contacts, s.Contacts); err != nil {
		return s, fmt.Errorf("client: snapshot contacts: %w", err)
	}
	if err := unmarshalPart(f.Groups, s.Groups); err != nil {
		return s, fmt.Errorf("client: snapshot groups: %w", err)
	}
	for _, raw := range f.Conversations {
		c := &pb.Conversation{}
		if err := unmarshalPart(raw, c); err != nil {
			return s, fmt.Errorf("client: snapshot conversation: %w", err)
		}
		s.Conversations = append(s.Conversations, c)
	}
	return s, nil
}

func (f *inFrame) entries() ([]*pb.TimelineEntry, error) {
	out := make([]*pb.TimelineEntry, 0, len(f.Entries))
	for _, raw := range f.Entries {
		e := &pb.TimelineEntry{}
		if err := unmarshalPart(raw, e); err != nil {
			return nil, fmt.Errorf("client: history entry: %w", err)
		}
		out = append(out, e)
	}
	return out, nil
}

// err returns the frame's code as an *Error, or nil for code 0.
func (f *inFrame) err() error {
	if f.Code == 0 {
		return nil
	}
	return &Error{Code: f.Code, Message: f.Message, RetryAfter: time.Duration(f.RetryAfterMs) * time.Millisecond, Addr: f.Addr}
}

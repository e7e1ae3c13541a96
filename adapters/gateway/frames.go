package gateway

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// Limits of client frames' fields (docs/protocol.md).
const (
	maxRequestIDBytes  = 64
	maxCredentialBytes = 4096 // password or token
	maxEpochBytes      = 128
	maxHistoryLimit    = 100
)

// Client frame types.
const (
	typeLogin   = "login"
	typeResume  = "resume"
	typeOp      = "op"
	typeAck     = "ack"
	typeSelfIDs = "self_ids"
	typeHistory = "history"
	typePing    = "ping"
)

// frame is one decoded client frame. Only the fields of its type are set.
type frame struct {
	Type string
	ID   string

	// login, resume
	App, User, Password, Token, LoginID string
	Platform                            int32
	DeviceName, Extension               string
	AutoLogin                           bool
	Batch                               bool // the client takes events frames

	// resume, ack: a timeline position
	Epoch string
	Seq   uint64

	// op
	Event *pb.Event

	// history
	ChatType       pb.ChatType
	ConversationID string
	Before         uint64
	Limit          int
}

// wireFrame is a client frame as JSON; unknown fields are ignored.
type wireFrame struct {
	Type           string          `json:"type"`
	ID             string          `json:"id"`
	App            string          `json:"app"`
	User           string          `json:"user"`
	Password       string          `json:"password"`
	Token          string          `json:"token"`
	LoginID        string          `json:"login_id"`
	Platform       int32           `json:"platform"`
	DeviceName     string          `json:"device_name"`
	Extension      string          `json:"extension"`
	AutoLogin      bool            `json:"auto_login"`
	Batch          bool            `json:"batch"`
	Epoch          string          `json:"epoch"`
	Seq            json.Number     `json:"seq"`
	Event          json.RawMessage `json:"event"`
	ChatType       json.RawMessage `json:"chat_type"`
	ConversationID string          `json:"conversation_id"`
	Before         json.Number     `json:"before"`
	Limit          int             `json:"limit"`
}

// validateOp runs engine.Validate on an op frame's event as the gateway
// will submit it: app and actor are the connection's (placeholders here;
// an event naming another app or actor is refused with 1008 later, and
// the one check that compares a payload with the actor — a contact op
// naming the actor itself — is made again on Submit).
func validateOp(ev *pb.Event) error {
	switch ev.Kind {
	case pb.Kind_KIND_LOGIN, pb.Kind_KIND_POLICY_SET, pb.Kind_KIND_PASSWORD_CHANGE, pb.Kind_KIND_USER_REMOVE, pb.Kind_KIND_DELIVER,
		pb.Kind_KIND_USER_REGISTER, pb.Kind_KIND_TOKENS_REVOKE,
		pb.Kind_KIND_DEVICE_CONNECTED, pb.Kind_KIND_DEVICE_DISCONNECTED:
		// Not a device's to submit: refused with 1008 by the gateway.
		return nil
	}
	user := placeholderID
	if ct := ev.GetContact(); ct != nil && ct.User == user {
		user = placeholderID + "2"
	}
	app, actor := ev.App, ev.Actor
	ev.App, ev.Actor = placeholderID, &pb.Actor{User: user, LoginId: placeholderID}
	err := engine.Validate(ev)
	ev.App, ev.Actor = app, actor
	return err
}

// frameError is a refused client frame. Its Error is the message the
// answer carries, without the code (which has its own field), so a bad
// input reads the same on the WebSocket as in the REST API's error body and
// in replay's error rows. errors.As finds the *engine.Error under it.
type frameError struct{ e *engine.Error }

func (f frameError) Error() string { return f.e.Message }
func (f frameError) Unwrap() error { return f.e }

// wireMessage is the message of an answer that refuses with err: an
// *engine.Error's message without its code, else err's text.
func wireMessage(err error) string {
	var e *engine.Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}

// decodeFrame decodes and checks one client frame. On error it returns the
// frame's id when it could be read (so the answer can carry it) and an
// error carrying an *engine.Error: 1001 malformed, 1003 missing, 1004 too
// large, 1002 unknown kind. login and op frames are checked by
// engine.Validate, the validation REST and replay use, so one bad input
// gets one code and one message on every path.
func decodeFrame(b []byte) (*frame, string, error) {
	f, id, err := decodeFrameFields(b)
	if err != nil {
		var e *engine.Error
		if !errors.As(err, &e) {
			e = engine.Errorf(engine.CodeInvalidArgument, "%v", err)
		}
		return nil, id, frameError{e}
	}
	return f, id, nil
}

// placeholderID stands for the connection's app, user and login ID while a
// frame is validated before the connection has them.
const placeholderID = "x"

func decodeFrameFields(b []byte) (*frame, string, error) {
	if f, ok := fastFrame(b); ok {
		return f, f.ID, nil
	}
	return decodeFrameFull(b)
}

// decodeFrameFull decodes any client frame with encoding/json.
func decodeFrameFull(b []byte) (*frame, string, error) {
	var w wireFrame
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(&w); err != nil {
		return nil, "", engine.Errorf(engine.CodeInvalidArgument, "not a JSON object: %v", err)
	}
	if d.More() {
		return nil, "", engine.Errorf(engine.CodeInvalidArgument, "trailing data after the JSON object")
	}
	if len(w.ID) > maxRequestIDBytes {
		return nil, "", engine.Errorf(engine.CodeInvalidArgument, "id is longer than %d bytes", maxRequestIDBytes)
	}
	f := &frame{Type: w.Type, ID: w.ID}
	bad := func(format string, args ...any) (*frame, string, error) {
		return nil, w.ID, engine.Errorf(engine.CodeInvalidArgument, format, args...)
	}
	switch w.Type {
	case typeLogin, typeResume:
		f.App, f.User, f.Password, f.Token, f.LoginID = w.App, w.User, w.Password, w.Token, w.LoginID
		f.Batch = w.Batch
		if w.Type == typeResume && (!engine.ValidID(f.App) || !engine.ValidID(f.User)) {
			return bad("app and user must be ids (1-%d bytes of letters, digits, _-.@)", engine.MaxIDBytes)
		}
		if len(f.Password) > maxCredentialBytes || len(f.Token) > maxCredentialBytes {
			return bad("password or token longer than %d bytes", maxCredentialBytes)
		}
		if f.Password == "" && f.Token == "" {
			return nil, w.ID, engine.Errorf(engine.CodeMissingField, "password or token is required")
		}
		if w.Type == typeResume {
			if !engine.ValidID(f.LoginID) {
				return bad("resume needs the login_id of the session")
			}
			if err := readPosition(f, w); err != nil {
				return nil, w.ID, err
			}
			break
		}
		f.Platform, f.DeviceName, f.Extension, f.AutoLogin = w.Platform, w.DeviceName, w.Extension, w.AutoLogin
		// The login the gateway will submit, checked as REST and replay
		// check one (an empty login_id is generated by the gateway).
		loginID := f.LoginID
		if loginID == "" {
			loginID = placeholderID
		}
		if err := engine.Validate(&pb.Event{
			App: f.App, ClientOpId: placeholderID, Kind: pb.Kind_KIND_LOGIN,
			Actor: &pb.Actor{User: f.User, LoginId: loginID},
			Payload: &pb.Event_Login{Login: &pb.Login{
				Platform: f.Platform, LoginId: loginID, DeviceName: f.DeviceName, Extension: f.Extension, AutoLogin: f.AutoLogin,
			}},
		}); err != nil {
			return nil, w.ID, err
		}
	case typeOp:
		if len(w.Event) == 0 || string(w.Event) == "null" {
			return nil, w.ID, engine.Errorf(engine.CodeMissingField, "op needs an event")
		}
		ev, err := engine.DecodeEventJSON(w.Event, false)
		if err != nil {
			return nil, w.ID, err
		}
		if err := validateOp(ev); err != nil {
			return nil, w.ID, err
		}
		f.Event = ev
	case typeAck:
		if err := readPosition(f, w); err != nil {
			return nil, w.ID, err
		}
		if f.Epoch == "" {
			return nil, w.ID, engine.Errorf(engine.CodeMissingField, "ack needs epoch")
		}
	case typeHistory:
		ct, err := chatType(w.ChatType)
		if err != nil {
			return nil, w.ID, err
		}
		if !engine.ValidID(w.ConversationID) {
			return bad("conversation_id is not a valid id")
		}
		before, err := uintField("before", w.Before)
		if err != nil {
			return nil, w.ID, err
		}
		if w.Limit < 1 || w.Limit > maxHistoryLimit {
			return bad("limit must be in [1,%d]", maxHistoryLimit)
		}
		f.ChatType, f.ConversationID, f.Before, f.Limit = ct, w.ConversationID, before, w.Limit
	case typeSelfIDs, typePing:
	case "":
		return nil, w.ID, engine.Errorf(engine.CodeMissingField, "type is required")
	default:
		return bad("unknown type %.64q", w.Type)
	}
	return f, f.ID, nil
}

// fastFrame decodes the frames every message brings, op and ack, in their
// plain shape (keys type and id, then event, or epoch and seq; strings of
// printable ASCII without escapes; no other key) without encoding/json:
// that decoder's reflection and its scan of the whole event, which
// protojson then parses again, were half of an op frame's cost. It
// reports false for anything else, and for any frame it would refuse, so
// that decodeFrameFields' full decoder gives every bad input its one code
// and message (FuzzFastFrame checks that both agree).
func fastFrame(b []byte) (*frame, bool) {
	s := frameScanner{b: b}
	var typ, id, epoch, seq, event []byte
	if !s.byte('{') {
		return nil, false
	}
	for first := true; ; first = false {
		if s.byte('}') {
			if first {
				return nil, false
			}
			break
		}
		if !first && !s.byte(',') {
			return nil, false
		}
		key, ok := s.plainString()
		if !ok || !s.byte(':') {
			return nil, false
		}
		var dst *[]byte
		switch string(key) {
		case "type":
			dst = &typ
		case "id":
			dst = &id
		case "epoch":
			dst = &epoch
		case "seq":
			dst = &seq
		case "event":
			dst = &event
		default:
			return nil, false
		}
		if *dst != nil {
			return nil, false // a repeated key: the full decoder keeps the last
		}
		switch string(key) {
		case "seq":
			*dst, ok = s.digits()
		case "event":
			*dst, ok = s.object()
		default:
			*dst, ok = s.plainString()
		}
		if !ok {
			return nil, false
		}
	}
	if s.skipSpace(); s.i != len(b) || len(id) > maxRequestIDBytes {
		return nil, false
	}
	f := &frame{Type: string(typ), ID: string(id)}
	switch f.Type {
	case typeOp:
		if epoch != nil || seq != nil || event == nil {
			return nil, false
		}
		ev, ok := fastMessageEvent(event)
		if !ok {
			var err error
			if ev, err = engine.DecodeEventJSON(event, false); err != nil {
				return nil, false
			}
		}
		if validateOp(ev) != nil {
			return nil, false
		}
		f.Event = ev
	case typeAck:
		if event != nil || len(epoch) == 0 || len(epoch) > maxEpochBytes {
			return nil, false
		}
		var err error
		if f.Seq, err = strconv.ParseUint(string(seq), 10, 64); err != nil && seq != nil {
			return nil, false
		}
		f.Epoch = string(epoch)
	default:
		return nil, false
	}
	return f, true
}

// fastMessageEvent decodes the event of a message send in the plain shape
// the SDKs write (kind, client_op_id and a message payload of plain
// strings and standard padded base64, keys by their proto or JSON names,
// each once) as protojson would, without protojson: it was two thirds of
// an op frame's decode. It reports false for anything else, which
// engine.DecodeEventJSON then decodes (or refuses) as before.
func fastMessageEvent(b []byte) (*pb.Event, bool) {
	s := frameScanner{b: b}
	ev := &pb.Event{}
	var kind, opID, msg bool
	ok := s.fields(func(key []byte) bool {
		var v []byte
		switch string(key) {
		case "kind":
			if kind {
				return false // protojson refuses a repeated field
			}
			if v, kind = s.plainString(); !kind {
				return false
			}
			k, known := pb.Kind_value[string(v)]
			ev.Kind = pb.Kind(k)
			return known && ev.Kind != pb.Kind_KIND_UNSPECIFIED
		case "client_op_id", "clientOpId":
			if opID {
				return false // protojson refuses a repeated field
			}
			v, opID = s.plainString()
			ev.ClientOpId = string(v)
			return opID
		case "message":
			if msg {
				return false
			}
			m, ok := s.messageSend()
			ev.Payload, msg = &pb.Event_Message{Message: m}, ok
			return ok
		}
		return false
	})
	if s.skipSpace(); !ok || s.i != len(b) || ev.Kind != pb.Kind_KIND_MESSAGE_SEND {
		return nil, false
	}
	return ev, true
}

// messageSend reads a MessageSend object for fastMessageEvent.
func (s *frameScanner) messageSend() (*pb.MessageSend, bool) {
	m := &pb.MessageSend{}
	var seen [6]bool
	ok := s.fields(func(key []byte) bool {
		var (
			dst *string
			i   int
		)
		switch string(key) {
		case "chat_type", "chatType":
			i = 0
		case "to":
			dst, i = &m.To, 1
		case "client_msg_id", "clientMsgId":
			dst, i = &m.ClientMsgId, 2
		case "content_type", "contentType":
			dst, i = &m.ContentType, 3
		case "body":
			i = 4
		case "group_id", "groupId":
			dst, i = &m.GroupId, 5
		default:
			return false
		}
		if seen[i] {
			return false
		}
		seen[i] = true
		v, ok := s.plainString()
		switch {
		case !ok:
			return false
		case dst != nil:
			*dst = string(v)
		case i == 0:
			ct, known := pb.ChatType_value[string(v)]
			m.ChatType = pb.ChatType(ct)
			return known
		default: // body: protojson also takes URL and unpadded base64, left to it
			if len(v)%4 != 0 {
				return false
			}
			body := make([]byte, base64.StdEncoding.DecodedLen(len(v)))
			n, err := base64.StdEncoding.Decode(body, v)
			if err != nil {
				return false
			}
			if n > 0 {
				m.Body = body[:n]
			}
		}
		return true
	})
	return m, ok
}

// fields reads an object whose values field reads, key by key; false when
// the input is not such an object or field reports false. An empty object
// is refused (protojson's answer is left to it).
func (s *frameScanner) fields(field func(key []byte) bool) bool {
	if !s.byte('{') {
		return false
	}
	for first := true; ; first = false {
		if s.byte('}') {
			return !first
		}
		if !first && !s.byte(',') {
			return false
		}
		key, ok := s.plainString()
		if !ok || !s.byte(':') || !field(key) {
			return false
		}
	}
}

// frameScanner reads the few JSON shapes fastFrame accepts; each method
// skips the whitespace before its token and reports false when the input
// is not that shape.
type frameScanner struct {
	b []byte
	i int
}

func (s *frameScanner) skipSpace() {
	for s.i < len(s.b) && (s.b[s.i] == ' ' || s.b[s.i] == '\t' || s.b[s.i] == '\n' || s.b[s.i] == '\r') {
		s.i++
	}
}

func (s *frameScanner) byte(c byte) bool {
	if s.skipSpace(); s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// plainString is a string of printable ASCII without escapes: the bytes
// the full decoder would give, as they are.
func (s *frameScanner) plainString() ([]byte, bool) {
	if !s.byte('"') {
		return nil, false
	}
	start := s.i
	for ; s.i < len(s.b); s.i++ {
		switch c := s.b[s.i]; {
		case c == '"':
			s.i++
			return s.b[start : s.i-1 : s.i-1], true
		case c < 0x20 || c > 0x7e || c == '\\':
			return nil, false
		}
	}
	return nil, false
}

// digits is an unsigned JSON integer: "0" or no leading zero.
func (s *frameScanner) digits() ([]byte, bool) {
	s.skipSpace()
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	n := s.b[start:s.i]
	if len(n) == 0 || (n[0] == '0' && len(n) > 1) || (s.i < len(s.b) && (s.b[s.i] == '.' || s.b[s.i] == 'e' || s.b[s.i] == 'E')) {
		return nil, false
	}
	return n, true
}

// object returns the bytes of an object value, found by matching braces
// outside strings. It does not check what is between them: protojson,
// which reads them next, refuses anything that is not one JSON object.
func (s *frameScanner) object() ([]byte, bool) {
	if s.skipSpace(); s.i >= len(s.b) || s.b[s.i] != '{' {
		return nil, false
	}
	start, depth, inString := s.i, 0, false
	for ; s.i < len(s.b); s.i++ {
		c := s.b[s.i]
		if inString {
			switch c {
			case '\\':
				s.i++
			case '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			depth++
		case '}', ']':
			if depth--; depth == 0 {
				s.i++
				return s.b[start:s.i:s.i], true
			}
		}
	}
	return nil, false
}

func readPosition(f *frame, w wireFrame) error {
	if len(w.Epoch) > maxEpochBytes {
		return engine.Errorf(engine.CodeInvalidArgument, "epoch longer than %d bytes", maxEpochBytes)
	}
	seq, err := uintField("seq", w.Seq)
	if err != nil {
		return err
	}
	f.Epoch, f.Seq = w.Epoch, seq
	return nil
}

func uintField(name string, n json.Number) (uint64, error) {
	if n == "" {
		return 0, nil
	}
	v, err := strconv.ParseUint(string(n), 10, 64)
	if err != nil {
		return 0, engine.Errorf(engine.CodeInvalidArgument, "%s must be an unsigned integer", name)
	}
	return v, nil
}

// chatType reads an enum as protobuf JSON does: its name or its number.
func chatType(raw json.RawMessage) (pb.ChatType, error) {
	var v any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &v); err != nil {
			return 0, engine.Errorf(engine.CodeInvalidArgument, "chat_type: %v", err)
		}
	}
	var ct pb.ChatType
	switch x := v.(type) {
	case string:
		n, ok := pb.ChatType_value[x]
		if !ok {
			return 0, engine.Errorf(engine.CodeInvalidArgument, "unknown chat_type %.32q", x)
		}
		ct = pb.ChatType(n)
	case float64:
		if x != float64(int32(x)) {
			return 0, engine.Errorf(engine.CodeInvalidArgument, "chat_type out of range")
		}
		ct = pb.ChatType(int32(x))
	case nil:
		return 0, engine.Errorf(engine.CodeMissingField, "chat_type is required")
	default:
		return 0, engine.Errorf(engine.CodeInvalidArgument, "chat_type must be a name or a number")
	}
	if _, ok := pb.ChatType_name[int32(ct)]; !ok || ct == pb.ChatType_CHAT_TYPE_UNSPECIFIED {
		return 0, engine.Errorf(engine.CodeInvalidArgument, "chat_type %d is not a chat type", ct)
	}
	return ct, nil
}

// Server frames. Protobuf parts use protojson with the .proto field names,
// except that 64-bit integers are JSON numbers, as they are in the frames
// around them (`seq` of an event frame and of its entry have one type).

var pjson partJSON

// partJSON marshals a protobuf part of a server frame: engine.MarshalPart.
type partJSON struct{}

func (partJSON) Marshal(m proto.Message) ([]byte, error) { return engine.MarshalPart(m) }

type errorFrame struct {
	Type    string `json:"type"`
	ID      string `json:"id,omitempty"`
	Code    int32  `json:"code"`
	Message string `json:"message,omitempty"`
	Addr    string `json:"addr,omitempty"` // 1018: the owner's address
	// RetryAfterMs: a retry after this long may succeed (retryAfter).
	RetryAfterMs int64 `json:"retry_after_ms,omitempty"`
}

type loginResultFrame struct {
	Type          string `json:"type"`
	ID            string `json:"id,omitempty"`
	Code          int32  `json:"code"`
	Message       string `json:"message,omitempty"`
	LoginID       string `json:"login_id,omitempty"`
	Reconnect     bool   `json:"reconnect,omitempty"`
	Resumed       bool   `json:"resumed,omitempty"`
	PolicyVersion uint64 `json:"policy_version,omitempty"`
	RetryAfterMs  int64  `json:"retry_after_ms,omitempty"`
}

type resultFrame struct {
	Type      string `json:"type"`
	ID        string `json:"id,omitempty"`
	Code      int32  `json:"code"`
	Message   string `json:"message,omitempty"`
	EventID   string `json:"event_id,omitempty"`
	MessageID string `json:"message_id,omitempty"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
	// RetryAfterMs comes with a refusal a retry may cure (1009, 1018
	// without an owner, 1019): send the op again, same client_op_id, after
	// it.
	RetryAfterMs int64 `json:"retry_after_ms,omitempty"`
}

type eventFrame struct {
	Type  string          `json:"type"`
	Epoch string          `json:"epoch"`
	Seq   uint64          `json:"seq"`
	Name  string          `json:"name"`
	Entry json.RawMessage `json:"entry"`
}

type snapshotFrame struct {
	Type          string            `json:"type"`
	Resync        bool              `json:"resync"`
	Epoch         string            `json:"epoch"`
	Seq           uint64            `json:"seq"`
	Part          int               `json:"part"`
	More          bool              `json:"more,omitempty"` // more parts of this snapshot follow (snapshot.go)
	Contacts      json.RawMessage   `json:"contacts"`
	Groups        json.RawMessage   `json:"groups"`
	Conversations []json.RawMessage `json:"conversations"`
}

type kickedFrame struct {
	Type         string `json:"type"`
	Code         int32  `json:"code"`
	Reason       string `json:"reason"`
	ByLoginID    string `json:"by_login_id,omitempty"`
	ByDeviceName string `json:"by_device_name,omitempty"`
	ByExtension  string `json:"by_extension,omitempty"`
}

type selfIDsFrame struct {
	Type     string   `json:"type"`
	ID       string   `json:"id,omitempty"`
	Code     int32    `json:"code"`
	LoginIDs []string `json:"login_ids"`
}

type historyFrame struct {
	Type    string            `json:"type"`
	ID      string            `json:"id,omitempty"`
	Code    int32             `json:"code"`
	Entries []json.RawMessage `json:"entries"`
}

type pongFrame struct {
	Type string `json:"type"`
	ID   string `json:"id,omitempty"`
}

// entryName is the event frame's name: one name per kind, the same for a
// multi-device and a single-device event (engine.KindInfo.Event; only
// `from` and `multi_device` tell them apart, as in the seeds).
func entryName(e *pb.TimelineEntry) string {
	return engine.EventName(e.GetSource().GetKind())
}

func encodeEvent(epoch string, e *pb.TimelineEntry) ([]byte, error) {
	b, err := pjson.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("gateway: encode entry: %w", err)
	}
	return eventFrameJSON(epoch, e.Seq, entryName(e), b)
}

// eventFrameJSON is the event frame of an entry already in its wire JSON
// (engine.MarshalPart): catch-up copies the stored bytes in as they are.
func eventFrameJSON(epoch string, seq uint64, name string, b []byte) ([]byte, error) {
	return appendEventFrame(make([]byte, 0, len(b)+len(epoch)+len(name)+64), epoch, seq, name, b)
}

// appendEventFrame appends eventFrameJSON's frame to dst: an events frame
// is built by appending its event frames in place (batch.go).
func appendEventFrame(dst []byte, epoch string, seq uint64, name string, b []byte) ([]byte, error) {
	if !plainJSONString(epoch) || !plainJSONString(name) {
		j, err := json.Marshal(eventFrame{Type: "event", Epoch: epoch, Seq: seq, Name: name, Entry: b})
		return append(dst, j...), err
	}
	// The same frame without json.Marshal's second pass over the entry
	// (it is compact JSON already: numbers64 wrote it).
	dst = append(dst, `{"type":"event","epoch":"`...)
	dst = append(dst, epoch...)
	dst = append(dst, `","seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, `,"name":"`...)
	dst = append(dst, name...)
	dst = append(dst, `","entry":`...)
	dst = append(dst, b...)
	return append(dst, '}'), nil
}

// plainJSONString reports whether s needs no escaping in JSON (and in
// HTML, as encoding/json escapes <, > and &): letters, digits and _.-@:.
func plainJSONString(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-' || c == '@' || c == ':') {
			return false
		}
	}
	return true
}

func encodeEntries(es []*pb.TimelineEntry) ([]json.RawMessage, error) {
	out := make([]json.RawMessage, 0, len(es))
	for _, e := range es {
		b, err := pjson.Marshal(e)
		if err != nil {
			return nil, fmt.Errorf("gateway: encode entry: %w", err)
		}
		out = append(out, b)
	}
	return out, nil
}

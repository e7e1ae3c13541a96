package client

import (
	"errors"
	"fmt"
	"time"

	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// Error is every failure that carries a code: a refused login (214, 1013),
// a refused operation (1011), a kick (206, 207, 216, 217), a REST error.
// Codes are engine.Code values (engine/errors.go). Use errors.As.
type Error struct {
	Code    int32
	Message string
	// HTTPStatus is the REST response status; 0 for WebSocket errors.
	HTTPStatus int
	// RetryAfter is when to send the request again: set on a refusal a
	// retry may cure (1019 busy; 1009 unavailable and 1018 without Addr,
	// the user's partition moving). Op, Dial and the REST calls wait it and
	// retry on their own, a bounded number of times.
	RetryAfter time.Duration
	// Addr is the host:port of the process that serves the user (code
	// 1018); Dial and reconnects follow it.
	Addr string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("error %d", e.Code)
	}
	return fmt.Sprintf("error %d: %s", e.Code, e.Message)
}

// CodeOf returns the code of err when it is (or wraps) an *Error, else 0.
func CodeOf(err error) int32 {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// Codes the SDK acts on (engine/errors.go has the full list).
const (
	CodeLoginOtherDevice    = 206
	CodeUserRemoved         = 207
	CodeTooManyDevices      = 214
	CodePasswordChanged     = 216
	CodeKickedByOtherDevice = 217
	CodeInvalidArgument     = 1001
	CodeTooLarge            = 1004
	CodeNotFound            = 1005
	CodeConflict            = 1006
	CodeForbidden           = 1008
	CodeUnauthenticated     = 1013
	CodeRateLimited         = 1014
	CodeNotOwner            = 1018 // another process serves the user: Error.Addr names it
	CodeBusy                = 1019 // the op was not decided: retry after Error.RetryAfter
	codeInternal            = 1010
)

var (
	// ErrClosed is returned by calls on a client after Close.
	ErrClosed = errors.New("client: closed")
	// ErrLoggedOut is returned by calls after a LOGOUT ended the session.
	ErrLoggedOut = errors.New("client: logged out")
)

// kickCode reports whether code ends a session (the device must not log
// itself back in).
func kickCode(code int32) bool {
	switch code {
	case CodeLoginOtherDevice, CodeUserRemoved, CodePasswordChanged, CodeKickedByOtherDevice:
		return true
	}
	return false
}

// Event is one timeline entry delivered to this device.
type Event struct {
	Epoch string
	Seq   uint64
	// Name is the kind's event name, the same for a multi-device and a
	// single-device event (docs/protocol.md, "Event names"):
	// "pinnedConversation", "chatThreadCreate", "onContactInvited",
	// "requestToJoin", "message_send"... Entry.MultiDevice and Entry.From
	// tell the two apart.
	Name     string
	Entry    *pb.TimelineEntry
	Received time.Time
}

// Kind is the kind of the operation behind the event.
func (e Event) Kind() pb.Kind { return e.Entry.GetSource().GetKind() }

// MultiDeviceEvent is an operation the user performed on another of their
// devices (the seeds' MultiDeviceEventHandler).
type MultiDeviceEvent struct {
	Event
	// Target is what the operation acted on: the contact's user ID, the
	// group, thread or conversation ID.
	Target string
}

// Snapshot is the device's state at timeline position (Epoch, Seq), sent on
// a first login or when the device's position cannot be continued. The
// server sends a large snapshot in parts; OnSnapshot gets it once, whole,
// after its last part.
type Snapshot struct {
	// Resync: the device had a position that can no longer be continued;
	// drop local state and take this one (code 1015).
	Resync        bool
	Epoch         string
	Seq           uint64
	Contacts      *pb.Contacts
	Groups        *pb.UserGroups
	Conversations []*pb.Conversation
}

// Kicked says why the server ended this device's session.
type Kicked struct {
	Code         int32  // 206, 207, 216 or 217
	Reason       string // e.g. REASON_LOGIN_OTHER_DEVICE
	ByLoginID    string // 206: the new device's login ID; 217: the kicking device's, when a device kicked
	ByDeviceName string // 206: the new device's name
	ByExtension  string // 206: the new device's login extension
}

// Message is one message to send.
type Message struct {
	ChatType pb.ChatType
	// To is the peer user (CHAT_TYPE_USER), the chatroom, or one of the
	// user's own login IDs (CHAT_TYPE_SELF_DEVICE).
	To      string
	GroupID string
	// ClientMsgID makes retries idempotent; generated when empty.
	ClientMsgID string
	ContentType string
	Body        []byte
}

// Result is an accepted operation's decision.
type Result struct {
	ClientOpID string // the op's client_op_id (generated if it was empty)
	EventID    string
	MessageID  string // set for messages
	Partition  int32
	Offset     int64
}

// LoginResult is what the server answered a login or resume.
type LoginResult struct {
	LoginID       string
	Reconnect     bool // a login with an active login ID: nobody evicted
	Resumed       bool
	PolicyVersion uint64
}

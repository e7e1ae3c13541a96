// Package push sends offline push notifications: when a message lands on
// the timeline of a user none of whose devices is connected, an Entry goes
// to a durable Outbox, and a Dispatcher POSTs it to a webhook at least once.
//
// Wiring (cmd/mdsync serve): a delivery-bus handler passes each delivered
// entry to Candidates and, when the gateway has no device of that user
// connected, enqueues it in the Outbox; `go dispatcher.Run(ctx)` sends it.
// The push side is deliberately not part of
// the projections: whether a device was connected is wall-clock state, not
// a function of the log, so the outbox lives in its own Pebble directory and
// never enters a projection digest or rebuild.
package push

import (
	"unicode/utf8"

	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// Entry is one push notification: a message on a user's timeline that no
// device of the user was connected to receive. It is also the webhook's
// JSON body (with "key" added, see Key).
type Entry struct {
	App  string `json:"app"`
	User string `json:"user"`
	// EntryID is the timeline entry id (the source event id, which is also
	// the message id).
	EntryID string `json:"entry_id"`
	// Seq is the entry's position on the user's timeline.
	Seq  uint64 `json:"seq"`
	From string `json:"from"`
	// ChatType is the protocol's name: "CHAT_TYPE_USER", "CHAT_TYPE_GROUP"
	// or "CHAT_TYPE_THREAD".
	ChatType string `json:"chat_type"`
	// ConversationID is the conversation seen from User: the peer user for
	// a one-to-one message, else the group or thread id.
	ConversationID string `json:"conversation_id"`
	// Preview is at most OutboxOptions.PreviewBytes of the message body,
	// cut at a UTF-8 boundary; empty by default (no content leaves the
	// server unless configured).
	Preview string `json:"preview,omitempty"`
	// TimeUnixMs is the message's event time.
	TimeUnixMs int64 `json:"time_unix_ms"`

	// body is the full message body from Candidates; Enqueue reduces it to
	// Preview before anything is written, so it never reaches disk.
	body []byte
}

// Key is the entry's idempotency key, "app/user/entry id". Ids are limited
// to letters, digits and "_-.@" (engine.ValidID), so the key is unambiguous.
// The same timeline entry always has the same key: re-applying an event
// after a crash enqueues nothing new, and the webhook sees the same key on
// every retry.
func (e Entry) Key() string { return e.App + "/" + e.User + "/" + e.EntryID }

// Candidates returns the push entry for a timeline entry just appended to
// (app, user)'s timeline, or ok=false when it must not push: anything but a
// MESSAGE_SEND, the user's own messages (multi-device copies, notes to self,
// messages to an own device) and chatroom messages. The caller decides
// whether the user is offline (the gateway knows). It is pure and never mutates e.
func Candidates(app, user string, e *pb.TimelineEntry) (Entry, bool) {
	src := e.GetSource()
	m := src.GetMessage()
	switch {
	case src.GetKind() != pb.Kind_KIND_MESSAGE_SEND || m == nil:
		return Entry{}, false
	case e.GetMultiDevice() || e.GetOnlyLoginId() != "" || e.GetFrom() == user || src.GetActor().GetUser() == user:
		return Entry{}, false
	case m.ChatType == pb.ChatType_CHAT_TYPE_CHATROOM || e.GetChatType() == pb.ChatType_CHAT_TYPE_CHATROOM,
		m.ChatType == pb.ChatType_CHAT_TYPE_SELF_DEVICE:
		return Entry{}, false
	}
	ct := e.GetChatType()
	if ct == pb.ChatType_CHAT_TYPE_UNSPECIFIED {
		ct = m.ChatType
	}
	return Entry{
		App: app, User: user, EntryID: e.GetEntryId(), Seq: e.GetSeq(), From: e.GetFrom(),
		ChatType:       ct.String(),
		ConversationID: e.GetConversationId(), TimeUnixMs: src.GetTimeUnixMs(), body: m.Body,
	}, true
}

// preview returns at most n bytes of b, cut at a rune boundary; "" when b
// is not valid UTF-8 (binary content has no meaningful preview).
func preview(b []byte, n int) string {
	if n <= 0 || !utf8.Valid(b) {
		return ""
	}
	if len(b) <= n {
		return string(b)
	}
	for n > 0 && !utf8.RuneStart(b[n]) {
		n--
	}
	return string(b[:n])
}

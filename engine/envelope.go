package engine

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// SchemaVersion is the envelope version this build writes (Event.schema_version).
const SchemaVersion = 1

// Stream keys are "<kind>\x00<app>\x00<id>". NUL cannot occur in ids (ValidID).
const (
	streamUser   = "u"
	streamGroup  = "g"
	streamPolicy = "p"
	streamRoom   = "r"
)

// UserStream is the stream of one user: its sessions, its messages and its
// contact and conversation operations, in one partition (invariant 4).
func UserStream(app, user string) string { return streamUser + "\x00" + app + "\x00" + user }

// IsUserStream reports stream == UserStream(app, user) without building
// the stream (the projector asks it of every operation).
func IsUserStream(stream, app, user string) bool {
	n := len(streamUser)
	return len(stream) == n+2+len(app)+len(user) && stream[:n] == streamUser && stream[n] == 0 &&
		stream[n+1:n+1+len(app)] == app && stream[n+1+len(app)] == 0 && stream[n+2+len(app):] == user
}

// GroupStream is the stream of a group and its threads: operations decided
// by the group's rules are ordered there, so one partition owns the group.
func GroupStream(app, group string) string { return streamGroup + "\x00" + app + "\x00" + group }

// RoomStream is the stream of a chatroom: its membership and messages.
func RoomStream(app, room string) string { return streamRoom + "\x00" + app + "\x00" + room }

// PolicyStream is the stream of the copy of an app's policy addressed to one
// partition; POLICY_SET is appended once to every partition.
func PolicyStream(app string, partition int32) string {
	return streamPolicy + "\x00" + app + "\x00" + strconv.Itoa(int(partition))
}

// StreamKeyFor returns the stream an operation is ordered on. POLICY_SET is
// addressed per partition and is not handled here.
func StreamKeyFor(ev *pb.Event) string {
	switch ki := kindByValue[ev.Kind]; {
	case ki != nil && (ki.Category == CatGroup):
		return GroupStream(ev.App, ev.GetGroup().GetGroupId())
	case ki != nil && ki.Category == CatThread:
		return GroupStream(ev.App, ev.GetThread().GetGroupId())
	case ki != nil && ki.Category == CatChatroom:
		return RoomStream(ev.App, ev.GetChatroom().GetRoomId())
	case ev.Kind == pb.Kind_KIND_MESSAGE_SEND:
		m := ev.GetMessage()
		switch m.GetChatType() {
		case pb.ChatType_CHAT_TYPE_GROUP:
			return GroupStream(ev.App, m.To)
		case pb.ChatType_CHAT_TYPE_THREAD:
			return GroupStream(ev.App, m.GroupId)
		case pb.ChatType_CHAT_TYPE_CHATROOM:
			return RoomStream(ev.App, m.To)
		}
	}
	return UserStream(ev.App, ev.GetActor().GetUser())
}

// EventID derives an event's id from what identifies the operation, so a
// retry of the same operation carries the same id and derived copies can
// compute their ids from it (invariant 6).
func EventID(streamKey, user, clientOpID string) string {
	h := sha256.New()
	h.Write([]byte(streamKey))
	h.Write([]byte{0})
	h.Write([]byte(user))
	h.Write([]byte{0})
	h.Write([]byte(clientOpID))
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// IsEventID reports whether id is EventID(streamKey, user, clientOpID),
// without allocating: the projector asks it of every decision it stores
// (projections' compactDecision drops an id it can derive).
func IsEventID(id, streamKey, user, clientOpID string) bool {
	if len(id) != 32 {
		return false
	}
	var buf [256]byte
	in := buf[:0]
	if n := len(streamKey) + len(user) + len(clientOpID) + 2; n > len(buf) {
		in = make([]byte, 0, n)
	}
	in = append(in, streamKey...)
	in = append(in, 0)
	in = append(in, user...)
	in = append(in, 0)
	in = append(in, clientOpID...)
	sum := sha256.Sum256(in)
	var h [32]byte
	hex.Encode(h[:], sum[:16])
	return string(h[:]) == id
}

var marshal = proto.MarshalOptions{Deterministic: true}

// Encode is the log encoding of an event: deterministic protobuf binary.
func Encode(ev *pb.Event) ([]byte, error) { return marshal.Marshal(ev) }

// Decode parses a log record. Unknown fields are kept (forward compatible);
// an event of an unknown kind decodes and is left to the caller.
func Decode(b []byte) (*pb.Event, error) {
	if ev, ok := decodeEvent(b, 0); ok {
		return ev, nil
	}
	ev := &pb.Event{}
	if err := proto.Unmarshal(b, ev); err != nil {
		return nil, Errorf(CodeInvalidArgument, "decode event: %v", err)
	}
	return ev, nil
}

// EncodeState encodes projection state deterministically (digests depend on it).
// The common state is encoded directly (appendState), the rest by proto.Marshal.
func EncodeState(m proto.Message) ([]byte, error) {
	var scratch [1024]byte // a user's sessions on several devices pass 256 bytes
	if b, ok := appendState(scratch[:0], m); ok {
		// One allocation of the exact size: the value may be kept long (the
		// hot cache), and a non-nil empty slice for an empty message, as
		// proto.Marshal gives.
		return append(make([]byte, 0, len(b)), b...), nil
	}
	return marshal.Marshal(m)
}

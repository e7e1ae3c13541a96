package engine

import (
	"unicode/utf8"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// appendState is EncodeState, byte for byte, for the state the projector
// writes for nearly every event (issue 12: proto.Marshal's reflection was
// most of the cost of writing a user's sessions and a decision): a user's
// sessions, a decision (its fan-out without source events, as the store
// records it), an ended session, a timeline meta, a conversation, a
// checkpoint. Fields go in field-number order,
// zero values of proto3 scalars are left out and a set sub-message is
// written even when empty, as the deterministic proto.Marshal does. It
// gives up (false) on anything else: another type, a nil message, unknown
// fields, a string that is not UTF-8 (proto.Marshal's error), a fan-out
// copy that carries its source event.
// The caller then takes proto.Marshal, so what is stored is always its
// output (FuzzEncodeState).
func appendState(b []byte, m proto.Message) ([]byte, bool) {
	switch m := m.(type) {
	case *pb.UserSessions:
		if m == nil || !sessionsOK(m) {
			return nil, false
		}
		for _, s := range m.Sessions {
			b = protowire.AppendTag(b, 1, protowire.BytesType)
			b = protowire.AppendVarint(b, uint64(sessionSize(s)))
			b = appendSession(b, s)
		}
		return appendU64(b, 2, m.CredentialEpoch), true
	case *pb.Decision:
		if m == nil || !decisionOK(m) {
			return nil, false
		}
		return appendDecision(b, m), true
	case *pb.Ended:
		if m == nil || !endedOK(m) {
			return nil, false
		}
		return appendEnded(b, m), true
	case *pb.TimelineMeta:
		if m == nil || !noUnknown(m) || !utf8.ValidString(m.Epoch) {
			return nil, false
		}
		b = appendStr(b, 1, m.Epoch)
		b = appendU64(b, 2, m.FirstSeq)
		b = appendU64(b, 3, m.LastSeq)
		return appendI64(b, 4, m.FirstTimeUnixMs), true
	case *pb.Conversation:
		if m == nil || !noUnknown(m) || !utf8.ValidString(m.ConversationId) || !utf8.ValidString(m.LastMessageId) {
			return nil, false
		}
		b = appendI32(b, 1, int32(m.ChatType))
		b = appendStr(b, 2, m.ConversationId)
		b = appendBool(b, 3, m.Pinned)
		b = appendI64(b, 4, m.PinnedAtMs)
		b = appendU64(b, 5, uint64(m.Marks))
		b = appendBool(b, 6, m.Deleted)
		b = appendU64(b, 7, m.Unread)
		b = appendU64(b, 8, m.LastSeq)
		b = appendU64(b, 9, m.ReadSeq)
		b = appendU64(b, 10, m.ClearedSeq)
		return appendStr(b, 11, m.LastMessageId), true
	case *pb.Checkpoint:
		if m == nil || !noUnknown(m) {
			return nil, false
		}
		b = appendI64(b, 1, m.NextOffset)
		b = appendU64(b, 2, m.Applied)
		b = appendU64(b, 3, m.Duplicates)
		return appendU64(b, 4, m.Skipped), true
	}
	return nil, false
}

func noUnknown(m proto.Message) bool { return len(m.ProtoReflect().GetUnknown()) == 0 }

func sessionsOK(m *pb.UserSessions) bool {
	if !noUnknown(m) {
		return false
	}
	for _, s := range m.Sessions {
		if s == nil || !sessionOK(s) {
			return false // a nil element is proto.Marshal's to refuse
		}
	}
	return true
}

func sessionOK(s *pb.Session) bool {
	return noUnknown(s) && utf8.ValidString(s.LoginId) && utf8.ValidString(s.DeviceName) && utf8.ValidString(s.Extension)
}

func actorOK(a *pb.Actor) bool {
	return noUnknown(a) && utf8.ValidString(a.User) && utf8.ValidString(a.LoginId)
}

func endedOK(e *pb.Ended) bool {
	return noUnknown(e) && (e.Session == nil || sessionOK(e.Session)) && (e.ByActor == nil || actorOK(e.ByActor)) &&
		utf8.ValidString(e.ByLoginId) && utf8.ValidString(e.ByDeviceName) && utf8.ValidString(e.ByExtension) &&
		utf8.ValidString(e.User)
}

func decisionOK(d *pb.Decision) bool {
	if !noUnknown(d) {
		return false
	}
	for _, s := range [...]string{d.App, d.User, d.ClientOpId, d.EventId, d.Message, d.LoginId, d.MessageId} {
		if !utf8.ValidString(s) {
			return false
		}
	}
	for _, e := range d.Ended {
		if e == nil || !endedOK(e) {
			return false
		}
	}
	for _, f := range d.Fanout {
		if f == nil || !deliverOK(f) {
			return false
		}
	}
	return true
}

func deliverOK(f *pb.Deliver) bool {
	if f.Source != nil || !noUnknown(f) {
		return false
	}
	for _, s := range [...]string{f.Recipient, f.From, f.ExcludeLoginId, f.OnlyLoginId} {
		if !utf8.ValidString(s) {
			return false
		}
	}
	for _, s := range f.Recipients {
		if !utf8.ValidString(s) {
			return false
		}
	}
	return true
}

func deliverSize(f *pb.Deliver) int {
	n := sizeStr(1, f.Recipient) + sizeStr(2, f.From) + sizeBool(3, f.MultiDevice) + sizeStr(4, f.ExcludeLoginId) +
		sizeStr(5, f.OnlyLoginId) + sizeI32(7, f.SourcePartition) + sizeI64(8, f.SourceOffset)
	for _, s := range f.Recipients {
		n += sizeMsg(9, len(s)) // every element, empty or not
	}
	return n
}

// appendDeliver writes a fan-out copy without its source (deliverOK).
func appendDeliver(b []byte, f *pb.Deliver) []byte {
	b = appendStr(b, 1, f.Recipient)
	b = appendStr(b, 2, f.From)
	b = appendBool(b, 3, f.MultiDevice)
	b = appendStr(b, 4, f.ExcludeLoginId)
	b = appendStr(b, 5, f.OnlyLoginId)
	b = appendI32(b, 7, f.SourcePartition)
	b = appendI64(b, 8, f.SourceOffset)
	for _, s := range f.Recipients {
		b = protowire.AppendTag(b, 9, protowire.BytesType)
		b = protowire.AppendString(b, s)
	}
	return b
}

func sessionSize(s *pb.Session) int {
	return sizeStr(1, s.LoginId) + sizeI32(2, s.Platform) + sizeStr(3, s.DeviceName) + sizeStr(4, s.Extension) +
		sizeI32(5, s.LoginPartition) + sizeI64(6, s.LoginOffset) + sizeI64(7, s.LoginTimeUnixMs) +
		sizeI64(8, s.LastLoginOffset) + sizeI64(9, s.LastLoginTimeUnixMs)
}

func appendSession(b []byte, s *pb.Session) []byte {
	b = appendStr(b, 1, s.LoginId)
	b = appendI32(b, 2, s.Platform)
	b = appendStr(b, 3, s.DeviceName)
	b = appendStr(b, 4, s.Extension)
	b = appendI32(b, 5, s.LoginPartition)
	b = appendI64(b, 6, s.LoginOffset)
	b = appendI64(b, 7, s.LoginTimeUnixMs)
	b = appendI64(b, 8, s.LastLoginOffset)
	return appendI64(b, 9, s.LastLoginTimeUnixMs)
}

func actorSize(a *pb.Actor) int {
	return sizeStr(1, a.User) + sizeStr(2, a.LoginId) + sizeBool(3, a.Admin)
}

func endedSize(e *pb.Ended) int {
	n := 0
	if e.Session != nil {
		n += sizeMsg(1, sessionSize(e.Session))
	}
	n += sizeI32(2, int32(e.Reason)) + sizeI32(3, e.Code) + sizeStr(4, e.ByLoginId) + sizeStr(5, e.ByDeviceName) +
		sizeStr(6, e.ByExtension)
	if e.ByActor != nil {
		n += sizeMsg(7, actorSize(e.ByActor))
	}
	return n + sizeU64(8, e.PolicyVersion) + sizeI32(9, e.Partition) + sizeI64(10, e.Offset) +
		sizeI64(11, e.TimeUnixMs) + sizeStr(12, e.User)
}

func appendEnded(b []byte, e *pb.Ended) []byte {
	if e.Session != nil {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(sessionSize(e.Session)))
		b = appendSession(b, e.Session)
	}
	b = appendI32(b, 2, int32(e.Reason))
	b = appendI32(b, 3, e.Code)
	b = appendStr(b, 4, e.ByLoginId)
	b = appendStr(b, 5, e.ByDeviceName)
	b = appendStr(b, 6, e.ByExtension)
	if a := e.ByActor; a != nil {
		b = protowire.AppendTag(b, 7, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(actorSize(a)))
		b = appendStr(b, 1, a.User)
		b = appendStr(b, 2, a.LoginId)
		b = appendBool(b, 3, a.Admin)
	}
	b = appendU64(b, 8, e.PolicyVersion)
	b = appendI32(b, 9, e.Partition)
	b = appendI64(b, 10, e.Offset)
	b = appendI64(b, 11, e.TimeUnixMs)
	return appendStr(b, 12, e.User)
}

func appendDecision(b []byte, d *pb.Decision) []byte {
	b = appendStr(b, 1, d.App)
	b = appendStr(b, 2, d.User)
	b = appendStr(b, 3, d.ClientOpId)
	b = appendStr(b, 4, d.EventId)
	b = appendI32(b, 5, int32(d.Kind))
	b = appendI32(b, 6, d.Code)
	b = appendStr(b, 7, d.Message)
	for _, e := range d.Ended {
		b = protowire.AppendTag(b, 8, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(endedSize(e)))
		b = appendEnded(b, e)
	}
	b = appendI32(b, 9, d.Partition)
	b = appendI64(b, 10, d.Offset)
	b = appendU64(b, 11, d.PolicyVersion)
	b = appendStr(b, 12, d.LoginId)
	b = appendBool(b, 13, d.Reconnect)
	for _, f := range d.Fanout {
		b = protowire.AppendTag(b, 14, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(deliverSize(f)))
		b = appendDeliver(b, f)
	}
	b = appendStr(b, 15, d.MessageId)
	b = appendU64(b, 16, uint64(d.AuditEnded))
	return appendBool(b, 17, d.MessageIdIsEventId)
}

// The scalar encodings of proto3 fields without presence: nothing for the
// zero value; an int32 (and an enum) is sign-extended to 64 bits.

func sizeStr(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(s))
}

func sizeMsg(num protowire.Number, n int) int { return protowire.SizeTag(num) + protowire.SizeBytes(n) }

func sizeU64(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

func sizeI64(num protowire.Number, v int64) int { return sizeU64(num, uint64(v)) }
func sizeI32(num protowire.Number, v int32) int { return sizeU64(num, uint64(int64(v))) }

func sizeBool(num protowire.Number, v bool) int {
	if !v {
		return 0
	}
	return protowire.SizeTag(num) + 1
}

func appendStr(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendU64(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendI64(b []byte, num protowire.Number, v int64) []byte { return appendU64(b, num, uint64(v)) }
func appendI32(b []byte, num protowire.Number, v int32) []byte {
	return appendU64(b, num, uint64(int64(v)))
}

func appendBool(b []byte, num protowire.Number, v bool) []byte {
	if !v {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return append(b, 1)
}

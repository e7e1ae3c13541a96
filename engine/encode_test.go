package engine

import (
	"bytes"
	"testing"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// stateShapes are values of every type appendState encodes, with every
// field set somewhere (negative int32s, field numbers above 15, empty
// sub-messages and elements), and the empty message of each type.
func stateShapes() []proto.Message {
	s1 := &pb.Session{LoginId: "dev-1", Platform: 2, DeviceName: "phone é", Extension: "{}", LoginPartition: 3,
		LoginOffset: 1 << 40, LoginTimeUnixMs: 1_700_000_000_123, LastLoginOffset: 7, LastLoginTimeUnixMs: 1_700_000_000_456}
	s2 := &pb.Session{LoginId: "dev-2", Platform: -3, LoginOffset: -1}
	ended := &pb.Ended{Session: s1, Reason: pb.Reason(2), Code: -4, ByLoginId: "dev-2", ByDeviceName: "tablet",
		ByExtension: "x", ByActor: &pb.Actor{User: "alice", LoginId: "dev-2", Admin: true}, PolicyVersion: 9,
		Partition: 5, Offset: 1234, TimeUnixMs: -5, User: "alice"}
	return []proto.Message{
		&pb.UserSessions{Sessions: []*pb.Session{s1, s2, {}}, CredentialEpoch: 1 << 33},
		&pb.UserSessions{Sessions: []*pb.Session{s2}},
		&pb.Decision{App: "app", User: "alice", ClientOpId: "op-1", EventId: "0123", Kind: pb.Kind_KIND_LOGIN, Code: 409,
			Message: "limit", Ended: []*pb.Ended{ended, {}, {Session: &pb.Session{}, ByActor: &pb.Actor{}}}, Partition: 3,
			Offset: 99, PolicyVersion: 2, LoginId: "dev-1", Reconnect: true, MessageId: "m", AuditEnded: 300,
			MessageIdIsEventId: true, Fanout: []*pb.Deliver{
				{Recipient: "bob", From: "alice", MultiDevice: true, ExcludeLoginId: "dev-1", OnlyLoginId: "x", SourcePartition: -2, SourceOffset: 1 << 35},
				{Recipients: []string{"c", "", "d"}, From: "alice"}, {}}},
		&pb.Decision{Kind: pb.Kind(-2), Code: -1, Offset: -7},
		ended,
		&pb.Ended{Reason: 1, Partition: 2, Offset: 3},
		&pb.TimelineMeta{Epoch: "e1", FirstSeq: 1, LastSeq: 1 << 50, FirstTimeUnixMs: -9},
		&pb.Conversation{ChatType: pb.ChatType_CHAT_TYPE_GROUP, ConversationId: "g1", Pinned: true, PinnedAtMs: 5,
			Marks: 1 << 31, Deleted: true, Unread: 3, LastSeq: 10, ReadSeq: 7, ClearedSeq: 2, LastMessageId: "m9"},
		&pb.Checkpoint{NextOffset: 1 << 45, Applied: 5, Duplicates: 6, Skipped: 7},
		&pb.UserSessions{}, &pb.Decision{}, &pb.Ended{}, &pb.TimelineMeta{}, &pb.Conversation{}, &pb.Checkpoint{},
	}
}

// checkEncodeState fails unless EncodeState(m) is the deterministic
// proto.Marshal of m: the same bytes (nil or not), or an error for both.
func checkEncodeState(t *testing.T, m proto.Message) {
	t.Helper()
	want, werr := marshal.Marshal(m)
	got, gerr := EncodeState(m)
	if (werr != nil) != (gerr != nil) {
		t.Fatalf("%T %v: error %v, proto.Marshal's %v", m, m, gerr, werr)
	}
	if !bytes.Equal(got, want) || (got == nil) != (want == nil) {
		t.Fatalf("%T %v:\n got  %x (nil %v)\n want %x (nil %v)", m, m, got, got == nil, want, want == nil)
	}
}

// TestEncodeStateTakesTheCommonShapes: the common state is encoded by
// appendState (else the fuzz test compares proto.Marshal with itself),
// to proto.Marshal's bytes.
func TestEncodeStateTakesTheCommonShapes(t *testing.T) {
	for _, m := range stateShapes() {
		if _, ok := appendState(nil, m); !ok {
			t.Errorf("%T %v: not encoded directly", m, m)
		}
		checkEncodeState(t, m)
	}
}

// TestEncodeStateLeavesTheRest: what appendState does not take goes to
// proto.Marshal, its errors included.
func TestEncodeStateLeavesTheRest(t *testing.T) {
	withUnknown := &pb.TimelineMeta{Epoch: "e"}
	withUnknown.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 20, protowire.VarintType), 1))
	for _, m := range []proto.Message{
		(*pb.UserSessions)(nil),
		&pb.UserSessions{Sessions: []*pb.Session{{LoginId: "a\xffb"}}},
		&pb.Decision{Fanout: []*pb.Deliver{{Recipient: "bob", Source: &pb.Event{}}}},
		&pb.Decision{Fanout: []*pb.Deliver{{Recipients: []string{"a", "\xff"}}}},
		&pb.Decision{Ended: []*pb.Ended{{ByActor: &pb.Actor{User: "\xff"}}}},
		&pb.Conversation{LastMessageId: "\xc0"},
		withUnknown,
		&pb.Policy{Version: 3},
	} {
		if _, ok := appendState(nil, m); ok {
			t.Errorf("%T %v: encoded directly", m, m)
		}
		checkEncodeState(t, m)
	}
}

// stateTypes are the types FuzzEncodeState decodes its input into.
var stateTypes = []func() proto.Message{
	func() proto.Message { return &pb.UserSessions{} },
	func() proto.Message { return &pb.Decision{} },
	func() proto.Message { return &pb.Ended{} },
	func() proto.Message { return &pb.TimelineMeta{} },
	func() proto.Message { return &pb.Conversation{} },
	func() proto.Message { return &pb.Checkpoint{} },
}

// FuzzEncodeState: for any value of the types appendState takes (the
// input decoded, its unknown fields kept or dropped, one string replaced
// by s, which may not be UTF-8), EncodeState is proto.Marshal.
func FuzzEncodeState(f *testing.F) {
	for _, m := range stateShapes() {
		b, err := marshal.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		for i, fresh := range stateTypes {
			if fresh().ProtoReflect().Descriptor() == m.ProtoReflect().Descriptor() {
				f.Add(b, uint8(i), "", false)
				f.Add(b, uint8(i|0x10), "x\xffy", true)
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte, sel uint8, s string, dropUnknown bool) {
		m := stateTypes[int(sel&0x0f)%len(stateTypes)]()
		if proto.Unmarshal(b, m) != nil {
			return
		}
		if dropUnknown {
			m.ProtoReflect().SetUnknown(nil)
		}
		if sel&0x10 != 0 {
			setSomeString(m, s, int(sel>>5))
		}
		checkEncodeState(t, m)
	})
}

// setSomeString sets the i-th string field appendState checks (of the
// message or the first of its sub-messages) to s.
func setSomeString(m proto.Message, s string, i int) {
	switch m := m.(type) {
	case *pb.UserSessions:
		if len(m.Sessions) > 0 && m.Sessions[0] != nil {
			*[]*string{&m.Sessions[0].LoginId, &m.Sessions[0].DeviceName, &m.Sessions[0].Extension}[i%3] = s
		}
	case *pb.Decision:
		fs := []*string{&m.App, &m.User, &m.ClientOpId, &m.EventId, &m.Message, &m.LoginId, &m.MessageId}
		if len(m.Ended) > 0 && m.Ended[0] != nil {
			fs = append(fs, &m.Ended[0].User)
		}
		if len(m.Fanout) > 0 && m.Fanout[0] != nil {
			fs = append(fs, &m.Fanout[0].Recipient, &m.Fanout[0].OnlyLoginId)
			if len(m.Fanout[0].Recipients) > 0 {
				fs = append(fs, &m.Fanout[0].Recipients[0])
			}
		}
		*fs[i%len(fs)] = s
	case *pb.Ended:
		fs := []*string{&m.ByLoginId, &m.ByDeviceName, &m.ByExtension, &m.User}
		if m.Session != nil {
			fs = append(fs, &m.Session.LoginId)
		}
		if m.ByActor != nil {
			fs = append(fs, &m.ByActor.LoginId)
		}
		*fs[i%len(fs)] = s
	case *pb.TimelineMeta:
		m.Epoch = s
	case *pb.Conversation:
		*[]*string{&m.ConversationId, &m.LastMessageId}[i%2] = s
	}
}

// BenchmarkEncodeState: EncodeState of a user's two sessions, a login's
// compact decision with one ended session, the ended row; and
// BenchmarkEncodeStateMarshal, proto.Marshal of the same.
func BenchmarkEncodeState(b *testing.B) {
	ms := benchStates()
	b.ReportAllocs()
	for b.Loop() {
		for _, m := range ms {
			if _, err := EncodeState(m); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkEncodeStateMarshal(b *testing.B) {
	ms := benchStates()
	b.ReportAllocs()
	for b.Loop() {
		for _, m := range ms {
			if _, err := marshal.Marshal(m); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func benchStates() []proto.Message {
	s := func(id string, off int64) *pb.Session {
		return &pb.Session{LoginId: id, Platform: 1, DeviceName: "phone", LoginOffset: off, LoginTimeUnixMs: 1_700_000_000_000 + off}
	}
	e := &pb.Ended{Session: s("dev-0", 1), Reason: 1, ByLoginId: "dev-2", Partition: 3, Offset: 4321, TimeUnixMs: 1_700_000_004_321, User: "user-0000001"}
	return []proto.Message{
		&pb.UserSessions{Sessions: []*pb.Session{s("dev-1", 1200), s("dev-2", 4321)}},
		&pb.Decision{Kind: pb.Kind_KIND_LOGIN, Partition: 3, Offset: 4321, PolicyVersion: 1, LoginId: "dev-2", AuditEnded: 1},
		e,
	}
}

// TestStateShapesSetEveryField: every field of every message appendState
// writes is set in some shape, so TestEncodeStateTakesTheCommonShapes
// compares it with proto.Marshal. A field added to one of these messages
// and not to appendState would otherwise be dropped from what is stored
// without a test noticing: this fails first, naming the field. The one
// field appendState never writes is a fan-out copy's source (such a
// decision goes to proto.Marshal).
func TestStateShapesSetEveryField(t *testing.T) {
	skip := map[protoreflect.FullName]bool{"mdsync.v1.Deliver.source": true}
	set := map[protoreflect.FullName]bool{}
	var walk func(m protoreflect.Message)
	walk = func(m protoreflect.Message) {
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			set[fd.FullName()] = true
			if fd.Message() == nil || skip[fd.FullName()] {
				return true
			}
			if fd.IsList() {
				for i := 0; i < v.List().Len(); i++ {
					walk(v.List().Get(i).Message())
				}
			} else {
				walk(v.Message())
			}
			return true
		})
	}
	for _, m := range stateShapes() {
		walk(m.ProtoReflect())
	}
	seen := map[protoreflect.FullName]bool{}
	var check func(md protoreflect.MessageDescriptor)
	check = func(md protoreflect.MessageDescriptor) {
		if seen[md.FullName()] {
			return
		}
		seen[md.FullName()] = true
		for i := 0; i < md.Fields().Len(); i++ {
			fd := md.Fields().Get(i)
			if skip[fd.FullName()] {
				continue
			}
			if !set[fd.FullName()] {
				t.Errorf("%s is set in no stateShapes value: add it there and to appendState", fd.FullName())
			}
			if fd.Message() != nil {
				check(fd.Message())
			}
		}
	}
	for _, fresh := range stateTypes {
		check(fresh().ProtoReflect().Descriptor())
	}
}

package projections

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// historyAppender returns add for the test histories: it gives ev the
// envelope the engine would (schema version, app, stream key, event id) and
// appends it to its partition's log (len(log) partitions).
func historyAppender(log [][]engine.Entry, app string) func(*pb.Event) {
	parts := int32(len(log))
	return func(ev *pb.Event) {
		ev.SchemaVersion, ev.App = engine.SchemaVersion, app
		if ev.StreamKey == "" {
			ev.StreamKey = engine.StreamKeyFor(ev)
		}
		ev.EventId = engine.EventID(ev.StreamKey, ev.Actor.User, ev.ClientOpId)
		b, err := engine.Encode(ev)
		if err != nil {
			panic(err)
		}
		p := engine.PartitionFor([]byte(ev.StreamKey), parts)
		log[p] = append(log[p], engine.Entry{Partition: p, Offset: int64(len(log[p])), Key: []byte(ev.StreamKey), Value: b})
	}
}

// burstHistory is a log of group bursts (runs of messages to two groups
// whose members span the partitions) mixed with what else reads or writes
// a recipient's state in the same batch: logins (a first login opens the
// timeline's meta), contact operations and bans (the actor's contacts are
// read and written as bytes while deliveries change the peer's decoded),
// group joins, leaves and kicks, conversation operations, 1:1 messages,
// and a policy with short retention (entries trimmed by count and by age).
func burstHistory(parts int32, n int, seed uint64) [][]engine.Entry {
	rng := rand.New(rand.NewPCG(seed, seed^0xb0057))
	log := make([][]engine.Entry, parts)
	const app = "app"
	add := historyAppender(log, app)
	users := make([]string, 24)
	for i := range users {
		users[i] = fmt.Sprint("u", i)
	}
	groups := []string{"g0", "g1"}
	op := 0
	event := func(user string, kind pb.Kind) *pb.Event {
		op++
		return &pb.Event{ClientOpId: fmt.Sprint("op", op), Kind: kind, Actor: &pb.Actor{User: user}, TimeUnixMs: 1_000_000 + int64(op)*1000}
	}
	for p := range parts {
		ev := event("admin", pb.Kind_KIND_POLICY_SET)
		ev.Actor.Admin = true
		ev.StreamKey = engine.PolicyStream(app, p)
		ev.Payload = &pb.Event_PolicySet{PolicySet: &pb.PolicySet{Version: 1, Partition: p, Partitions: parts,
			Mode: pb.PlatformMode_PLATFORM_MODE_MULTI, DefaultLimit: 4, AutoLogin: pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST,
			TimelineMaxEntries: 40, TimelineMaxAgeMs: 300_000}}
		add(ev)
	}
	for i, g := range groups {
		ev := event(users[i], pb.Kind_KIND_GROUP_CREATE)
		ev.Payload = &pb.Event_Group{Group: &pb.GroupOp{GroupId: g, Name: g, Users: users[2:16]}}
		add(ev)
	}
	for op < n {
		user, peer := users[rng.IntN(len(users))], users[rng.IntN(len(users))]
		group := groups[rng.IntN(len(groups))]
		switch r := rng.IntN(100); {
		case r < 30: // a burst
			for range 5 + rng.IntN(30) {
				ev := event(users[rng.IntN(16)], pb.Kind_KIND_MESSAGE_SEND)
				ev.Payload = &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_GROUP, To: group,
					ClientMsgId: ev.ClientOpId, ContentType: "text", Body: []byte("hi all " + ev.ClientOpId)}}
				add(ev)
			}
		case r < 42:
			ev := event(user, pb.Kind_KIND_LOGIN)
			ev.Payload = &pb.Event_Login{Login: &pb.Login{Platform: 1, LoginId: fmt.Sprint("d", op), DeviceName: "dev"}}
			add(ev)
		case r < 55:
			ev := event(user, pb.Kind_KIND_MESSAGE_SEND)
			ev.Payload = &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: peer,
				ClientMsgId: ev.ClientOpId, ContentType: "text", Body: []byte("hello " + ev.ClientOpId)}}
			add(ev)
		case r < 75:
			kinds := []pb.Kind{pb.Kind_KIND_CONTACT_REQUEST, pb.Kind_KIND_CONTACT_ACCEPT, pb.Kind_KIND_CONTACT_DECLINE,
				pb.Kind_KIND_CONTACT_REMOVE, pb.Kind_KIND_CONTACT_BAN, pb.Kind_KIND_CONTACT_ALLOW}
			ev := event(user, kinds[rng.IntN(len(kinds))])
			ev.Payload = &pb.Event_Contact{Contact: &pb.ContactOp{User: peer}}
			add(ev)
		case r < 88:
			kinds := []pb.Kind{pb.Kind_KIND_GROUP_JOIN, pb.Kind_KIND_GROUP_LEAVE, pb.Kind_KIND_GROUP_KICK}
			k := kinds[rng.IntN(len(kinds))]
			actor := user
			if k == pb.Kind_KIND_GROUP_KICK {
				actor = users[0]
				if group == "g1" {
					actor = users[1]
				}
			}
			ev := event(actor, k)
			ev.Payload = &pb.Event_Group{Group: &pb.GroupOp{GroupId: group}}
			if k == pb.Kind_KIND_GROUP_KICK {
				ev.Payload = &pb.Event_Group{Group: &pb.GroupOp{GroupId: group, Users: []string{peer}}}
			}
			add(ev)
		default:
			kinds := []pb.Kind{pb.Kind_KIND_CONVERSATION_READ, pb.Kind_KIND_CONVERSATION_PIN, pb.Kind_KIND_CONVERSATION_DELETE,
				pb.Kind_KIND_REMOTE_MESSAGES_REMOVE}
			ev := event(user, kinds[rng.IntN(len(kinds))])
			ev.Payload = &pb.Event_Conversation{Conversation: &pb.ConversationRef{ChatType: pb.ChatType_CHAT_TYPE_GROUP, ConversationId: group}}
			add(ev)
		}
	}
	return log
}

// applyIn applies log to s, each partition in batches of size entries
// (0: one batch per partition).
func applyIn(t *testing.T, s *Store, log [][]engine.Entry, size int) {
	t.Helper()
	for p, es := range log {
		step := size
		if step <= 0 {
			step = len(es)
		}
		for i := 0; i < len(es); i += step {
			if err := s.Apply(int32(p), es[i:min(i+step, len(es))]); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A batch that applies many messages to the same recipients keeps their
// state decoded and writes it once (txnstate.go): the store it leaves is
// byte for byte the store that applying one event per batch leaves, with
// and without the hot cache (a tiny one turns its generations over).
func TestBatchedStateSameBytes(t *testing.T) {
	const parts = 2
	hist := burstHistory(parts, 4000, 7)
	digest := func(size, hot int) string {
		s, err := Open(Options{FS: vfs.NewMem(), Partitions: parts, HotKeys: hot})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		applyIn(t, s, hist, size)
		if size == 1 && hot < 0 {
			checkBurstExercised(t, s, parts)
		}
		d, err := s.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	want := digest(1, -1)
	for _, c := range []struct{ size, hot int }{{1, 0}, {7, -1}, {7, 0}, {64, 0}, {64, 16}, {0, -1}, {0, 0}} {
		if got := digest(c.size, c.hot); got != want {
			t.Errorf("batches of %d, HotKeys %d: digest %s, want %s (one event per batch, no hot cache)", c.size, c.hot, got, want)
		}
	}
}

// checkBurstExercised fails unless the history trimmed entries, changed
// contacts and groups, and applied group messages to many members.
func checkBurstExercised(t *testing.T, s *Store, parts int32) {
	t.Helper()
	var trimmed, contacts, groups, group bool
	for i := range 24 {
		u := fmt.Sprint("u", i)
		sn, err := s.Snapshot("app", u)
		if err != nil {
			t.Fatal(err)
		}
		trimmed = trimmed || sn.Meta.FirstSeq > 1
		contacts = contacts || len(sn.Contacts.Friends)+len(sn.Contacts.Blocked) > 0
		groups = groups || len(sn.Groups.Groups) > 0
		for _, c := range sn.Conversations {
			group = group || c.ChatType == pb.ChatType_CHAT_TYPE_GROUP && c.LastSeq > 40
		}
	}
	if !trimmed || !contacts || !groups || !group {
		t.Fatalf("the history does not exercise the state: trimmed %v, contacts %v, groups %v, group messages %v", trimmed, contacts, groups, group)
	}
}

// A batch that fails part-way (here: an entry that does not continue the
// checkpoint, after many deliveries to members whose decoded state the
// batch took from the hot cache and changed) leaves no trace: the store
// reads as before, the hot cache holds only committed values, and the
// rest of the log then gives the digest of a store that never failed.
func TestFailedBatchLeavesStateAndHotCache(t *testing.T) {
	const parts = 2
	hist := burstHistory(parts, 3000, 11)
	ref, err := Open(Options{FS: vfs.NewMem(), Partitions: parts})
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	applyIn(t, ref, hist, 50)
	want, err := ref.Digest()
	if err != nil {
		t.Fatal(err)
	}

	s, err := Open(Options{FS: vfs.NewMem(), Partitions: parts})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	half := make([][]engine.Entry, parts)
	for p, es := range hist {
		half[p] = es[:len(es)/2]
	}
	applyIn(t, s, half, 50)
	before, err := s.Digest()
	if err != nil {
		t.Fatal(err)
	}
	snaps := func() string {
		var b bytes.Buffer
		for i := range 24 {
			sn, err := s.Snapshot("app", fmt.Sprint("u", i))
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintln(&b, sn.Meta, sn.Contacts, sn.Groups, sn.Conversations)
		}
		return b.String()
	}
	readsBefore := snaps()
	checkHotCache(t, s)
	for p, es := range hist {
		n := len(es) / 2
		batch := append(es[n:n+200:n+200], es[n+201]) // skips one: a gap at the end
		if err := s.Apply(int32(p), batch); !errors.Is(err, ErrGap) {
			t.Fatalf("partition %d: %v, want ErrGap", p, err)
		}
		if got := s.Checkpoint(int32(p)).NextOffset; got != int64(n) {
			t.Fatalf("partition %d: checkpoint %d after a failed batch, want %d", p, got, n)
		}
	}
	if got, err := s.Digest(); err != nil || got != before {
		t.Fatalf("after a failed batch: digest %s (%v), want %s", got, err, before)
	}
	if snaps() != readsBefore {
		t.Fatal("after a failed batch the store reads otherwise")
	}
	checkHotCache(t, s)
	for p, es := range hist {
		for i := len(es) / 2; i < len(es); i += 50 {
			if err := s.Apply(int32(p), es[i:min(i+50, len(es))]); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got, err := s.Digest(); err != nil || got != want {
		t.Fatalf("after a failed batch and the rest of the log: digest %s (%v), want %s", got, err, want)
	}
}

// checkHotCache fails unless every value in s's hot caches is what Pebble
// holds, and every decoded form with it is that value decoded.
func checkHotCache(t *testing.T, s *Store) {
	t.Helper()
	n, decoded := 0, 0
	for p, ps := range s.parts {
		ps.hot.each(func(k string, hv hotVal) {
			n++
			v, closer, err := s.db.Get([]byte(k))
			switch {
			case errors.Is(err, pebble.ErrNotFound):
				v = nil
			case err != nil:
				t.Fatal(err)
			default:
				v = bytes.Clone(v)
				closer.Close()
			}
			if !bytes.Equal(v, hv.b) {
				t.Fatalf("partition %d: hot %q is %x, Pebble holds %x", p, k, hv.b, v)
			}
			if hv.m != nil {
				decoded++
				if b, err := engine.EncodeState(hv.m); err != nil || !bytes.Equal(b, hv.b) {
					t.Fatalf("partition %d: hot %q decoded encodes to %x (%v), its value is %x", p, k, b, err, hv.b)
				}
			}
			if hv.s != nil {
				if b, err := engine.EncodeState(hv.s); err != nil || !bytes.Equal(b, hv.b) {
					t.Fatalf("partition %d: hot sessions %q decoded encodes to %x (%v), its value is %x", p, k, b, err, hv.b)
				}
			}
		})
	}
	if n == 0 || decoded == 0 {
		t.Fatalf("hot caches hold %d values, %d decoded: nothing checked", n, decoded)
	}
}

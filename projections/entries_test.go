package projections

import (
	"bytes"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections/storetest"
	"google.golang.org/protobuf/proto"
)

func applyHistory(t *testing.T, s *Store, parts int32, n int, seed uint64) {
	t.Helper()
	for p, es := range storetest.History(parts, n, seed) {
		for i := 0; i < len(es); i += 300 {
			if err := s.Apply(int32(p), es[i:min(i+300, len(es))]); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// timelineUsers lists (app, user) of every timeline in the store.
func timelineUsers(t *testing.T, s *Store) [][2]string {
	t.Helper()
	prefix := []byte{tagMeta, 0}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var out [][2]string
	for it.First(); it.Valid(); it.Next() {
		app, user, ok := splitPair(it.Key()[len(prefix):])
		if !ok {
			t.Fatalf("meta key %q", it.Key())
		}
		out = append(out, [2]string{app, user})
	}
	return out
}

// storedEntry decodes the value v stored at timeline key k of s.
func storedEntry(t *testing.T, s *Store, k, v []byte) *pb.TimelineEntry {
	t.Helper()
	app, _, ok := splitPair(k[2 : len(k)-9])
	if !ok {
		t.Fatalf("timeline key %q", k)
	}
	e, err := newBodyReader(s.db, app, nil).entry(v, seqOf(k))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// A store whose timeline values are in the earlier format (the protobuf
// entry) is rewritten when it opens, to exactly the bytes the current code
// writes: its digest equals the one of the store built with this code.
func TestTimelineMigratedOnOpen(t *testing.T) {
	withoutRuns(t) // the migration to layout 3 builds no runs (runs.go)
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	applyHistory(t, s, 2, 3000, 7)
	want, err := s.Digest()
	if err != nil {
		t.Fatal(err)
	}
	// Turn every entry back into format 1, as an earlier build wrote it.
	prefix := []byte{tagTimeline, 0}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		t.Fatal(err)
	}
	b := s.db.NewBatch()
	n := 0
	for it.First(); it.Valid(); it.Next() {
		e := storedEntry(t, s, it.Key(), it.Value())
		old, err := engine.EncodeState(e)
		if err != nil {
			t.Fatal(err)
		}
		if old[0] == 0 {
			t.Fatalf("a format-1 value starts with 0: %x", old[:8])
		}
		b.Set(it.Key(), old, nil)
		n++
	}
	it.Close()
	b.Delete(timelineLayoutKey, nil)
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if n < 500 {
		t.Fatalf("only %d timeline entries: the history does not exercise the timelines", n)
	}
	if d, _ := s.Digest(); d == want {
		t.Fatal("the rewrite to format 1 changed nothing")
	}
	// Format-1 values still read (a store is read only after Open migrated
	// it, but the readers do not depend on that).
	for _, au := range timelineUsers(t, s)[:5] {
		if _, _, _, err := s.Timeline(au[0], au[1], "", "", 0, 1000); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()

	s, err = Open(Options{Dir: dir, Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, err := s.Digest(); err != nil || got != want {
		t.Fatalf("digest after migration %s (%v), want %s", got, err, want)
	}
	if n, err := migrateTimelines(s.db, 2); err != nil || n != 0 {
		t.Fatalf("second migration rewrote %d (%v)", n, err)
	}
}

// TimelineJSON returns, page by page, the entries Timeline returns, each as
// engine.MarshalPart of the entry, and the same position to continue from,
// for devices that see everything, that performed some of the operations,
// and that are the only target of some.
func TestTimelineJSONMatchesTimeline(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir(), Partitions: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	applyHistory(t, s, 3, 3000, 11)
	users := timelineUsers(t, s)
	hidden := 0
	for _, au := range users {
		app, user := au[0], au[1]
		all, _, _, err := s.Timeline(app, user, "", "", 0, 100_000)
		if err != nil {
			t.Fatal(err)
		}
		logins := map[string]bool{"": true}
		for _, e := range all {
			logins[e.ExcludeLoginId] = true
			logins[e.OnlyLoginId] = true
		}
		for login := range logins {
			var after uint64
			epoch := ""
			for {
				want, wnext, meta, werr := s.Timeline(app, user, login, epoch, after, 50)
				got, gnext, _, gerr := s.TimelineJSON(app, user, login, epoch, after, 50)
				if werr != nil || gerr != nil {
					t.Fatalf("%s/%s: %v / %v", app, user, werr, gerr)
				}
				if gnext != wnext || len(got) != len(want) {
					t.Fatalf("%s/%s as %q after %d: %d entries to %d, want %d to %d", app, user, login, after, len(got), gnext, len(want), wnext)
				}
				for i, e := range want {
					j, err := engine.MarshalPart(e)
					if err != nil {
						t.Fatal(err)
					}
					if got[i].Seq != e.Seq || got[i].Kind != e.Source.GetKind() || !bytes.Equal(got[i].JSON, j) {
						t.Fatalf("%s/%s seq %d: %d %v %s\nwant %s", app, user, e.Seq, got[i].Seq, got[i].Kind, got[i].JSON, j)
					}
				}
				if len(want) < len(all) && login != "" {
					hidden++
				}
				if wnext == after {
					break
				}
				after, epoch = wnext, meta.Epoch
			}
		}
	}
	if len(users) < 5 || hidden == 0 {
		t.Fatalf("%d timelines, %d pages with hidden entries: the history does not exercise visibility", len(users), hidden)
	}
}

// A stored value decodes back to the entry it was encoded from, and its
// head holds the entry's retention, history and visibility fields.
func TestEntryValueRoundTrip(t *testing.T) {
	e := &pb.TimelineEntry{Seq: 1 << 40, EntryId: "ev1", From: "bob", MultiDevice: true, ExcludeLoginId: "A1", OnlyLoginId: "A2",
		SourcePartition: 3, SourceOffset: 1 << 50, ConversationId: "g1", ChatType: pb.ChatType_CHAT_TYPE_GROUP,
		Source: &pb.Event{Kind: pb.Kind_KIND_MESSAGE_SEND, TimeUnixMs: -5, EventId: "ev1", Actor: &pb.Actor{User: "bob", LoginId: "B1"},
			Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_GROUP, To: "g1", Body: []byte{0, 1, 255}}}}}
	v, err := encodeEntry(e)
	if err != nil {
		t.Fatal(err)
	}
	h, err := parseEntry(v)
	if err != nil {
		t.Fatal(err)
	}
	if h.kind != pb.Kind_KIND_MESSAGE_SEND || h.time != -5 || h.chatType != int32(pb.ChatType_CHAT_TYPE_GROUP) ||
		string(h.conv) != "g1" || string(h.only) != "A2" || string(h.exclude) != "A1" || !h.visibleTo("A2") || h.visibleTo("A1") {
		t.Fatalf("head %+v", h)
	}
	got, err := newBodyReader(nil, "", nil).entry(v, e.Seq)
	if err != nil || !proto.Equal(got, e) {
		t.Fatalf("decoded %v (%v), want %v", got, err, e)
	}
	for i := 2; i < len(v)-len(h.json); i++ {
		if _, err := parseEntry(v[:i]); err == nil {
			t.Fatalf("a value cut at %d bytes parses", i)
		}
	}
}

// entryWireJSON writes exactly engine.MarshalPart's bytes for every
// combination of set and unset entry fields.
func TestEntryWireJSONIsMarshalPart(t *testing.T) {
	src := &pb.Event{Kind: pb.Kind_KIND_GROUP_CREATE, App: "a", TimeUnixMs: 1 << 41, EventId: "ev", Actor: &pb.Actor{User: "u", LoginId: "L"},
		Payload: &pb.Event_Group{Group: &pb.GroupOp{GroupId: "g", Users: []string{"x", "y"}, Name: "n<&>\"q"}}}
	sj, err := engine.MarshalPart(src)
	if err != nil {
		t.Fatal(err)
	}
	for mask := range 1 << 10 {
		e := &pb.TimelineEntry{Source: src}
		set := func(i int) bool { return mask&(1<<i) != 0 }
		if set(0) {
			e.Seq = 1<<53 - 1
		}
		if set(1) {
			e.EntryId = "ev"
		}
		if set(2) {
			e.From = "u@x.y-z_1"
		}
		if set(3) {
			e.MultiDevice = true
		}
		if set(4) {
			e.ExcludeLoginId = "L1"
		}
		if set(5) {
			e.OnlyLoginId = "L2"
		}
		if set(6) {
			e.SourcePartition = 7
		}
		if set(7) {
			e.SourceOffset = 1 << 45
		}
		if set(8) {
			e.ConversationId = "g/t1"
		}
		if set(9) {
			e.ChatType = pb.ChatType_CHAT_TYPE_THREAD
		}
		want, err := engine.MarshalPart(e)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := entryWireJSON(e, sj)
		if !ok || !bytes.Equal(got, want) {
			t.Fatalf("mask %b: %v\n got %s\nwant %s", mask, ok, got, want)
		}
	}
	if _, ok := entryWireJSON(&pb.TimelineEntry{Source: src, From: `a"b`}, sj); ok {
		t.Fatal("a string that needs escaping was written as it is")
	}
}

// The members' copies of a group message encode their one value once; a
// copy differing in any field encodeRefEntry reads is encoded anew.
func TestRefEncoderIsEncodeRefEntry(t *testing.T) {
	base := func() *pb.TimelineEntry {
		src := &pb.Event{Kind: pb.Kind_KIND_MESSAGE_SEND, App: "app", TimeUnixMs: 1 << 41, EventId: "ev-1", Actor: &pb.Actor{User: "bob", LoginId: "B1"},
			Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_GROUP, To: "g1", Body: []byte("hi")}}}
		return &pb.TimelineEntry{Seq: 7, EntryId: src.EventId, From: "bob", Source: src, SourcePartition: 3, SourceOffset: 1 << 40,
			ConversationId: "g1", ChatType: pb.ChatType_CHAT_TYPE_GROUP}
	}
	variants := map[string]func(e *pb.TimelineEntry, p *int32){
		"kind":         func(e *pb.TimelineEntry, _ *int32) { e.Source.Kind = pb.Kind_KIND_READ_RECEIPT },
		"time":         func(e *pb.TimelineEntry, _ *int32) { e.Source.TimeUnixMs++ },
		"chat type":    func(e *pb.TimelineEntry, _ *int32) { e.ChatType = pb.ChatType_CHAT_TYPE_THREAD },
		"bad type":     func(e *pb.TimelineEntry, _ *int32) { e.ChatType = 99 },
		"conversation": func(e *pb.TimelineEntry, _ *int32) { e.ConversationId = "g2" },
		"only":         func(e *pb.TimelineEntry, _ *int32) { e.OnlyLoginId = "B2" },
		"exclude":      func(e *pb.TimelineEntry, _ *int32) { e.ExcludeLoginId = "B1" },
		"from":         func(e *pb.TimelineEntry, _ *int32) { e.From = "carol" },
		"escaped from": func(e *pb.TimelineEntry, _ *int32) { e.From = "bo\"b" },
		"entry id":     func(e *pb.TimelineEntry, _ *int32) { e.EntryId = "ev-2"; e.Source.EventId = "ev-2" },
		"not source's": func(e *pb.TimelineEntry, _ *int32) { e.EntryId = "ev-2" },
		"multi":        func(e *pb.TimelineEntry, _ *int32) { e.MultiDevice = true },
		"src part":     func(e *pb.TimelineEntry, _ *int32) { e.SourcePartition = 4 },
		"src offset":   func(e *pb.TimelineEntry, _ *int32) { e.SourceOffset++ },
		"body part":    func(_ *pb.TimelineEntry, p *int32) { *p = 6 },
	}
	var c refEncoder
	first, ok := c.encode(base(), 5)
	if want, wok := encodeRefEntry(base(), 5); ok != wok || !bytes.Equal(first, want) {
		t.Fatalf("first copy %x (%v), want %x (%v)", first, ok, want, wok)
	}
	member := base()
	member.Seq = 900 // another member's seq: the same value
	if v, ok := c.encode(member, 5); !ok || &v[0] != &first[0] {
		t.Fatal("a member's copy was encoded again")
	}
	for name, change := range variants {
		e, p := base(), int32(5)
		change(e, &p)
		got, ok := c.encode(e, p)
		want, wok := encodeRefEntry(e, p)
		if ok != wok || !bytes.Equal(got, want) {
			t.Errorf("%s: %x (%v), want %x (%v)", name, got, ok, want, wok)
		}
		if back, ok := c.encode(base(), 5); !ok || !bytes.Equal(back, first) {
			t.Errorf("%s: the base entry after it: %x (%v)", name, back, ok)
		}
	}
}

package projections

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections/storetest"
	"google.golang.org/protobuf/encoding/protojson"
)

// retainedHistory is storetest.History with every policy change keeping
// timelines short (maxEntries entries, maxAgeMs of event time; the
// history's events are 1 s apart), so retention trims entries, and with
// them references to bodies, all along.
func retainedHistory(t *testing.T, parts int32, n int, seed uint64, maxEntries, maxAgeMs int64) [][]engine.Entry {
	t.Helper()
	log := storetest.History(parts, n, seed)
	for _, es := range log {
		for i, e := range es {
			ev, err := engine.Decode(e.Value)
			if err != nil || ev.Kind != pb.Kind_KIND_POLICY_SET {
				continue
			}
			ev.GetPolicySet().TimelineMaxEntries, ev.GetPolicySet().TimelineMaxAgeMs = maxEntries, maxAgeMs
			if es[i].Value, err = engine.Encode(ev); err != nil {
				t.Fatal(err)
			}
		}
	}
	return log
}

func applyLog(t *testing.T, s *Store, log [][]engine.Entry) {
	t.Helper()
	for p, es := range log {
		for i := 0; i < len(es); i += 300 {
			if err := s.Apply(int32(p), es[i:min(i+300, len(es))]); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// bodyCensus checks the body tables against the timelines: every
// reference count equals the number of format-3 entries naming its body
// (a run's members counted as the index entries they stand for), every
// body has a count and every count a body; every run index entry is named
// by its body's count, and every run member's index entry exists. It
// returns the number of bodies and of format-3 entries.
func bodyCensus(t *testing.T, s *Store) (bodies, refs int) {
	t.Helper()
	want := map[string]int64{}
	wantIdx := map[string]string{} // index key → its body's count key
	count := func(app string, v []byte) {
		h, err := parseEntry(v)
		if err != nil {
			t.Fatal(err)
		}
		if !h.ref {
			if sharesBodyHead(&h) {
				t.Errorf("%x: a message to many stored inline", v)
			}
			return
		}
		want[string(bodyKey(tagBodyRefs, app, h.id, h.bodyPart))]++
		refs++
	}
	scan(t, s, tagTimeline, func(k, v []byte) {
		app, _, _ := splitPair(k[2 : len(k)-9])
		if h, err := parseEntry(v); err != nil || !h.run {
			count(app, v)
		}
	})
	for _, r := range storedRuns(t, s) {
		for seq := r.start; seq <= r.end; seq++ {
			ik := runIndexKey(r.app, r.h.chatType, string(r.h.conv), r.h.runPart, r.h.runOrd+seq-r.start)
			iv, closer, err := s.db.Get(ik)
			if err != nil {
				t.Fatalf("%s/%s run at %d: index entry %q: %v", r.app, r.user, r.start, ik, err)
			}
			count(r.app, iv)
			ih, _ := parseEntry(iv)
			wantIdx[string(ik)] = string(bodyKey(tagBodyRefs, r.app, ih.id, ih.bodyPart))
			closer.Close()
		}
	}
	got := map[string]int64{}
	gotIdx := map[string]string{}
	scan(t, s, tagBodyRefs, func(k, v []byte) {
		if len(v) < 8 {
			t.Fatalf("count %q = %x", k, v)
		}
		got[string(k)] = int64(binary.BigEndian.Uint64(v))
		if len(v) > 8 {
			gotIdx[string(v[8:])] = string(k)
		}
	})
	scan(t, s, tagRunIndex, func(k, v []byte) {
		if isRunCounterKey(k) {
			return // a counter
		}
		if gotIdx[string(k)] == "" {
			t.Errorf("run index entry %q named by no count", k)
		}
	})
	for ik, ck := range wantIdx {
		if gotIdx[ik] != ck {
			t.Errorf("run index entry %q: named by %q, its body's count is %q", ik, gotIdx[ik], ck)
		}
	}
	scan(t, s, tagBody, func(k, v []byte) {
		bodies++
		ck := append([]byte{tagBodyRefs}, k[1:]...)
		if got[string(ck)] == 0 {
			t.Errorf("body %q without references", k)
		}
		if err := protojson.Unmarshal(v, &pb.Event{}); err != nil {
			t.Errorf("body %q: %v", k, err)
		}
	})
	for k, n := range want {
		if got[k] != n {
			t.Errorf("%q: count %d, %d entries reference it", k, got[k], n)
		}
	}
	if len(got) != len(want) || bodies != len(want) {
		t.Errorf("%d counts, %d bodies, %d bodies referenced", len(got), bodies, len(want))
	}
	return bodies, refs
}

func scan(t *testing.T, s *Store, tag byte, fn func(k, v []byte)) {
	t.Helper()
	prefix := []byte{tag, 0}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		fn(it.Key(), it.Value())
	}
	if err := it.Error(); err != nil {
		t.Fatal(err)
	}
}

// A group message's body is stored once per partition and counted by the
// entries that reference it; retention's trims release the references,
// and a body goes with its last one. Entries still read back as the
// messages they were (TimelineJSON is MarshalPart of Timeline's entries).
func TestBodiesCountedAndDropped(t *testing.T) {
	const parts = 3
	kept := openMem(t, parts, nil)
	defer kept.Close()
	applyLog(t, kept, retainedHistory(t, parts, 6000, 5, 0, 0)) // default retention: nothing trimmed
	allBodies, allRefs := bodyCensus(t, kept)

	s := openMem(t, parts, nil)
	defer s.Close()
	applyLog(t, s, retainedHistory(t, parts, 6000, 5, 6, 150_000))
	bodies, refs := bodyCensus(t, s)
	t.Logf("default retention: %d bodies, %d references; short retention: %d bodies, %d references", allBodies, allRefs, bodies, refs)
	if allRefs < 500 || allRefs < 2*allBodies {
		t.Fatalf("%d references to %d bodies: the history does not share bodies", allRefs, allBodies)
	}
	if refs == 0 || bodies >= allBodies/2 {
		t.Fatalf("short retention keeps %d of %d bodies (%d references)", bodies, allBodies, refs)
	}
	for _, au := range timelineUsers(t, s) {
		es, _, meta, err := s.Timeline(au[0], au[1], "", "", 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) > 6 || uint64(len(es)) != meta.LastSeq-meta.FirstSeq+1 {
			t.Fatalf("%v: %d entries, meta %v", au, len(es), meta)
		}
		got, _, _, err := s.TimelineJSON(au[0], au[1], "", "", 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range es {
			j, err := engine.MarshalPart(e)
			if err != nil || string(j) != string(got[i].JSON) {
				t.Fatalf("%v seq %d: %s\nwant %s (%v)", au, e.Seq, got[i].JSON, j, err)
			}
		}
	}
}

// A store written before bodies (messages to many inline, format 2; the
// layout mark at 2) is migrated on open to exactly what this code builds,
// bodies and counts included; and so is one whose migration was
// interrupted halfway (some entries rewritten, no counts written).
func TestBodiesMigratedOnOpen(t *testing.T) {
	withoutRuns(t) // the migration to layout 3 builds no runs (runs.go)
	const parts = 2
	log := retainedHistory(t, parts, 4000, 9, 60, 0)
	for _, half := range []bool{false, true} {
		dir := t.TempDir()
		s, err := Open(Options{Dir: dir, Partitions: parts})
		if err != nil {
			t.Fatal(err)
		}
		applyLog(t, s, log)
		want, err := s.Digest()
		if err != nil {
			t.Fatal(err)
		}
		_, refs := bodyCensus(t, s)
		b := s.db.NewBatch()
		n := 0
		scan(t, s, tagTimeline, func(k, v []byte) {
			if h, _ := parseEntry(v); !h.ref {
				return
			}
			if n++; half && n%2 == 0 {
				return
			}
			old, err := encodeEntry(storedEntry(t, s, k, v))
			if err != nil {
				t.Fatal(err)
			}
			b.Set(k, old, nil)
		})
		for _, tag := range []byte{tagBodyRefs, tagBody} {
			if tag == tagBody && half {
				continue // the interrupted migration's bodies stay
			}
			scan(t, s, tag, func(k, _ []byte) { b.Delete(k, nil) })
		}
		b.Set(timelineLayoutKey, []byte{2}, nil)
		if err := b.Commit(pebble.Sync); err != nil {
			t.Fatal(err)
		}
		if n != refs || n < 200 {
			t.Fatalf("%d format-3 entries, census %d", n, refs)
		}
		if d, _ := s.Digest(); d == want {
			t.Fatal("the rewrite to the old layout changed nothing")
		}
		s.Close()

		s, err = Open(Options{Dir: dir, Partitions: parts})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := s.Digest(); err != nil || got != want {
			t.Fatalf("half %v: digest after migration %s (%v), want %s", half, got, err, want)
		}
		bodyCensus(t, s)
		if n, err := migrateTimelines(s.db, parts); err != nil || n != 0 {
			t.Fatalf("second migration rewrote %d (%v)", n, err)
		}
		s.Close()
	}
}

// A member's entry of a group message is tens of bytes: the message is in
// the partition's body, not in the entry.
func TestGroupEntryReferencesBody(t *testing.T) {
	src := &pb.Event{Kind: pb.Kind_KIND_MESSAGE_SEND, App: "app", TimeUnixMs: 1 << 41, EventId: "ev-123456789012", Actor: &pb.Actor{User: "bob", LoginId: "B1"},
		Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_GROUP, To: "g1", Body: make([]byte, 600)}}}
	e := &pb.TimelineEntry{Seq: 77, EntryId: src.EventId, From: "bob", Source: src, SourcePartition: 3, SourceOffset: 1 << 40,
		ConversationId: "g1", ChatType: pb.ChatType_CHAT_TYPE_GROUP}
	v, ok := encodeRefEntry(e, 5)
	if !ok || len(v) > 64 {
		t.Fatalf("reference entry %d bytes (%v)", len(v), ok)
	}
	h, err := parseEntry(v)
	if err != nil || !h.ref || h.bodyPart != 5 || string(h.id) != src.EventId || string(h.from) != "bob" || h.srcOff != 1<<40 {
		t.Fatalf("head %+v (%v)", h, err)
	}
	body, err := engine.MarshalPart(src)
	if err != nil {
		t.Fatal(err)
	}
	want, err := engine.MarshalPart(e)
	if err != nil {
		t.Fatal(err)
	}
	if got := h.refJSON(nil, 77, body); string(got) != string(want) {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	for i := 2; i < len(v)-len(h.id); i++ {
		if _, err := parseEntry(v[:i]); err == nil {
			t.Fatalf("a value cut at %d bytes parses", i)
		}
	}
	e.EntryId = "other"
	if _, ok := encodeRefEntry(e, 5); ok {
		t.Fatal("an entry whose id is not its source's references a body")
	}
}

// Catch-up reads entries and their bodies from one view: while retention
// trims entries (and deletes the bodies of the last ones) on the applying
// goroutine, a reader never meets a reference whose body is gone; it may
// only be told to resync when its position falls behind retention.
func TestCatchUpWhileBodiesAreDropped(t *testing.T) {
	const parts = 1
	s := openMem(t, parts, nil)
	defer s.Close()
	log := retainedHistory(t, parts, 6000, 21, 4, 0)
	done := make(chan struct{})
	var applyErr error
	go func() {
		defer close(done)
		for _, es := range log {
			for i := 0; i < len(es) && applyErr == nil; i += 50 {
				applyErr = s.Apply(0, es[i:min(i+50, len(es))])
			}
		}
	}()
	reads, refs := 0, 0
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		for _, u := range []string{"u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"} {
			_, _, err := s.TimelineEach("app", u, "", "", 0, 100, func(_ string, _ uint64, k pb.Kind, j []byte) error {
				if k == pb.Kind_KIND_MESSAGE_SEND && bytes.Contains(j, []byte(`"chat_type":"CHAT_TYPE_GROUP"`)) {
					refs++
				}
				return nil
			})
			if err != nil && !errors.Is(err, ErrResync) {
				t.Fatalf("catch-up of %s during trims: %v", u, err)
			}
			reads++
		}
	}
	if applyErr != nil {
		t.Fatal(applyErr)
	}
	bodies, _ := bodyCensus(t, s)
	t.Logf("%d catch-ups read %d group messages while the log applied; %d bodies left", reads, refs, bodies)
	if reads < 50 || refs == 0 {
		t.Fatalf("%d catch-ups, %d messages: the reads did not overlap the trims", reads, refs)
	}
}

// isRunCounterKey reports whether k, a key of the run index table, is a
// conversation's counter (g 0 <app> 0 <ct><conv> 0 <p:4>), not one of its
// entries (the counter's key and an 8-byte ordinal).
func isRunCounterKey(k []byte) bool {
	i := bytes.IndexByte(k[2:], 0) // after the app
	if i < 0 {
		return false
	}
	rest := k[2+i+1:]
	j := bytes.IndexByte(rest[1:], 0) // after the conversation
	return j >= 0 && len(rest[1+j+1:]) == 4
}

package projections

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// BenchmarkApplyGroupMessage: the per-member apply of a group message, the
// part of BenchmarkGroupFanout that grows with the members, without the
// log, the relay or other partitions. One partition, a 1,000-member group
// (all its copies applied inline), messages applied 20 per batch. Reports
// member entries/s and the bytes the store's WAL took per member entry.
// Baseline in the same run: a bare Pebble writing one value of the
// message's stored size (a full copy per member) per member entry, in the
// same number of batches. Then catchup_ratio: members' catch-ups of their
// timelines (TimelineEach, every entry visible) over a raw Pebble scan of
// the member's entries stored whole (the baseline's store), in entries per
// second, in turns.
func BenchmarkApplyGroupMessage(b *testing.B) {
	const (
		members = 1000
		perCall = 20
		app     = "bench"
		group   = "g"
	)
	dir := b.TempDir()
	s, err := Open(Options{Dir: filepath.Join(dir, "store"), Partitions: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var off int64
	entry := func(ev *pb.Event) engine.Entry {
		ev.SchemaVersion, ev.App, ev.TimeUnixMs = engine.SchemaVersion, app, 1_000_000+off
		ev.StreamKey = engine.StreamKeyFor(ev)
		ev.EventId = engine.EventID(ev.StreamKey, ev.Actor.User, ev.ClientOpId)
		v, err := engine.Encode(ev)
		if err != nil {
			b.Fatal(err)
		}
		e := engine.Entry{Offset: off, Key: []byte(ev.StreamKey), Value: v}
		off++
		return e
	}
	user := func(i int) string { return fmt.Sprintf("member-%04d", i) }
	var setup []engine.Entry
	first := make([]string, 0, engine.MaxUsersPerOp-1)
	for i := 1; i < engine.MaxUsersPerOp; i++ {
		first = append(first, user(i))
	}
	setup = append(setup, entry(&pb.Event{ClientOpId: "create", Kind: pb.Kind_KIND_GROUP_CREATE, Actor: &pb.Actor{User: user(0)},
		Payload: &pb.Event_Group{Group: &pb.GroupOp{GroupId: group, Name: "bench", Users: first}}}))
	for i := engine.MaxUsersPerOp; i < members; i++ {
		setup = append(setup, entry(&pb.Event{ClientOpId: "join", Kind: pb.Kind_KIND_GROUP_JOIN, Actor: &pb.Actor{User: user(i)},
			Payload: &pb.Event_Group{Group: &pb.GroupOp{GroupId: group}}}))
	}
	if err := s.Apply(0, setup); err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"type":"txt","msg":"see you at the station at 7, bring the tickets pls","ext":{"em":0,"v":"4.9"}}`)
	msg := func(i int) engine.Entry {
		id := fmt.Sprintf("m%07d", i)
		return entry(&pb.Event{ClientOpId: id, Kind: pb.Kind_KIND_MESSAGE_SEND, Actor: &pb.Actor{User: user(i % members)},
			Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_GROUP, To: group,
				ClientMsgId: id, ContentType: "text/plain", Body: body}}})
	}
	// The raw baseline's value: a member's entry stored whole.
	one := msg(0)
	off--
	ev, _ := engine.Decode(one.Value)
	full, err := encodeEntry(&pb.TimelineEntry{Seq: 1, EntryId: ev.EventId, From: ev.Actor.User, Source: ev,
		ConversationId: group, ChatType: pb.ChatType_CHAT_TYPE_GROUP})
	if err != nil {
		b.Fatal(err)
	}
	raw, err := pebble.Open(filepath.Join(dir, "raw"), &pebble.Options{Logger: quietBenchLogger{}})
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()

	var mdT, rawT time.Duration
	var entries, walBytes int64
	n := 0
	b.ResetTimer()
	for round := 0; round < b.N; round++ {
		batch := make([]engine.Entry, 0, perCall)
		for range perCall {
			batch = append(batch, msg(n))
			n++
		}
		w0 := s.db.Metrics().WAL.BytesWritten
		t := time.Now()
		if err := s.Apply(0, batch); err != nil {
			b.Fatal(err)
		}
		mdT += time.Since(t)
		walBytes += int64(s.db.Metrics().WAL.BytesWritten - w0)
		entries += perCall * members

		t = time.Now()
		rb := raw.NewBatch()
		k := make([]byte, 0, 64)
		for m := range perCall * members {
			k = fmt.Appendf(k[:0], "t\x00%s\x00%s\x00%08d", app, user(m%members), round*perCall+m/members)
			rb.Set(k, full, nil)
		}
		if err := rb.Commit(pebble.NoSync); err != nil {
			b.Fatal(err)
		}
		rb.Close()
		rawT += time.Since(t)
	}
	b.StopTimer()
	// Every member has every message.
	es, _, _, err := s.Timeline(app, user(members-1), "", "", 0, 1<<20)
	if err != nil || len(es) < n || !bytes.Contains(es[len(es)-1].Source.GetMessage().GetBody(), []byte("station")) {
		b.Fatalf("last member has %d entries (%v), want at least %d", len(es), err, n)
	}
	// A member's catch-up of its timeline (runs on this branch: expanded
	// into the entries they stand for, each written around its body)
	// against a raw scan of the member's entries stored whole, one key
	// each (the raw store's), in turns: entries per second each.
	var cuT, scanT time.Duration
	var cuN, scanN int
	for r := range 40 {
		u := user(r % members)
		cu := func() {
			t := time.Now()
			c := 0
			if _, _, err := s.TimelineEach(app, u, "x", "", 0, 1<<20, func(_ string, _ uint64, _ pb.Kind, j []byte) error {
				c++
				return nil
			}); err != nil {
				b.Fatal(err)
			}
			cuT += time.Since(t)
			if c < n {
				b.Fatalf("%s caught up %d entries, want at least %d", u, c, n)
			}
			cuN += c
		}
		sc := func() {
			t := time.Now()
			p := []byte("t\x00" + app + "\x00" + u + "\x00")
			it, err := raw.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
			if err != nil {
				b.Fatal(err)
			}
			for it.First(); it.Valid(); it.Next() {
				if len(it.Value()) > 0 {
					scanN++
				}
			}
			it.Close()
			scanT += time.Since(t)
		}
		if r%2 == 0 {
			cu()
			sc()
		} else {
			sc()
			cu()
		}
	}
	b.ReportMetric(float64(cuN)/cuT.Seconds(), "catchup_entries/s")
	b.ReportMetric((float64(cuN)/cuT.Seconds())/(float64(scanN)/scanT.Seconds()), "catchup_ratio")
	md, rw := float64(entries)/mdT.Seconds(), float64(entries)/rawT.Seconds()
	b.ReportMetric(md, "member_entries/s")
	b.ReportMetric(rw, "raw_full_copies/s")
	b.ReportMetric(md/rw, "ratio")
	b.ReportMetric(float64(walBytes)/float64(entries), "wal_B/member_entry")
	b.ReportMetric(float64(len(full)), "B/full_copy")
}

type quietBenchLogger struct{}

func (quietBenchLogger) Infof(string, ...any)         {}
func (quietBenchLogger) Errorf(string, ...any)        {}
func (quietBenchLogger) Fatalf(f string, args ...any) { panic(fmt.Sprintf(f, args...)) }

package projections

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// withoutRuns stores entries of messages to many one per seq (format 3),
// as before runs, for the rest of the test.
func withoutRuns(t *testing.T) {
	t.Helper()
	old := runsOn
	runsOn = false
	t.Cleanup(func() { runsOn = old })
}

// runsHistory is a log for the runs differential test: three groups of
// different sizes spanning the partitions, bursts to them from senders with
// and without a device (the sender's own copy excludes its device: not a
// run member), 1:1 messages interleaved, logins, joins, leaves and kicks
// mid-stream, reads, deletes and remote removal (cleared_seq), and a
// policy retaining maxEntries entries and maxAgeMs of age.
func runsHistory(parts int32, n int, seed uint64, maxEntries, maxAgeMs int64) [][]engine.Entry {
	rng := rand.New(rand.NewPCG(seed, seed^0x7275))
	log := make([][]engine.Entry, parts)
	const app = "app"
	add := historyAppender(log, app)
	users := make([]string, 32)
	for i := range users {
		users[i] = fmt.Sprint("u", i)
	}
	groups := []struct {
		id      string
		members []string
	}{{"g0", users[2:16]}, {"g1", users[0:4]}, {"g2", users[3:31]}}
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
			TimelineMaxEntries: maxEntries, TimelineMaxAgeMs: maxAgeMs}}
		add(ev)
	}
	logins := map[string][]string{}
	for _, u := range users {
		ev := event(u, pb.Kind_KIND_LOGIN)
		id := fmt.Sprint("d", op)
		ev.Payload = &pb.Event_Login{Login: &pb.Login{Platform: 1, LoginId: id, DeviceName: "dev"}}
		logins[u] = append(logins[u], id)
		add(ev)
	}
	for _, g := range groups {
		ev := event(g.members[0], pb.Kind_KIND_GROUP_CREATE)
		ev.Payload = &pb.Event_Group{Group: &pb.GroupOp{GroupId: g.id, Name: g.id, Users: g.members[1:]}}
		add(ev)
	}
	for op < n {
		user, peer := users[rng.IntN(len(users))], users[rng.IntN(len(users))]
		g := groups[rng.IntN(len(groups))]
		switch r := rng.IntN(100); {
		case r < 40: // a burst
			for range 1 + rng.IntN(25) {
				from := g.members[rng.IntN(len(g.members))]
				ev := event(from, pb.Kind_KIND_MESSAGE_SEND)
				if ls := logins[from]; rng.IntN(3) == 0 {
					ev.Actor.LoginId = ls[rng.IntN(len(ls))]
				}
				ev.Payload = &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_GROUP, To: g.id,
					ClientMsgId: ev.ClientOpId, ContentType: "text", Body: []byte("hi all " + ev.ClientOpId)}}
				add(ev)
				if rng.IntN(6) == 0 { // a 1:1 message inside the burst
					ev := event(peer, pb.Kind_KIND_MESSAGE_SEND)
					ev.Payload = &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: g.members[rng.IntN(len(g.members))],
						ClientMsgId: ev.ClientOpId, ContentType: "text", Body: []byte("psst " + ev.ClientOpId)}}
					add(ev)
				}
			}
		case r < 48:
			ev := event(user, pb.Kind_KIND_LOGIN)
			id := fmt.Sprint("d", op)
			ev.Payload = &pb.Event_Login{Login: &pb.Login{Platform: 1 + int32(rng.IntN(2)), LoginId: id, DeviceName: "dev"}}
			logins[user] = append(logins[user], id)
			add(ev)
		case r < 62:
			ev := event(user, pb.Kind_KIND_MESSAGE_SEND)
			ev.Payload = &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: peer,
				ClientMsgId: ev.ClientOpId, ContentType: "text", Body: []byte("hello " + ev.ClientOpId)}}
			add(ev)
		case r < 67:
			kinds := []pb.Kind{pb.Kind_KIND_CONTACT_REQUEST, pb.Kind_KIND_CONTACT_ACCEPT}
			ev := event(user, kinds[rng.IntN(len(kinds))])
			ev.Payload = &pb.Event_Contact{Contact: &pb.ContactOp{User: peer}}
			add(ev)
		case r < 82:
			kinds := []pb.Kind{pb.Kind_KIND_GROUP_JOIN, pb.Kind_KIND_GROUP_LEAVE, pb.Kind_KIND_GROUP_KICK}
			k := kinds[rng.IntN(len(kinds))]
			actor := user
			if k == pb.Kind_KIND_GROUP_KICK {
				actor = g.members[0]
			}
			ev := event(actor, k)
			ev.Payload = &pb.Event_Group{Group: &pb.GroupOp{GroupId: g.id}}
			if k == pb.Kind_KIND_GROUP_KICK {
				ev.Payload = &pb.Event_Group{Group: &pb.GroupOp{GroupId: g.id, Users: []string{peer}}}
			}
			add(ev)
		default:
			kinds := []pb.Kind{pb.Kind_KIND_CONVERSATION_READ, pb.Kind_KIND_CONVERSATION_PIN, pb.Kind_KIND_CONVERSATION_DELETE,
				pb.Kind_KIND_REMOTE_MESSAGES_REMOVE}
			ev := event(user, kinds[rng.IntN(len(kinds))])
			ev.Payload = &pb.Event_Conversation{Conversation: &pb.ConversationRef{ChatType: pb.ChatType_CHAT_TYPE_GROUP, ConversationId: g.id}}
			add(ev)
		}
	}
	return log
}

// relayed returns log with the partition copies appended as the relay
// appends them (Store.deliveries of each applied decision), interleaved
// with the rest of each partition's log, so deliveries reach members on
// every partition. Built with a store of the per-entry layout.
func relayed(t *testing.T, parts int32, log [][]engine.Entry, seed uint64) [][]engine.Entry {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	out := make([][]engine.Entry, parts)
	for p := range log {
		out[p] = append([]engine.Entry(nil), log[p]...)
	}
	old := runsOn
	runsOn = false
	defer func() { runsOn = old }()
	var decided []*pb.Decision
	s, err := Open(Options{FS: vfs.NewMem(), Partitions: parts, OnApplied: func(_ int32, a Applied) { decided = append(decided, a.Decisions...) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	next := make([]int, parts)
	for {
		var pending []int32
		for p := range parts {
			if next[p] < len(out[p]) {
				pending = append(pending, p)
			}
		}
		if len(pending) == 0 {
			return out
		}
		p := pending[rng.IntN(len(pending))]
		chunk := out[p][next[p]:min(next[p]+1+rng.IntN(40), len(out[p]))]
		decided = decided[:0]
		if err := s.Apply(p, chunk); err != nil {
			t.Fatal(err)
		}
		next[p] += len(chunk)
		for _, d := range decided {
			if len(d.Fanout) == 0 {
				continue
			}
			ev, err := engine.Decode(out[p][d.Offset].Value)
			if err != nil {
				t.Fatal(err)
			}
			recs, err := s.deliveries(nil, ev, d)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range recs {
				q := r.Partition
				v := r.Value
				// One partition copy in six skips one of its recipients:
				// a member whose open run the index entry does not extend
				// (runs.go, endSkipped). The engine's histories do not
				// produce it (a member leaving or blocking the group gets
				// an entry first), a log may: both layouts apply it alike.
				if rec, err := engine.Decode(v); err == nil && len(rec.GetDeliver().GetRecipients()) >= 2 && rng.IntN(6) == 0 {
					dl := rec.GetDeliver()
					i := rng.IntN(len(dl.Recipients))
					dl.Recipients = append(dl.Recipients[:i:i], dl.Recipients[i+1:]...)
					if v, err = engine.Encode(rec); err != nil {
						t.Fatal(err)
					}
				}
				out[q] = append(out[q], engine.Entry{Partition: q, Offset: int64(len(out[q])), Key: r.Key, Value: v})
			}
		}
	}
}

// applyRandom applies log to s in batches of random sizes (1..max).
func applyRandom(t *testing.T, s *Store, log [][]engine.Entry, seed uint64, max int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 2))
	for p, es := range log {
		for i := 0; i < len(es); {
			n := min(1+rng.IntN(max), len(es)-i)
			if err := s.Apply(int32(p), es[i:i+n]); err != nil {
				t.Fatal(err)
			}
			i += n
		}
	}
}

// runExtent is a stored run and the seqs it stands for.
type runExtent struct {
	app, user  string
	start, end uint64
	h          entryHead
}

// storedRuns returns the runs of s with their extents: to the seq before
// the user's next key, or to the timeline's last seq.
func storedRuns(t *testing.T, s *Store) []runExtent {
	t.Helper()
	var out []runExtent
	var open *runExtent
	close := func(end uint64) {
		if open != nil {
			open.end = end
			out = append(out, *open)
			open = nil
		}
	}
	last := func(app, user string) uint64 {
		m, _, err := readMeta(s.db, app, user)
		if err != nil {
			t.Fatal(err)
		}
		return m.LastSeq
	}
	scan(t, s, tagTimeline, func(k, v []byte) {
		app, user, _ := splitPair(k[2 : len(k)-9])
		seq := seqOf(k)
		if open != nil {
			if open.app == app && open.user == user {
				close(seq - 1)
			} else {
				close(last(open.app, open.user))
			}
		}
		h, err := parseEntry(v)
		if err != nil {
			t.Fatal(err)
		}
		if h.run {
			h.conv = bytes.Clone(h.conv)
			open = &runExtent{app: app, user: user, start: seq, h: h}
		}
	})
	if open != nil {
		close(last(open.app, open.user))
	}
	return out
}

// runCensus counts the runs of s and their members.
func runCensus(t *testing.T, s *Store) (runs, members, longest int) {
	t.Helper()
	for _, r := range storedRuns(t, s) {
		n := int(r.end - r.start + 1)
		if r.end < r.start {
			t.Fatalf("%s/%s: a run at %d ends at %d", r.app, r.user, r.start, r.end)
		}
		runs++
		members += n
		longest = max(longest, n)
	}
	return runs, members, longest
}

// The main proof of runs: the same log applied with runs (in batches of
// random sizes) and without (in other random sizes) reads the same for
// every user: every entry each device sees after every position (inside
// runs too) with several page sizes, decoded (Timeline) and as sent
// (TimelineJSON, TimelineEach), every history page, and the meta,
// contacts, groups and conversations. And with runs the store is a
// function of the log: batches of one give the bytes random batches give.
func TestRunsReadAsEntries(t *testing.T) {
	const parts = 3
	for _, c := range []struct {
		name               string
		n                  int
		maxEntries, maxAge int64
		longest            int
	}{{"default retention", 1200, 0, 0, 30}, {"short retention", 3000, 30, 400_000, 10}} {
		t.Run(c.name, func(t *testing.T) {
			log := relayed(t, parts, runsHistory(parts, c.n, 5, c.maxEntries, c.maxAge), 9)
			open := func(runs bool, seed uint64, max int) *Store {
				old := runsOn
				runsOn = runs
				defer func() { runsOn = old }()
				s := openMem(t, parts, nil)
				applyRandom(t, s, log, seed, max)
				bodyCensus(t, s)
				runSetCensus(t, s)
				return s
			}
			flat := open(false, 3, 50)
			defer flat.Close()
			withRuns := open(true, 4, 70)
			defer withRuns.Close()
			if runs, _, _ := runCensus(t, flat); runs != 0 {
				t.Fatalf("%d runs without runs", runs)
			}
			runs, members, longest := runCensus(t, withRuns)
			t.Logf("%d runs of %d members, the longest %d", runs, members, longest)
			if runs < 50 || members < 3*runs || longest < c.longest {
				t.Fatalf("%d runs of %d members (longest %d): the log does not exercise runs", runs, members, longest)
			}
			one := open(true, 5, 1)
			defer one.Close()
			d1, err1 := one.Digest()
			d2, err2 := withRuns.Digest()
			if err1 != nil || err2 != nil || d1 != d2 {
				t.Fatalf("runs: one event per batch digest %s (%v), random batches %s (%v)", d1, err1, d2, err2)
			}
			compareStores(t, flat, withRuns, c.maxEntries > 0)
		})
	}
}

// compareStores fails unless every read of want and got agrees, for every
// user of their timelines.
func compareStores(t *testing.T, want, got *Store, trimmed bool) {
	t.Helper()
	users := timelineUsers(t, want)
	if len(users) != len(timelineUsers(t, got)) || len(users) < 20 {
		t.Fatalf("%d users with a timeline, %d", len(users), len(timelineUsers(t, got)))
	}
	sawTrim, sawCleared := false, false
	for _, au := range users {
		tr, cl := compareUser(t, want, got, au[0], au[1])
		sawTrim, sawCleared = sawTrim || tr, sawCleared || cl
	}
	if trimmed && !sawTrim {
		t.Fatal("retention trimmed nothing")
	}
	if !sawCleared {
		t.Fatal("no conversation was removed remotely (cleared_seq)")
	}
}

// compareUser fails unless every read of user agrees in want and got. It
// reports whether user's timeline was trimmed and a conversation of it
// removed remotely.
func compareUser(t *testing.T, want, got *Store, app, user string) (sawTrim, sawCleared bool) {
	t.Helper()
	ws, err := want.Snapshot(app, user)
	if err != nil {
		t.Fatal(err)
	}
	gs, err := got.Snapshot(app, user)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(ws.Meta, gs.Meta) || !proto.Equal(ws.Contacts, gs.Contacts) || !proto.Equal(ws.Groups, gs.Groups) ||
		len(ws.Conversations) != len(gs.Conversations) {
		t.Fatalf("%s: snapshot %v, want %v", user, gs, ws)
	}
	sawTrim = sawTrim || ws.Meta.FirstSeq > 1
	for i := range ws.Conversations {
		if !proto.Equal(ws.Conversations[i], gs.Conversations[i]) {
			t.Fatalf("%s: conversation %v, want %v", user, gs.Conversations[i], ws.Conversations[i])
		}
	}
	// Every device of the user, and none.
	devices := map[string]bool{"": true}
	es, _, _, err := want.Timeline(app, user, "", "", 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		devices[e.OnlyLoginId], devices[e.ExcludeLoginId] = true, true
	}
	for login := range devices {
		for after := uint64(0); after <= ws.Meta.LastSeq; after++ {
			epoch := ws.Meta.Epoch
			if after == 0 {
				epoch = ""
			}
			for _, limit := range []int{1, 3, 1000} {
				if limit == 1000 && after%40 != 0 {
					continue // the long pages from a few positions
				}
				compareTimeline(t, want, got, app, user, login, epoch, after, limit)
			}
		}
	}
	for _, c := range ws.Conversations {
		sawCleared = sawCleared || c.ClearedSeq > 0
		ct, conv := c.ChatType, c.ConversationId
		for _, limit := range []int{1, 4, 50} {
			for before := uint64(0); ; {
				we, werr := want.History(app, user, ct, conv, before, limit)
				ge, gerr := got.History(app, user, ct, conv, before, limit)
				if (werr != nil) != (gerr != nil) || len(we) != len(ge) {
					t.Fatalf("%s history %v/%s before %d limit %d: %d entries (%v), want %d (%v)", user, ct, conv, before, limit, len(ge), gerr, len(we), werr)
				}
				for i := range we {
					if !proto.Equal(we[i], ge[i]) {
						t.Fatalf("%s history %s before %d: entry %v, want %v", user, conv, before, ge[i], we[i])
					}
				}
				if len(we) < limit {
					break
				}
				before = we[len(we)-1].Seq
			}
		}
	}
	return sawTrim, sawCleared
}

func compareTimeline(t *testing.T, want, got *Store, app, user, login, epoch string, after uint64, limit int) {
	t.Helper()
	we, wn, wm, werr := want.Timeline(app, user, login, epoch, after, limit)
	ge, gn, gm, gerr := got.Timeline(app, user, login, epoch, after, limit)
	if !errors.Is(gerr, werr) && (werr == nil || gerr == nil || werr.Error() != gerr.Error()) {
		t.Fatalf("%s/%s after %d: error %v, want %v", user, login, after, gerr, werr)
	}
	if werr != nil {
		return
	}
	if wn != gn || !proto.Equal(wm, gm) || len(we) != len(ge) {
		t.Fatalf("%s/%s after %d limit %d: %d entries next %d, want %d next %d", user, login, after, limit, len(ge), gn, len(we), wn)
	}
	for i := range we {
		if !proto.Equal(we[i], ge[i]) {
			t.Fatalf("%s/%s after %d: entry %v, want %v", user, login, after, ge[i], we[i])
		}
	}
	wj, wn2, _, werr := want.TimelineJSON(app, user, login, epoch, after, limit)
	gj, gn2, _, gerr := got.TimelineJSON(app, user, login, epoch, after, limit)
	if werr != nil || gerr != nil || wn2 != gn2 || len(wj) != len(gj) || wn2 != wn {
		t.Fatalf("%s/%s after %d: TimelineJSON %d next %d (%v), want %d next %d (%v)", user, login, after, len(gj), gn2, gerr, len(wj), wn2, werr)
	}
	for i := range wj {
		if wj[i].Seq != gj[i].Seq || wj[i].Kind != gj[i].Kind || !bytes.Equal(wj[i].JSON, gj[i].JSON) {
			t.Fatalf("%s/%s after %d: JSON %d %s, want %d %s", user, login, after, gj[i].Seq, gj[i].JSON, wj[i].Seq, wj[i].JSON)
		}
		if j, err := engine.MarshalPart(ge[i]); err != nil || !bytes.Equal(j, gj[i].JSON) {
			t.Fatalf("%s/%s seq %d: JSON %s, MarshalPart %s (%v)", user, login, gj[i].Seq, gj[i].JSON, j, err)
		}
	}
}

// A member's run extends only over the messages it received: here a's
// second and third messages are consecutive seqs of a's timeline, but b
// alone received a message of the group between them on the partition
// (partition copies name their recipients). a's run must not stand for
// b's message.
func TestRunNeedsEveryMessage(t *testing.T) {
	const parts = 1
	var log []engine.Entry
	add := func(ev *pb.Event) {
		b, err := engine.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		log = append(log, engine.Entry{Partition: 0, Offset: int64(len(log)), Key: []byte(ev.StreamKey), Value: b})
	}
	for _, u := range []string{"a", "b"} {
		ev := &pb.Event{SchemaVersion: engine.SchemaVersion, App: "app", ClientOpId: "login-" + u, Kind: pb.Kind_KIND_LOGIN,
			Actor: &pb.Actor{User: u}, TimeUnixMs: 1_000_000, Payload: &pb.Event_Login{Login: &pb.Login{Platform: 1, LoginId: "d" + u}}}
		ev.StreamKey = engine.StreamKeyFor(ev)
		ev.EventId = engine.EventID(ev.StreamKey, u, ev.ClientOpId)
		add(ev)
	}
	for i, to := range [][]string{{"a", "b"}, {"a", "b"}, {"b"}, {"a", "b"}, {"b"}, {"b"}, {"a"}, {"a", "b"}} {
		src := &pb.Event{SchemaVersion: engine.SchemaVersion, App: "app", ClientOpId: fmt.Sprint("m", i), Kind: pb.Kind_KIND_MESSAGE_SEND,
			Actor: &pb.Actor{User: "c"}, TimeUnixMs: 2_000_000 + int64(i),
			Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_GROUP, To: "g", ClientMsgId: fmt.Sprint("m", i),
				ContentType: "text", Body: []byte(fmt.Sprint("message ", i))}}}
		src.StreamKey = engine.StreamKeyFor(src)
		src.EventId = engine.EventID(src.StreamKey, "c", src.ClientOpId)
		add(engine.DeliverEvent(&pb.Deliver{Source: src, Recipients: to, From: "c", SourcePartition: 0, SourceOffset: int64(100 + i)}))
	}
	stores := map[bool]*Store{}
	for _, runs := range []bool{false, true} {
		old := runsOn
		runsOn = runs
		s := openMem(t, parts, nil)
		defer s.Close()
		applyRandom(t, s, [][]engine.Entry{log}, uint64(len(log)), 3)
		runsOn = old
		bodyCensus(t, s)
		stores[runs] = s
	}
	if runs, members, _ := runCensus(t, stores[true]); runs != 5 || members != 12 {
		t.Fatalf("%d runs of %d members, want 5 of 12 (a: 2+1+2, b: 6+1)", runs, members)
	}
	for _, u := range []string{"a", "b"} {
		compareUser(t, stores[false], stores[true], "app", u)
	}
}

// A member's conversation is not written while its run is extended
// (advanceConv): Snapshot reads it as of the last seq, and the projector
// writes it when the run stops being the open one. The end state
// (TestRunsReadAsEntries) sees only the runs open at the end; here the
// snapshots of every user are compared after every few entries of each
// partition, with and without runs, so they are read with runs open at
// every point of the history, and after runs ended by every kind of entry.
func TestRunConversationsReadMidStream(t *testing.T) {
	const parts = 3
	for _, c := range []struct {
		name               string
		n                  int
		maxEntries, maxAge int64
	}{{"default retention", 600, 0, 0}, {"short retention", 1500, 30, 400_000}} {
		t.Run(c.name, func(t *testing.T) {
			log := relayed(t, parts, runsHistory(parts, c.n, 7, c.maxEntries, c.maxAge), 11)
			flat, withRuns := openMem(t, parts, nil), openMem(t, parts, nil)
			defer flat.Close()
			defer withRuns.Close()
			rng := rand.New(rand.NewPCG(13, 3))
			apply := func(s *Store, runs bool, p int, es []engine.Entry) {
				old := runsOn
				runsOn = runs
				defer func() { runsOn = old }()
				for i := 0; i < len(es); { // random batches inside the step
					n := min(1+rng.IntN(8), len(es)-i)
					if err := s.Apply(int32(p), es[i:i+n]); err != nil {
						t.Fatal(err)
					}
					i += n
				}
			}
			next := make([]int, parts)
			compared, derived, metas := 0, 0, 0
			for more := true; more; {
				more = false
				for p := range parts {
					end := min(next[p]+1+rng.IntN(25), len(log[p]))
					apply(flat, false, p, log[p][next[p]:end])
					apply(withRuns, true, p, log[p][next[p]:end])
					next[p] = end
					more = more || end < len(log[p])
				}
				runSetCensus(t, withRuns)
				for _, au := range timelineUsers(t, flat) {
					ws, err := flat.Snapshot(au[0], au[1])
					if err != nil {
						t.Fatal(err)
					}
					gs, err := withRuns.Snapshot(au[0], au[1])
					if err != nil {
						t.Fatal(err)
					}
					if !proto.Equal(ws.Meta, gs.Meta) || len(ws.Conversations) != len(gs.Conversations) {
						t.Fatalf("%s: snapshot %v, want %v", au[1], gs, ws)
					}
					for i := range ws.Conversations {
						if !proto.Equal(ws.Conversations[i], gs.Conversations[i]) {
							t.Fatalf("%s at %v: conversation %v, want %v", au[1], next, gs.Conversations[i], ws.Conversations[i])
						}
						compared++
					}
					derived += staleConversations(t, withRuns, au[0], au[1])
					if staleMeta(t, withRuns, au[0], au[1]) {
						metas++
					}
				}
			}
			t.Logf("%d conversation reads compared, %d of them derived from an open run; %d metas read with a derived last seq", compared, derived, metas)
			if derived < 100 {
				t.Fatalf("only %d conversations read from an open run: the log does not exercise the derivation", derived)
			}
			if metas < 100 {
				t.Fatalf("only %d metas read with a derived last seq: the log does not exercise the derivation", metas)
			}
		})
	}
}

// staleConversations counts user's stored conversations that are behind
// its last seq: those Snapshot advances from the open run.
func staleConversations(t *testing.T, s *Store, app, user string) int {
	t.Helper()
	m, _, err := readMeta(s.db, app, user)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	scan(t, s, tagConv, func(k, v []byte) {
		c := &pb.Conversation{}
		if err := proto.Unmarshal(v, c); err != nil {
			t.Fatal(err)
		}
		if bytes.HasPrefix(k, convPrefix(app, user)) && c.LastSeq < m.LastSeq && c.ChatType == pb.ChatType_CHAT_TYPE_GROUP {
			if v, ok, err := getRaw(s.db, runOpenKey(app, user)); err != nil || !ok {
				return
			} else if r, err := parseRunPointer(v); err == nil && r.conv == c.ConversationId {
				n++
			}
		}
	})
	return n
}

// staleMeta reports whether user's stored meta is behind the last seq its
// open run derives (readMeta).
func staleMeta(t *testing.T, s *Store, app, user string) bool {
	t.Helper()
	m, run, err := readMeta(s.db, app, user)
	if err != nil {
		t.Fatal(err)
	}
	stored := &pb.TimelineMeta{}
	if _, err := s.getProto(metaKey(app, user), stored); err != nil {
		t.Fatal(err)
	}
	return run.derived && stored.LastSeq < m.LastSeq
}

// A store whose runs were written before derived runs (no mark, no set,
// the meta written per entry: derivedRunsOn false writes them as that
// build did, TestDigestGoldenBeforeDerivedRuns) is read by this code, and
// this code goes on applying the log to it: its open runs keep their
// stored meta until they end, new runs are derived. Reads agree with the
// per-entry layout at the switch, after a reopen, and at the end.
func TestRunsFromBeforeDerivedRead(t *testing.T) {
	const parts = 3
	log := relayed(t, parts, runsHistory(parts, 700, 21, 0, 0), 23)
	half := make([][]engine.Entry, parts)
	rest := make([][]engine.Entry, parts)
	for p := range log {
		half[p], rest[p] = log[p][:len(log[p])/2], log[p][len(log[p])/2:]
	}
	flat := func(log [][]engine.Entry) *Store {
		old := runsOn
		runsOn = false
		defer func() { runsOn = old }()
		s := openMem(t, parts, nil)
		applyRandom(t, s, log, 3, 50)
		return s
	}
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, Partitions: parts})
	if err != nil {
		t.Fatal(err)
	}
	derivedRunsOn = false
	applyRandom(t, s, half, 4, 30)
	derivedRunsOn = true
	want := flat(half)
	compareStores(t, want, s, false)
	legacy := 0
	for _, au := range timelineUsers(t, s) {
		if _, run, err := readMeta(s.db, au[0], au[1]); err != nil {
			t.Fatal(err)
		} else if run.ok && !run.derived {
			legacy++
		}
	}
	if legacy < 5 {
		t.Fatalf("%d runs from before open at the switch: the test does not exercise them", legacy)
	}
	want.Close()
	s.Close()
	if s, err = Open(Options{Dir: dir, Partitions: parts}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	applyRandom(t, s, rest, 5, 30)
	bodyCensus(t, s)
	runSetCensus(t, s)
	want = flat(log)
	defer want.Close()
	compareStores(t, want, s, false)
}

// runSetCensus checks the set of open runs against the pointers: each
// member of a conversation's set on p is a user whose pointer names a
// derived run of that conversation on p, every derived pointer is in its
// set, each counter counts its set, and no stored meta is ahead of the
// last seq its run derives. Reads cannot see a stale member (it is ended
// as skipped at the next index entry), so it is checked here.
func runSetCensus(t *testing.T, s *Store) {
	t.Helper()
	inSet := map[string]bool{}
	sizes := map[string]uint64{}
	scan(t, s, tagRunSet, func(k, v []byte) {
		rest := k[2:]
		i := bytes.IndexByte(rest, 0)
		app := string(rest[:i])
		rest = rest[i+1:]
		ct := int32(rest[0])
		j := bytes.IndexByte(rest[1:], 0)
		conv := string(rest[1 : 1+j])
		rest = rest[1+j+1:]
		p := int32(binary.BigEndian.Uint32(rest[:4]))
		user := string(rest[4:])
		m, run, err := readMeta(s.db, app, user)
		if err != nil {
			t.Fatal(err)
		}
		if !run.ok || !run.derived || run.ct != ct || run.conv != conv || run.p != p {
			t.Errorf("%s/%s in the open runs of %d/%s on %d, its run is %+v", app, user, ct, conv, p, run)
		}
		stored := &pb.TimelineMeta{}
		if _, err := s.getProto(metaKey(app, user), stored); err != nil {
			t.Fatal(err)
		}
		if stored.LastSeq > m.LastSeq {
			t.Errorf("%s/%s: stored last seq %d ahead of the derived %d", app, user, stored.LastSeq, m.LastSeq)
		}
		inSet[app+"\x00"+user] = true
		sizes[string(runCounterKey(app, ct, conv, p))]++
	})
	scan(t, s, tagRunOpen, func(k, v []byte) {
		run, err := parseRunPointer(v)
		if err != nil {
			t.Fatal(err)
		}
		if run.derived && !inSet[string(k[2:])] {
			t.Errorf("derived run %q not in its set", k)
		}
	})
	scan(t, s, tagRunIndex, func(k, v []byte) {
		if !isRunCounterKey(k) {
			return
		}
		if _, open := parseCounter(v); open != sizes[string(k)] {
			t.Errorf("counter %q counts %d open runs, its set has %d", k, open, sizes[string(k)])
		}
	})
}

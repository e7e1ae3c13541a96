package node

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// Randomized histories through the real engine, log, projector and relay:
// several users with 2–3 devices each send messages to users, groups and
// their own devices, operate on conversations, send receipts and contact
// operations, while devices go offline and online at random (an offline
// device does not sync; back online it continues from its saved position;
// some devices start late, from a snapshot). Then:
//
//   - every device received exactly the entries of its user's timeline
//     visible to it (engine.Visible) after its first position, in sequence
//     order, each once: no gap, no duplicate;
//   - every user's timeline is dense (1..last_seq) and holds every accepted
//     message it should;
//   - the unread count of every conversation in the user's snapshot equals
//     the count each of the user's devices computes from what it received
//     and what it did itself (the same on every device: unread is per user);
//   - once the relay is idle, the live digest equals a rebuild's.
//
// MDSYNC_SYNC_OPS sets the number of operations (default 3000, within a
// 5 s budget; e.g. MDSYNC_SYNC_OPS=30000 for a long run), and
// MDSYNC_SYNC_SEED the seed (default 1; 0 picks one from the clock).

type propDevice struct {
	*device
	online  bool
	started bool
	start   uint64               // the position it first followed from
	base    map[convRef]uint64   // unread at start (a late device's snapshot)
	sent    map[string]*pb.Event // event id → operation it performed
	pages   int                  // syncs performed
	seen    map[string]bool      // entry ids received
	history []*pb.TimelineEntry  // every entry received, in order
}

type convRef struct {
	ct pb.ChatType
	id string
}

func envInt(name string, def int64) int64 {
	if v, err := strconv.ParseInt(os.Getenv(name), 10, 64); err == nil {
		return v
	}
	return def
}

func TestSyncPropertyRandomHistories(t *testing.T) {
	ops := int(envInt("MDSYNC_SYNC_OPS", 3000))
	// Without MDSYNC_SYNC_OPS the operations stop after a time budget too,
	// so a slow machine or -race keeps the package fast; at least 500 run.
	budget := 5 * time.Second
	if os.Getenv("MDSYNC_SYNC_OPS") != "" {
		budget = 0
	}
	seed := uint64(envInt("MDSYNC_SYNC_SEED", 1))
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d, %d operations (MDSYNC_SYNC_SEED, MDSYNC_SYNC_OPS)", seed, ops)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	n := openNode(t, 4)
	ctx := context.Background()

	// Users and devices. Enough users that no timeline reaches the default
	// retention (10,000 entries): a resync would end the comparison.
	nUsers := max(5, ops/1500)
	var userIDs []string
	devs := map[string][]*propDevice{}
	var all []*propDevice
	for u := range nUsers {
		user := fmt.Sprint("u", u)
		userIDs = append(userIDs, user)
		for i := range 2 + rng.IntN(2) {
			id := fmt.Sprintf("%s.d%d", user, i)
			if d := submit(t, n, login(user, "login-"+id, id, int32(1+rng.IntN(3)), false)); d.Code != 0 {
				t.Fatalf("login %s: %v", id, d)
			}
			pd := &propDevice{device: &device{app: "app", user: user, login: id}, online: rng.IntN(4) > 0,
				sent: map[string]*pb.Event{}, seen: map[string]bool{}}
			// A third of the devices start late, from a snapshot.
			pd.started = rng.IntN(3) > 0
			if pd.started {
				pd.base = map[convRef]uint64{}
			}
			devs[user] = append(devs[user], pd)
			all = append(all, pd)
		}
	}
	// Two groups with fixed members (membership changes are in the kinds table).
	groups := map[string][]string{}
	for g := range 2 {
		gid, owner := fmt.Sprint("g", g), userIDs[g]
		var members []string
		for _, u := range userIDs {
			if u != owner && rng.IntN(3) > 0 {
				members = append(members, u)
			}
		}
		ev := kev(owner, devs[owner][0].login, pb.Kind_KIND_GROUP_CREATE)
		ev.Payload = &pb.Event_Group{Group: &pb.GroupOp{GroupId: gid, Users: members}}
		if d := submit(t, n, ev); d.Code != 0 {
			t.Fatalf("create %s: %v", gid, d)
		}
		groups[gid] = append([]string{owner}, members...)
	}
	gids := []string{"g0", "g1"}

	// syncDev follows a device's timeline with random page sizes.
	syncDev := func(d *propDevice) {
		t.Helper()
		if !d.started {
			s, err := n.Store.Snapshot("app", d.user)
			if err != nil {
				t.Fatal(err)
			}
			d.epoch, d.pos, d.start, d.started = s.Meta.Epoch, s.Meta.LastSeq, s.Meta.LastSeq, true
			d.base = map[convRef]uint64{}
			for _, c := range s.Conversations {
				d.base[convRef{c.ChatType, c.ConversationId}] = c.Unread
			}
		}
		es, err := follow(n, d.device, 1+rng.IntN(6))
		if err != nil {
			t.Fatalf("%s at %q/%d: %v (no timeline reaches retention here)", d.login, d.epoch, d.pos, err)
		}
		d.pages++
		for _, e := range es {
			if d.seen[e.EntryId] {
				t.Fatalf("%s received entry %d (%s) twice", d.login, e.Seq, e.EntryId)
			}
			d.seen[e.EntryId] = true
		}
		d.history = append(d.history, es...)
	}

	// What the test sent and was accepted, to find lost copies.
	type sentMsg struct {
		ev *pb.Event
		to []string // users whose timeline must hold it
	}
	var accepted []sentMsg
	everBanned := map[[2]string]bool{} // [user, banned] at any time
	refused := map[engine.Code]int{}
	kindsDone := map[pb.Kind]int{}

	others := func(user string) string {
		for {
			if o := userIDs[rng.IntN(len(userIDs))]; o != user {
				return o
			}
		}
	}
	randConv := func(user string) (pb.ChatType, string) {
		if rng.IntN(4) == 0 {
			return ctGroup, gids[rng.IntN(len(gids))]
		}
		return ctUser, others(user)
	}
	convKinds := []pb.Kind{pb.Kind_KIND_CONVERSATION_PIN, pb.Kind_KIND_CONVERSATION_UNPIN, pb.Kind_KIND_CONVERSATION_MARK,
		pb.Kind_KIND_CONVERSATION_UNMARK, pb.Kind_KIND_CONVERSATION_DELETE, pb.Kind_KIND_REMOTE_MESSAGES_REMOVE,
		pb.Kind_KIND_CONVERSATION_READ, pb.Kind_KIND_CONVERSATION_READ, pb.Kind_KIND_CONVERSATION_READ}
	contactKinds := []pb.Kind{pb.Kind_KIND_CONTACT_REQUEST, pb.Kind_KIND_CONTACT_ACCEPT, pb.Kind_KIND_CONTACT_DECLINE,
		pb.Kind_KIND_CONTACT_REMOVE, pb.Kind_KIND_CONTACT_BAN, pb.Kind_KIND_CONTACT_ALLOW, pb.Kind_KIND_CONTACT_ALLOW}

	// build makes a random operation of the actor device; to lists the users
	// whose timelines must hold it when it is an accepted message.
	build := func(actor *propDevice) (ev *pb.Event, to []string) {
		user, lid := actor.user, actor.login
		switch r := rng.IntN(100); {
		case r < 30: // a message to a user (sometimes a note to self)
			peer := others(user)
			if rng.IntN(20) == 0 {
				peer = user
			}
			return message(ctUser, peer)(user, lid), []string{user, peer}
		case r < 45: // a message to a group (refused for non-members)
			g := gids[rng.IntN(len(gids))]
			return message(ctGroup, g)(user, lid), groups[g]
		case r < 53: // a message to one of the actor's other devices
			own := devs[user]
			target := own[rng.IntN(len(own))]
			if target == actor {
				target = own[(slices.Index(own, actor)+1)%len(own)]
			}
			return message(ctSelfDev, target.login)(user, lid), []string{user}
		case r < 70: // a conversation operation
			ct, conv := randConv(user)
			ev = convOp(convKinds[rng.IntN(len(convKinds))], ct, conv)(user, lid)
			ev.GetConversation().Mark = int32(rng.IntN(4))
			return ev, nil
		case r < 82: // a delivery or read receipt
			ct, conv := randConv(user)
			k := pb.Kind_KIND_DELIVERY_RECEIPT
			if rng.IntN(2) == 0 {
				k = pb.Kind_KIND_READ_RECEIPT
			}
			return receiptOp(k, ct, conv)(user, lid), nil
		default: // a contact operation (refusals are part of the history)
			return contactOp(contactKinds[rng.IntN(len(contactKinds))], others(user))(user, lid), nil
		}
	}

	start := time.Now()
	done := 0
	for done < ops {
		if budget > 0 && done >= 500 && time.Since(start) > budget {
			t.Logf("time budget %v reached after %d operations", budget, done)
			break
		}
		// A device goes offline or comes back (and syncs from its position).
		if rng.IntN(8) == 0 {
			d := all[rng.IntN(len(all))]
			d.online = !d.online
			if d.online {
				syncDev(d)
			}
			continue
		}
		var online []*propDevice
		for _, d := range all {
			if d.online {
				online = append(online, d)
			}
		}
		if len(online) == 0 {
			all[rng.IntN(len(all))].online = true
			continue
		}
		// A batch of operations from online devices, submitted concurrently
		// (as devices do); their order in the log is the engine's.
		type pending struct {
			actor *propDevice
			ev    *pb.Event
			to    []string
			d     *pb.Decision
			err   error
		}
		batch := make([]*pending, 1+rng.IntN(8))
		for j := range batch {
			a := online[rng.IntN(len(online))]
			ev, to := build(a)
			batch[j] = &pending{actor: a, ev: ev, to: to}
		}
		var wg sync.WaitGroup
		for _, p := range batch {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.d, p.err = n.Engine.Submit(ctx, p.ev)
			}()
		}
		wg.Wait()
		for _, p := range batch {
			if p.err != nil {
				t.Fatalf("%s by %s: %v", engine.KindName(p.ev.Kind), p.actor.login, p.err)
			}
			if p.d.Code != 0 {
				refused[engine.Code(p.d.Code)]++
				continue
			}
			kindsDone[p.ev.Kind]++
			p.actor.sent[p.d.EventId] = p.ev
			if p.ev.Kind == pb.Kind_KIND_CONTACT_BAN {
				everBanned[[2]string{p.actor.user, p.ev.GetContact().User}] = true
			}
			if p.to != nil {
				accepted = append(accepted, sentMsg{ev: p.ev, to: p.to})
			}
		}
		done += len(batch)
		// Now and then online devices sync.
		for range rng.IntN(3) {
			syncDev(online[rng.IntN(len(online))])
		}
	}
	t.Logf("%d operations in %v; accepted by kind %v; refused by code %v", done, time.Since(start).Round(time.Millisecond), kindsDone, refused)

	// Everyone comes back online; the relay delivers the last copies.
	settle(t, n)
	for _, d := range all {
		d.online = true
		syncDev(d)
	}

	raw := map[string][]*pb.TimelineEntry{}
	for _, u := range userIDs {
		raw[u] = rawTimeline(t, n, u)
	}

	// Each device got exactly the visible entries after its first position.
	for _, d := range all {
		var want []*pb.TimelineEntry
		for _, e := range raw[d.user] {
			if e.Seq > d.start && engine.Visible(e, d.login) {
				want = append(want, e)
			}
		}
		if err := sameEntries(d.history, want); err != nil {
			t.Errorf("%s (from %d, %d syncs): %v", d.login, d.start, d.pages, err)
		}
	}

	// No accepted message is missing from a timeline it belongs to.
	index := map[string]map[string]*pb.TimelineEntry{}
	for u, es := range raw {
		index[u] = map[string]*pb.TimelineEntry{}
		for _, e := range es {
			index[u][e.EntryId] = e
		}
	}
	for _, m := range accepted {
		id := engine.EventID(engine.StreamKeyFor(m.ev), m.ev.Actor.User, m.ev.ClientOpId)
		for _, u := range m.to {
			if u != m.ev.Actor.User && everBanned[[2]string{u, m.ev.Actor.User}] && m.ev.GetMessage().ChatType == ctUser {
				continue // may have been dropped by u's block list
			}
			e, ok := index[u][id]
			if !ok {
				t.Errorf("%s's timeline lacks message %s from %s to %s", u, m.ev.ClientOpId, m.ev.Actor.User, m.ev.GetMessage().To)
				continue
			}
			if m.ev.GetMessage().ChatType == ctSelfDev && e.OnlyLoginId != m.ev.GetMessage().To {
				t.Errorf("message to own device %s is addressed to %q", m.ev.GetMessage().To, e.OnlyLoginId)
			}
		}
	}

	// Unread: the snapshot's count equals what every device computes.
	for _, u := range userIDs {
		s, err := n.Store.Snapshot("app", u)
		if err != nil {
			t.Fatal(err)
		}
		got := map[convRef]uint64{}
		for _, c := range s.Conversations {
			got[convRef{c.ChatType, c.ConversationId}] = c.Unread
		}
		for _, d := range devs[u] {
			// What the device knows: what it received, plus what it did itself
			// (those entries are not shown to it), after its first position.
			view := slices.Clone(d.history)
			for _, e := range raw[u] {
				if e.Seq > d.start && e.ExcludeLoginId == d.login {
					view = append(view, e)
				}
			}
			slices.SortFunc(view, func(a, b *pb.TimelineEntry) int { return int(a.Seq) - int(b.Seq) })
			calc := unreadFrom(u, d.base, view)
			for k := range got {
				if _, ok := calc[k]; !ok {
					calc[k] = 0
				}
			}
			for k, v := range calc {
				if got[k] != v {
					t.Errorf("%s: unread of %v is %d in the snapshot, %d computed by %s from its entries", u, k, got[k], v, d.login)
				}
			}
		}
	}

	live, err := n.Store.Digest()
	if err != nil {
		t.Fatal(err)
	}
	rb, err := projections.Rebuild(ctx, n.Log, projections.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	if d, _ := rb.Digest(); d != live {
		t.Fatal("rebuild digest differs from the live digest")
	}
}

// rawTimeline returns every entry of a user's timeline, checked dense from
// 1 to last_seq: all entries but those for one own device (read with a
// login ID no device has), and those from the conversation with oneself.
func rawTimeline(t *testing.T, n *Node, user string) []*pb.TimelineEntry {
	t.Helper()
	bySeq := map[uint64]*pb.TimelineEntry{}
	var after uint64
	var meta *pb.TimelineMeta
	epoch := ""
	for {
		es, next, m, err := n.Store.Timeline("app", user, "~nobody", epoch, after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		meta, epoch = m, m.Epoch
		for _, e := range es {
			bySeq[e.Seq] = e
		}
		if next == after {
			break
		}
		after = next
	}
	h, err := n.Store.History("app", user, ctUser, user, 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range h {
		bySeq[e.Seq] = e
	}
	out := make([]*pb.TimelineEntry, 0, len(bySeq))
	for s := uint64(1); s <= meta.LastSeq; s++ {
		e, ok := bySeq[s]
		if !ok {
			t.Fatalf("%s's timeline has no entry %d (first %d, last %d)", user, s, meta.FirstSeq, meta.LastSeq)
		}
		out = append(out, e)
	}
	if len(bySeq) != len(out) {
		t.Fatalf("%s's timeline has entries beyond last_seq %d", user, meta.LastSeq)
	}
	return out
}

func sameEntries(got, want []*pb.TimelineEntry) error {
	for i := 1; i < len(got); i++ {
		if got[i].Seq <= got[i-1].Seq {
			return fmt.Errorf("sequence not increasing at %d: %d after %d", i, got[i].Seq, got[i-1].Seq)
		}
	}
	for i := 0; i < min(len(got), len(want)); i++ {
		if got[i].Seq != want[i].Seq || got[i].EntryId != want[i].EntryId {
			return fmt.Errorf("entry %d: got seq %d (%s), want seq %d (%s)", i, got[i].Seq, got[i].EntryId, want[i].Seq, want[i].EntryId)
		}
	}
	if len(got) != len(want) {
		return fmt.Errorf("got %d entries, want %d", len(got), len(want))
	}
	return nil
}

// unreadFrom counts unread messages per conversation from a user's entries
// in sequence order, starting from base: a message from someone else adds
// one; the user's own read, delete or remote removal resets to zero.
func unreadFrom(user string, base map[convRef]uint64, es []*pb.TimelineEntry) map[convRef]uint64 {
	out := map[convRef]uint64{}
	for k, v := range base {
		out[k] = v
	}
	for _, e := range es {
		if e.ConversationId == "" {
			continue
		}
		k := convRef{e.ChatType, e.ConversationId}
		own := e.Source.Actor.User == user
		switch e.Source.Kind {
		case pb.Kind_KIND_MESSAGE_SEND:
			if !own {
				out[k]++
			} else if _, ok := out[k]; !ok {
				out[k] = 0
			}
		case pb.Kind_KIND_CONVERSATION_READ, pb.Kind_KIND_CONVERSATION_DELETE, pb.Kind_KIND_REMOTE_MESSAGES_REMOVE:
			if own {
				out[k] = 0
			}
		}
	}
	return out
}

package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// Invariant 5: a device whose position fell behind retention, or whose
// position belongs to another timeline, gets an explicit resync (code 1015)
// — never a silent gap — and continues without a gap from a snapshot.

// testClock is the node's injectable clock: each read advances it by 1 ms,
// and a test can jump it forward.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Millisecond)
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func openNodeClock(t *testing.T, parts int32) (*Node, *testClock) {
	t.Helper()
	clk := &testClock{t: time.UnixMilli(1_700_000_000_000)}
	if os.Getenv(nodeLogEnv) == "cluster" {
		return openNodeNow(t, parts, clk.Now), clk
	}
	n, err := New(context.Background(), Options{Dir: t.TempDir(), Partitions: parts, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n, clk
}

// follow reads every page after d's position, like device.sync, but
// returns the Timeline error (d's position is then unchanged).
func follow(n *Node, d *device, page int) ([]*pb.TimelineEntry, error) {
	var out []*pb.TimelineEntry
	for {
		es, next, meta, err := n.Store.Timeline(d.app, d.user, d.login, d.epoch, d.pos, page)
		if err != nil {
			return out, err
		}
		d.epoch = meta.Epoch
		if next == d.pos {
			d.got = append(d.got, out...)
			return out, nil
		}
		d.pos = next
		out = append(out, es...)
	}
}

func mustFollow(t *testing.T, n *Node, d *device) []*pb.TimelineEntry {
	t.Helper()
	es, err := follow(n, d, 4)
	if err != nil {
		t.Fatalf("%s at %q/%d: %v", d.login, d.epoch, d.pos, err)
	}
	return es
}

// wantResync asserts that d's position cannot be continued, and returns the
// timeline bounds the answer carries.
func wantResync(t *testing.T, n *Node, d *device, epoch string, after uint64) *pb.TimelineMeta {
	t.Helper()
	es, _, meta, err := n.Store.Timeline(d.app, d.user, d.login, epoch, after, 10)
	if !errors.Is(err, projections.ErrResync) {
		t.Fatalf("%s at %q/%d: got %d entries and err %v, want ErrResync", d.login, epoch, after, len(es), err)
	}
	if c := engine.CodeOf(err); c != engine.CodeResync {
		t.Fatalf("BUG: engine.CodeOf(ErrResync) = %d, want %d (the code must reach the wire through the wrapping)", c, engine.CodeResync)
	}
	if len(es) != 0 {
		t.Fatalf("a resync answer carried %d entries", len(es))
	}
	if meta == nil {
		t.Fatal("a resync answer carries no timeline bounds")
	}
	return meta
}

// resync does what a client does on a resync answer: it takes the snapshot
// and continues from its position.
func resync(t *testing.T, n *Node, d *device) *projections.Snapshot {
	t.Helper()
	s, err := n.Store.Snapshot(d.app, d.user)
	if err != nil {
		t.Fatal(err)
	}
	d.epoch, d.pos = s.Meta.Epoch, s.Meta.LastSeq
	return s
}

func sendN(t *testing.T, n *Node, from, to string, first, count int) {
	t.Helper()
	for i := first; i < first+count; i++ {
		if d := submit(t, n, msg(from, from+"1", ctUser, to, fmt.Sprint("m", i))); d.Code != 0 {
			t.Fatalf("message %d refused: %v", i, d)
		}
	}
	settle(t, n)
}

func bodies(es []*pb.TimelineEntry) string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = fmt.Sprintf("%d:%s", e.Seq, e.Source.GetMessage().GetBody())
	}
	return fmt.Sprint(out)
}

func unreadOf(s *projections.Snapshot, ct pb.ChatType, conv string) (uint64, bool) {
	for _, c := range s.Conversations {
		if c.ChatType == ct && c.ConversationId == conv {
			return c.Unread, true
		}
	}
	return 0, false
}

func setRetention(t *testing.T, n *Node, maxEntries, maxAgeMs int64) *pb.Policy {
	t.Helper()
	set := &pb.Event{App: "app", ClientOpId: fmt.Sprintf("retention-%d-%d", maxEntries, maxAgeMs), Kind: pb.Kind_KIND_POLICY_SET,
		Actor: &pb.Actor{User: "admin", Admin: true},
		Payload: &pb.Event_PolicySet{PolicySet: &pb.PolicySet{Mode: pb.PlatformMode_PLATFORM_MODE_MULTI, DefaultLimit: 4,
			AutoLogin: pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST, TimelineMaxEntries: maxEntries, TimelineMaxAgeMs: maxAgeMs}}}
	if d := submit(t, n, set); d.Code != 0 {
		t.Fatalf("policy: %v", d)
	}
	pol, err := n.Store.Policy("app")
	if err != nil {
		t.Fatal(err)
	}
	return pol
}

// skipIfRetentionDropped skips a retention test while the policy does not
// carry its timeline limits.
//
// BUG: engine.ApplyPolicy (engine/sessions.go) builds the installed
// pb.Policy from the PolicySet without copying timeline_max_entries and
// timeline_max_age_ms, so a POLICY_SET's retention limits never reach
// engine.Retention: every timeline keeps the defaults (10,000 entries, 30
// days). Expected: the installed policy carries both fields, and the next
// delivery to a user trims the timeline to the new limits.
func skipIfRetentionDropped(t *testing.T, pol *pb.Policy, maxEntries, maxAgeMs int64) {
	t.Helper()
	if pol.GetTimelineMaxEntries() != maxEntries || pol.GetTimelineMaxAgeMs() != maxAgeMs {
		t.Skipf("BUG: POLICY_SET timeline_max_entries=%d timeline_max_age_ms=%d installed as %d/%d: engine.ApplyPolicy drops the retention fields",
			maxEntries, maxAgeMs, pol.GetTimelineMaxEntries(), pol.GetTimelineMaxAgeMs())
	}
}

// A device that falls more than timeline_max_entries behind gets a resync;
// a device that kept up does not; after the snapshot the device continues
// from meta.LastSeq with no gap.
func TestSyncResyncPastEntryRetention(t *testing.T) {
	n := openNode(t, 4)
	submit(t, n, login("alice", "l1", "alice1", 1, false))
	submit(t, n, login("alice", "l2", "alice2", 2, false))
	submit(t, n, login("bob", "l1", "bob1", 1, false))
	pol := setRetention(t, n, 5, 0)
	skipIfRetentionDropped(t, pol, 5, 0)
	a1 := &device{app: "app", user: "alice", login: "alice1"}
	a2 := &device{app: "app", user: "alice", login: "alice2"}

	sendN(t, n, "bob", "alice", 1, 3)
	if got := bodies(mustFollow(t, n, a2)); got != "[1:m1 2:m2 3:m3]" {
		t.Fatalf("alice2 got %s", got)
	}
	mustFollow(t, n, a1)
	// alice2 goes offline; alice1 keeps up, one message at a time.
	for i := 4; i <= 13; i++ {
		sendN(t, n, "bob", "alice", i, 1)
		if got := mustFollow(t, n, a1); len(got) != 1 || got[0].Seq != uint64(i) {
			t.Fatalf("alice1, which keeps up, got %s at message %d", bodies(got), i)
		}
	}
	meta := wantResync(t, n, a2, a2.epoch, a2.pos)
	if meta.FirstSeq != 9 || meta.LastSeq != 13 {
		t.Fatalf("timeline bounds %v, want first 9, last 13 (5 entries kept)", meta)
	}
	// The boundary: from 8 the next entry (9) is retained; from 7 it is not.
	if es, _, _, err := n.Store.Timeline("app", "alice", "alice1", a1.epoch, 8, 10); err != nil || len(es) != 5 || es[0].Seq != 9 {
		t.Fatalf("from 8 (first retained 9): %s, %v", bodies(es), err)
	}
	wantResync(t, n, a1, a1.epoch, 7)

	s := resync(t, n, a2)
	if s.Meta.LastSeq != 13 {
		t.Fatalf("snapshot at %d, want 13", s.Meta.LastSeq)
	}
	if u, _ := unreadOf(s, ctUser, "bob"); u != 13 {
		t.Fatalf("snapshot unread %d, want 13: retention trims the timeline, not the conversation state", u)
	}
	sendN(t, n, "bob", "alice", 14, 2)
	if got := bodies(mustFollow(t, n, a2)); got != "[14:m14 15:m15]" {
		t.Fatalf("alice2 after the snapshot got %s, want [14:m14 15:m15]", got)
	}
	if got := bodies(mustFollow(t, n, a1)); got != "[14:m14 15:m15]" {
		t.Fatalf("alice1 got %s", got)
	}
}

// A position of another timeline (another epoch), a position without an
// epoch, or one beyond the end gets a resync; the right position does not,
// and it survives a rebuild (the epoch is derived from the log).
func TestSyncResyncWrongPosition(t *testing.T) {
	n := openNode(t, 2)
	submit(t, n, login("alice", "l1", "alice1", 1, false))
	submit(t, n, login("bob", "l1", "bob1", 1, false))
	sendN(t, n, "bob", "alice", 1, 3)
	a := &device{app: "app", user: "alice", login: "alice1"}
	if got := mustFollow(t, n, a); len(got) != 3 || a.pos != 3 || a.epoch == "" {
		t.Fatalf("alice1 got %s at %q/%d", bodies(got), a.epoch, a.pos)
	}
	for _, c := range []struct {
		name  string
		epoch string
		after uint64
	}{
		{"another epoch", "0123456789abcdef0123456789abcdef", 3},
		{"another epoch at 0", "0123456789abcdef0123456789abcdef", 0},
		{"a position without an epoch", "", 2},
		{"a position beyond the end", a.epoch, 4},
	} {
		t.Run(c.name, func(t *testing.T) {
			meta := wantResync(t, n, a, c.epoch, c.after)
			if meta.Epoch != a.epoch || meta.LastSeq != 3 {
				t.Fatalf("resync answer carries %v, want the current bounds", meta)
			}
		})
	}
	if got := mustFollow(t, n, a); len(got) != 0 {
		t.Fatalf("the right position got %s", bodies(got))
	}
	// A new device starts from the beginning without an epoch.
	fresh := &device{app: "app", user: "alice", login: "alice9"}
	if got := bodies(mustFollow(t, n, fresh)); got != "[1:m1 2:m2 3:m3]" {
		t.Fatalf("a new device got %s", got)
	}

	rb, err := projections.Rebuild(context.Background(), n.Log, projections.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	if es, next, _, err := rb.Timeline("app", "alice", "alice1", a.epoch, 1, 10); err != nil || next != 3 || len(es) != 2 {
		t.Fatalf("a position on the rebuilt store: %d entries, next %d, err %v", len(es), next, err)
	}
}

// Entries older than the age limit (default 30 days, by event time from the
// injectable clock) are trimmed with the next delivery: a device whose next
// entry was trimmed gets a resync, a device that kept up does not.
func TestSyncResyncPastAgeRetentionDefault(t *testing.T) {
	n, clk := openNodeClock(t, 4)
	testAgeRetention(t, n, clk, 31*24*time.Hour)
}

// The same with the policy's timeline_max_age_ms.
func TestSyncResyncPastAgeRetentionPolicy(t *testing.T) {
	n, clk := openNodeClock(t, 4)
	pol := setRetention(t, n, 0, 60_000)
	skipIfRetentionDropped(t, pol, 0, 60_000)
	testAgeRetention(t, n, clk, 2*time.Minute)
}

func testAgeRetention(t *testing.T, n *Node, clk *testClock, jump time.Duration) {
	t.Helper()
	submit(t, n, login("alice", "l1", "alice1", 1, false))
	submit(t, n, login("alice", "l2", "alice2", 2, false))
	submit(t, n, login("bob", "l1", "bob1", 1, false))
	a1 := &device{app: "app", user: "alice", login: "alice1"}
	a2 := &device{app: "app", user: "alice", login: "alice2"}

	sendN(t, n, "bob", "alice", 1, 3)
	mustFollow(t, n, a1)
	mustFollow(t, n, a2)
	sendN(t, n, "bob", "alice", 4, 2)
	mustFollow(t, n, a1) // alice1 is at 5; alice2 stays at 3 (offline)

	// Nothing is trimmed before the limit.
	if _, _, meta, err := n.Store.Timeline("app", "alice", "alice2", a2.epoch, a2.pos, 1); err != nil || meta.FirstSeq != 1 {
		t.Fatalf("before the age limit: %v, %v", meta, err)
	}
	clk.Advance(jump)
	sendN(t, n, "bob", "alice", 6, 1)

	meta := wantResync(t, n, a2, a2.epoch, a2.pos)
	if meta.FirstSeq != 6 || meta.LastSeq != 6 {
		t.Fatalf("timeline bounds %v after the age limit, want first 6 last 6", meta)
	}
	if got := bodies(mustFollow(t, n, a1)); got != "[6:m6]" {
		t.Fatalf("alice1, which kept up, got %s", got)
	}
	s := resync(t, n, a2)
	if u, _ := unreadOf(s, ctUser, "bob"); u != 6 || s.Meta.LastSeq != 6 {
		t.Fatalf("snapshot at %d with unread %d, want 6 and 6", s.Meta.LastSeq, u)
	}
	sendN(t, n, "bob", "alice", 7, 2)
	if got := bodies(mustFollow(t, n, a2)); got != "[7:m7 8:m8]" {
		t.Fatalf("alice2 after the snapshot got %s", got)
	}
	// History follows retention: only retained messages are returned.
	h, err := n.Store.History("app", "alice", ctUser, "bob", 0, 50)
	if err != nil {
		t.Fatal(err)
	}
	if got := bodies(h); got != "[8:m8 7:m7 6:m6]" {
		t.Fatalf("history %s, want the retained messages newest first", got)
	}
}

// With the default limit (10,000 entries) a device that missed more gets a
// resync. Slow (10,000 operations): run with MDSYNC_LONG=1.
func TestSyncResyncPastDefaultEntryRetention(t *testing.T) {
	if os.Getenv("MDSYNC_LONG") == "" {
		t.Skip("long: set MDSYNC_LONG=1")
	}
	n := openNode(t, 4)
	submit(t, n, login("alice", "l1", "alice1", 1, false))
	a := &device{app: "app", user: "alice", login: "alice1"}
	sendN(t, n, "bob", "alice", 1, 1)
	mustFollow(t, n, a)
	total := engine.DefaultTimelineMaxEntries + 1
	var wg sync.WaitGroup
	const senders = 32
	for g := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < total; i += senders {
				ev := &pb.Event{App: "app", ClientOpId: fmt.Sprint("bulk", i), Kind: pb.Kind_KIND_MESSAGE_SEND,
					Actor:   &pb.Actor{User: fmt.Sprint("sender", g)},
					Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: ctUser, To: "alice", ClientMsgId: "c"}}}
				if _, err := n.Engine.Submit(context.Background(), ev); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	settle(t, n)
	meta := wantResync(t, n, a, a.epoch, a.pos)
	if meta.LastSeq != uint64(total+1) || meta.LastSeq-meta.FirstSeq+1 != engine.DefaultTimelineMaxEntries {
		t.Fatalf("bounds %v", meta)
	}
	resync(t, n, a)
	sendN(t, n, "bob", "alice", 2, 1)
	if got := mustFollow(t, n, a); len(got) != 1 || got[0].Seq != meta.LastSeq+1 {
		t.Fatalf("after the snapshot got %s", bodies(got))
	}
}

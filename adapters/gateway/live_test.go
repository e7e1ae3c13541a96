package gateway_test

import (
	"bytes"
	"fmt"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdsync/mdsync/adapters/gateway"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// timelineCounter counts the timeline reads made for each login ID.
type timelineCounter struct {
	gateway.Store
	mu    sync.Mutex
	reads map[string]int
}

func (r *timelineCounter) TimelineEach(app, user, loginID, epoch string, after uint64, limit int,
	fn func(string, uint64, pb.Kind, []byte) error) (uint64, *pb.TimelineMeta, error) {
	r.mu.Lock()
	r.reads[loginID]++
	r.mu.Unlock()
	return r.Store.TimelineEach(app, user, loginID, epoch, after, limit, fn)
}

func (r *timelineCounter) reset() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.reads
	r.reads = map[string]int{}
	return old
}

// Live events go out as the delivery effect carries them: two caught-up
// devices of one user receive every message once, in order, as the same
// bytes, and the gateway reads nothing back from the timeline for them
// (the session sweep, which re-reads, is off here).
func TestLiveEventsAreEncodedOnceAndNotReadBack(t *testing.T) {
	counter := &timelineCounter{reads: map[string]int{}}
	e := newEnvHooks(t, func(o *gateway.Options) { o.SessionCheckInterval = -1 },
		envHooks{store: func(r gateway.Store) gateway.Store { counter.Store = r; return counter }})
	a1, _ := login(t, e, "alice", "A1", 1)
	a1.expect("snapshot")
	a2, _ := login(t, e, "alice", "A2", 2)
	a2.expect("snapshot")
	b, _ := login(t, e, "bob", "B1", 1)
	b.expect("snapshot")

	send := func(i int) {
		t.Helper()
		if r := b.op(fmt.Sprint("op", i), msgJSON("alice", fmt.Sprint("live-", i), fmt.Sprint("live ", i))); r.Code != 0 {
			t.Fatalf("send %d: %+v", i, r)
		}
	}
	events := func(c *client, n int) []sframe {
		t.Helper()
		var out []sframe
		for len(out) < n {
			select {
			case f := <-c.frames:
				if f.Type == "event" {
					out = append(out, f)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("%d of %d events", len(out), n)
			}
		}
		return out
	}
	// The first message settles both followers (they may read it).
	send(0)
	first1, first2 := events(a1, 1)[0], events(a2, 1)[0]
	counter.reset()

	const n = 20
	for i := 1; i <= n; i++ {
		send(i)
	}
	got1, got2 := events(a1, n), events(a2, n)
	last := first1.Seq
	for i := range n {
		f1, f2 := got1[i], got2[i]
		body := string(f1.entry(t).GetSource().GetMessage().GetBody())
		if want := fmt.Sprint("live ", i+1); body != want || f1.Seq != last+1 {
			t.Fatalf("A1 event %d: %q at seq %d after %d, want %q next", i, body, f1.Seq, last, want)
		}
		last = f1.Seq
		if f1.Seq != f2.Seq || f1.Epoch != f2.Epoch || f1.Epoch != first1.Epoch || !bytes.Equal(f1.Entry, f2.Entry) {
			t.Fatalf("A1 and A2 got different frames for seq %d:\n%s\n%s", f1.Seq, f1.Entry, f2.Entry)
		}
	}
	if first2.Seq != first1.Seq {
		t.Fatalf("first events at %d and %d", first1.Seq, first2.Seq)
	}
	if reads := counter.reset(); reads["A1"] != 0 || reads["A2"] != 0 {
		t.Fatalf("timeline reads during live delivery: %v, want none for A1 and A2", reads)
	}
	if v := metric(t, e, "mdsync_gateway_live_events_total"); v < 2*n {
		t.Fatalf("mdsync_gateway_live_events_total %v, want >= %d", v, 2*n)
	}
	select {
	case f := <-a1.frames:
		t.Fatalf("extra frame on A1: %+v", f)
	case <-time.After(100 * time.Millisecond):
	}
}

// gatewayGoroutines counts the goroutines running the gateway's own code
// (not the test's clients, whose frames are in package gateway_test).
func gatewayGoroutines() int {
	var buf bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&buf, 2)
	n := 0
	for _, g := range strings.Split(buf.String(), "\n\n") {
		if strings.Contains(g, "mdsync/adapters/gateway.") {
			n++
		}
	}
	return n
}

// A connected device that has nothing to send or receive costs one
// goroutine (its reader): no writer, no follower, after a snapshot, live
// events, an op and its result.
func TestIdleDeviceHasOneGoroutine(t *testing.T) {
	e := newEnv(t, func(o *gateway.Options) { o.SessionCheckInterval = -1 })
	const users = 10
	var cs []*client
	for u := range users {
		for d := range 2 {
			c, _ := login(t, e, fmt.Sprint("idle", u), fmt.Sprintf("I%d-%d", u, d), int32(d+1))
			c.expect("snapshot")
			cs = append(cs, c)
		}
	}
	// Traffic on every connection: an op (result) and a live event.
	for u := range users {
		c := cs[2*u]
		if r := c.op(fmt.Sprint("op", u), msgJSON(fmt.Sprint("idle", (u+1)%users), fmt.Sprint("i-", u), "hi")); r.Code != 0 {
			t.Fatalf("send: %+v", r)
		}
	}
	for i, c := range cs {
		if i%2 == 1 { // op() of the others may have read their event
			c.expect("event")
		}
	}
	devices := len(cs)
	var n int
	deadline := time.Now().Add(5 * time.Second)
	for n = gatewayGoroutines(); n > devices && time.Now().Before(deadline); n = gatewayGoroutines() {
		time.Sleep(10 * time.Millisecond)
	}
	if n > devices {
		t.Fatalf("%d gateway goroutines for %d idle devices, want at most one each", n, devices)
	}
	// And they still work: a message wakes the follower again.
	if r := cs[1].op("again", msgJSON("idle0", "i-again", "again")); r.Code != 0 {
		t.Fatalf("send: %+v", r)
	}
	for { // cs[0] may still hold idle9's message, unread
		if ev := cs[0].expect("event"); string(ev.entry(t).GetSource().GetMessage().GetBody()) == "again" {
			break
		}
	}
}

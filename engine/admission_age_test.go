package engine

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// fakeClock is an admission clock moved by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// gatedProjector applies the log's records at the offsets released, in
// any order; every applied op is accepted.
type gatedProjector struct {
	emptyProjector
	log     *memLog
	mu      sync.Mutex
	open    map[int64]bool
	changed chan struct{} // closed and replaced at every release
}

func newGatedProjector(log *memLog) *gatedProjector {
	return &gatedProjector{log: log, open: map[int64]bool{}, changed: make(chan struct{})}
}

func (p *gatedProjector) release(offs ...int64) {
	p.mu.Lock()
	for _, o := range offs {
		p.open[o] = true
	}
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

func (p *gatedProjector) WaitApplied(ctx context.Context, pos Position) error {
	for {
		p.mu.Lock()
		ok, ch := p.open[pos.Offset], p.changed
		p.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (p *gatedProjector) Decision(app, stream, user, op string) (*pb.Decision, bool, error) {
	off := slices.Index(p.log.ops(), op)
	p.mu.Lock()
	defer p.mu.Unlock()
	if off < 0 || !p.open[int64(off)] {
		return nil, false, nil
	}
	d := &pb.Decision{ClientOpId: op, Kind: pb.Kind_KIND_CONVERSATION_PIN, Offset: int64(off)}
	if strings.HasPrefix(op, "login") {
		d.Kind = pb.Kind_KIND_LOGIN
	}
	return d, true, nil
}

func (p *gatedProjector) AwaitDecision(pos Position, app, stream, user, op string, done func(*pb.Decision, bool, error)) {
	AwaitByWaiting(p, pos, app, stream, user, op, done)
}

func waitAll(t *testing.T, ps ...*Pending) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i, p := range ps {
		if _, err := p.Wait(ctx); err != nil {
			t.Fatalf("pending %d: %v", i, err)
		}
	}
}

func resolvedNow(p *Pending) bool {
	select {
	case <-p.c.done:
		return true
	default:
		return false
	}
}

// Invariant 10 by age: once the oldest op awaiting its decision is older
// than MaxPendingAge (plus what an op with nothing ahead of it took to be
// decided), Begin refuses new ops before appending, with 1019
// and a RetryAfter derived from the drain (ops pending ÷ decisions per
// second, scaled into [0.5, 1)), the rest of the call with it; logins are
// never refused. A batch decided out of order does not hide an older
// undecided one. Once the old ops are decided, the refused ops sent again
// are accepted, and every accepted op is decided once, in the order sent.
func TestMaxPendingAgeRefusesBeforeAppending(t *testing.T) {
	log := &memLog{}
	proj := newGatedProjector(log)
	clk := &fakeClock{t: time.Unix(1_000_000, 0)}
	e := New(log, proj, Options{MaxPending: 1000, MaxPendingAge: 200 * time.Millisecond, AdmissionClock: clk.Now})
	ctx := context.Background()

	var xs []*pb.Event
	for i := range 10 {
		xs = append(xs, pinOp("ann", fmt.Sprint("x", i)))
	}
	x := e.Begin(ctx, xs) // offsets 0-9, admitted at 0 ms
	// Decisions at 40 per second: one at 0 ms, then one every 25 ms.
	proj.release(0)
	waitAll(t, x[0])
	for i := 1; i <= 4; i++ {
		clk.advance(25 * time.Millisecond)
		proj.release(int64(i))
		waitAll(t, x[i])
	}
	// 100 ms: the oldest undecided (x5) is 100 ms old; admitted.
	q := e.Begin(ctx, []*pb.Event{pinOp("bea", "q1")}) // offset 10
	// 125 ms: q is decided first, out of order (still 40 per second).
	clk.advance(25 * time.Millisecond)
	proj.release(10)
	waitAll(t, q...)
	// 250 ms: x5, the oldest undecided, is 250 ms old.
	clk.advance(125 * time.Millisecond)
	if got := e.Pending(); got != 5 {
		t.Fatalf("pending %d, want 5 (x5-x9)", got)
	}
	y := e.Begin(ctx, []*pb.Event{pinOp("cat", "y1"), loginOp("cat", "login-y"), pinOp("cat", "y2")}) // login at 11
	for i, refused := range []bool{true, false, true} {
		if resolvedNow(y[i]) != refused {
			t.Fatalf("op %d of y: resolved %v, want %v (%v)", i, !refused, refused, y[i].c.err)
		}
	}
	var busy *Error
	for _, i := range []int{0, 2} {
		_, err := y[i].Wait(ctx)
		if CodeOf(err) != CodeBusy || !strings.Contains(err.Error(), "older than 200ms") {
			t.Fatalf("op %d of y: %v, want 1019 for the age", i, err)
		}
		busy = err.(*Error)
	}
	// 5 ops pending at 40 per second drain in 125 ms.
	if lo, hi := 62500*time.Microsecond, 125*time.Millisecond; busy.RetryAfter < lo || busy.RetryAfter >= hi {
		t.Fatalf("retry after %v, want in [%v, %v)", busy.RetryAfter, lo, hi)
	}
	if got, want := strings.Join(log.ops(), ","), "x0,x1,x2,x3,x4,x5,x6,x7,x8,x9,q1,login-y"; got != want {
		t.Fatalf("appended %s, want %s", got, want)
	}

	// x5-x9 decided: the oldest undecided is the login, admitted at 250 ms.
	proj.release(5, 6, 7, 8, 9)
	waitAll(t, x[5:]...)
	clk.advance(100 * time.Millisecond)
	again := e.Begin(ctx, []*pb.Event{pinOp("cat", "y1"), pinOp("cat", "y2")}) // offsets 12, 13
	if resolvedNow(again[0]) || resolvedNow(again[1]) {
		t.Fatalf("y1, y2 sent again: refused (%v, %v)", again[0].c.err, again[1].c.err)
	}
	proj.release(11, 12, 13)
	waitAll(t, append([]*Pending{y[1]}, again...)...)
	if got := e.Pending(); got != 0 {
		t.Fatalf("pending %d after every decision, want 0", got)
	}
	want := "x0,x1,x2,x3,x4,x5,x6,x7,x8,x9,q1,login-y,y1,y2"
	if got := strings.Join(log.ops(), ","); got != want {
		t.Fatalf("log %s, want %s", got, want)
	}
	// Idle: nothing awaits a decision, so no age refuses, however late.
	// x0 and then d1, each the first op of a batch admitted with nothing
	// ahead, were decided 0 ms and 250 ms after: the pipeline's own
	// latency, averaged to 50 ms, is allowed on top of the bound.
	clk.advance(time.Hour)
	d := e.Begin(ctx, []*pb.Event{pinOp("dan", "d1")}) // offset 14
	if resolvedNow(d[0]) {
		t.Fatalf("d1 after an idle hour: %v", d[0].c.err)
	}
	clk.advance(250 * time.Millisecond)
	proj.release(14)
	waitAll(t, d...)
	e1 := e.Begin(ctx, []*pb.Event{pinOp("dan", "e1")}) // offset 15
	clk.advance(240 * time.Millisecond)                 // e1 240 ms old: under 200 + 50
	e2 := e.Begin(ctx, []*pb.Event{pinOp("dan", "e2")}) // offset 16
	clk.advance(20 * time.Millisecond)                  // e1 260 ms old: over
	e3 := e.Begin(ctx, []*pb.Event{pinOp("dan", "e3")})
	if resolvedNow(e1[0]) || resolvedNow(e2[0]) {
		t.Fatalf("e1, e2: refused (%v, %v)", e1[0].c.err, e2[0].c.err)
	}
	if _, err := e3[0].Wait(ctx); CodeOf(err) != CodeBusy {
		t.Fatalf("e3 with the oldest 260 ms old: %v, want 1019", err)
	}
	proj.release(15, 16)
	waitAll(t, e1[0], e2[0])
	if got := strings.Join(log.ops(), ","); got != want+",d1,e1,e2" {
		t.Fatalf("log %s, want %s,d1,e1,e2", got, want)
	}
}

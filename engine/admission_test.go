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

// memLog is a one-partition log in memory that records what was appended.
type memLog struct {
	mu   sync.Mutex
	recs []Record
}

func (l *memLog) Partitions() int32 { return 1 }
func (l *memLog) Append(_ context.Context, recs []Record) ([]Position, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	pos := make([]Position, len(recs))
	for i, r := range recs {
		pos[i] = Position{Partition: 0, Offset: int64(len(l.recs))}
		l.recs = append(l.recs, r)
	}
	return pos, nil
}
func (l *memLog) Read(context.Context, int32, int64, int) ([]Entry, error) { return nil, nil }
func (l *memLog) End(context.Context, int32) (int64, error)                { return 0, nil }
func (l *memLog) Close() error                                             { return nil }

// ops is the client op ids appended, in log order.
func (l *memLog) ops() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.recs {
		ev, err := Decode(r.Value)
		if err != nil {
			panic(err)
		}
		out = append(out, ev.ClientOpId)
	}
	return out
}

// heldProjector applies nothing until released; then every appended op is
// accepted (its decision is recorded when its wait ends).
type heldProjector struct {
	emptyProjector
	log     *memLog
	release chan struct{}
	mu      sync.Mutex
	decided map[string]*pb.Decision
}

func (p *heldProjector) WaitApplied(ctx context.Context, pos Position) error {
	select {
	case <-p.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *heldProjector) Decision(app, stream, user, op string) (*pb.Decision, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.release:
	default:
		return nil, false, nil // nothing applied yet
	}
	d, ok := p.decided[op]
	if !ok {
		if !slices.Contains(p.log.ops(), op) {
			return nil, false, nil // not appended
		}
		d = &pb.Decision{ClientOpId: op, Kind: pb.Kind_KIND_CONVERSATION_PIN}
		if strings.HasPrefix(op, "login") {
			d.Kind = pb.Kind_KIND_LOGIN
		}
		p.decided[op] = d
	}
	return d, true, nil
}

func (p *heldProjector) AwaitDecision(pos Position, app, stream, user, op string, done func(*pb.Decision, bool, error)) {
	AwaitByWaiting(p, pos, app, stream, user, op, done)
}

func pinOp(user, id string) *pb.Event {
	return &pb.Event{App: "a", ClientOpId: id, Kind: pb.Kind_KIND_CONVERSATION_PIN, Actor: &pb.Actor{User: user},
		Payload: &pb.Event_Conversation{Conversation: &pb.ConversationRef{ChatType: pb.ChatType_CHAT_TYPE_USER, ConversationId: "bob"}}}
}

func loginOp(user, id string) *pb.Event {
	return &pb.Event{App: "a", ClientOpId: id, Kind: pb.Kind_KIND_LOGIN, Actor: &pb.Actor{User: user, LoginId: id},
		Payload: &pb.Event_Login{Login: &pb.Login{Platform: 1, LoginId: id, DeviceName: "phone"}}}
}

// Invariant 10 at the node: past MaxPending ops awaiting decisions, Begin
// refuses before appending, with 1019; a refusal refuses the rest of its
// call (so a caller's later op is never decided ahead of an earlier one);
// logins are counted, never refused; once decisions drain, the refused ops
// sent again are accepted, and the log holds every accepted op once, in
// the order it was sent.
func TestMaxPendingRefusesBeforeAppending(t *testing.T) {
	log := &memLog{}
	proj := &heldProjector{log: log, release: make(chan struct{}), decided: map[string]*pb.Decision{}}
	e := New(log, proj, Options{MaxPending: 4})
	ctx := context.Background()

	a := e.Begin(ctx, []*pb.Event{pinOp("ann", "a1"), pinOp("ann", "a2"), pinOp("ann", "a3")})
	b := e.Begin(ctx, []*pb.Event{pinOp("bea", "b1"), pinOp("bea", "b2"), loginOp("bea", "login-b"), pinOp("bea", "b3")})
	if got := e.Pending(); got != 5 {
		t.Fatalf("pending %d, want 5 (a1-a3, b1, the login)", got)
	}
	for i, want := range []bool{false, true, false, true} { // b2, b3 refused; the login not
		select {
		case <-b[i].c.done:
			if !want {
				t.Fatalf("op %d of b resolved before any decision: %v", i, b[i].c.err)
			}
			if CodeOf(b[i].c.err) != CodeBusy {
				t.Fatalf("op %d of b: %v, want 1019", i, b[i].c.err)
			}
		default:
			if want {
				t.Fatalf("op %d of b: not refused at once", i)
			}
		}
	}
	if got := strings.Join(log.ops(), ","); got != "a1,a2,a3,b1,login-b" {
		t.Fatalf("appended %s", got)
	}
	// Still full: a new call is refused whole, nothing appended.
	c := e.Begin(ctx, []*pb.Event{pinOp("cat", "c1")})
	if _, err := c[0].Wait(ctx); CodeOf(err) != CodeBusy {
		t.Fatalf("c1: %v, want 1019", err)
	}

	close(proj.release)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, p := range append(a, b[0], b[2]) {
		if _, err := p.Wait(wctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.Pending(); got != 0 {
		t.Fatalf("pending %d after every decision, want 0", got)
	}
	// The refused ops, sent again in order, are accepted now.
	for _, id := range []string{"b2", "b3"} {
		if _, err := e.Submit(wctx, pinOp("bea", id)); err != nil {
			t.Fatalf("%s again: %v", id, err)
		}
	}
	if got, want := strings.Join(log.ops(), ","), "a1,a2,a3,b1,login-b,b2,b3"; got != want {
		t.Fatalf("log %s, want %s", got, want)
	}
	// A retry of an accepted op appends nothing (it is decided).
	if _, err := e.Submit(wctx, pinOp("ann", "a1")); err != nil {
		t.Fatal(err)
	}
	if n := len(log.ops()); n != 7 {
		t.Fatalf("%d records after a retry, want 7", n)
	}
}

// A negative MaxPending is no bound.
func TestMaxPendingNegativeIsUnbounded(t *testing.T) {
	log := &memLog{}
	proj := &heldProjector{log: log, release: make(chan struct{}), decided: map[string]*pb.Decision{}}
	e := New(log, proj, Options{MaxPending: -1})
	var ops []*pb.Event
	for i := range DefaultMaxPending + 10 {
		ops = append(ops, pinOp("ann", fmt.Sprint("o", i)))
	}
	ps := e.Begin(context.Background(), ops)
	for i, p := range ps {
		select {
		case <-p.c.done:
			t.Fatalf("op %d resolved before its decision: %v", i, p.c.err)
		default:
		}
	}
	close(proj.release)
}

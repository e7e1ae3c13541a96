package engine

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// heldAsyncLog is a memLog with AppendAsync: positions at once (ordered),
// durability when the test says (durable).
type heldAsyncLog struct {
	memLog
	mu      sync.Mutex
	durable []func(error)
}

func (l *heldAsyncLog) AppendAsync(ctx context.Context, recs []Record, ordered func([]Position), durable func(error)) error {
	pos, err := l.Append(ctx, recs)
	if err != nil {
		return err
	}
	ordered(pos)
	l.mu.Lock()
	l.durable = append(l.durable, durable)
	l.mu.Unlock()
	return nil
}

func (l *heldAsyncLog) finish(err error) {
	l.mu.Lock()
	ds := l.durable
	l.durable = nil
	l.mu.Unlock()
	for _, d := range ds {
		d(err)
	}
}

// handProjector keeps the AwaitDecision registrations for the test to answer.
type handProjector struct {
	emptyProjector
	mu      sync.Mutex
	waiters []func(*pb.Decision, bool, error)
	ops     []string
}

func (p *handProjector) AwaitDecision(pos Position, app, stream, user, op string, done func(*pb.Decision, bool, error)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.waiters = append(p.waiters, done)
	p.ops = append(p.ops, op)
}

func (p *handProjector) registered() ([]func(*pb.Decision, bool, error), []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waiters, p.ops
}

func notYet(t *testing.T, ps []*Pending) {
	t.Helper()
	for i, p := range ps {
		select {
		case <-p.c.done:
			t.Fatalf("op %d resolved early: %v, %v", i, p.c.d, p.c.err)
		default:
		}
	}
}

// With an AsyncLog, Begin returns once the log took the ops, which are
// registered for their decisions before they are durable; each op resolves
// with its decision, whatever the order of durability and decision.
func TestBeginWithAsyncLog(t *testing.T) {
	lg, pr := &heldAsyncLog{}, &handProjector{}
	e := New(lg, pr, Options{})
	ctx := context.Background()
	ps := e.Begin(ctx, []*pb.Event{pinOp("ann", "p1"), pinOp("ann", "p2")})
	ws, ops := pr.registered()
	if len(ws) != 2 || ops[0] != "p1" || ops[1] != "p2" {
		t.Fatalf("registered before durable: %v, want [p1 p2]", ops)
	}
	notYet(t, ps)
	if e.Pending() != 2 {
		t.Fatalf("Pending = %d, want 2", e.Pending())
	}
	lg.finish(nil)
	notYet(t, ps) // durable is not decided
	for i, w := range ws {
		w(&pb.Decision{ClientOpId: ops[i], Kind: pb.Kind_KIND_CONVERSATION_PIN}, true, nil)
	}
	for i, p := range ps {
		d, err := p.Wait(ctx)
		if err != nil || d.ClientOpId != ops[i] {
			t.Fatalf("op %d: %v, %v", i, d, err)
		}
	}
	if e.Pending() != 0 {
		t.Fatalf("Pending = %d after the decisions, want 0", e.Pending())
	}
}

// An async append that fails resolves its ops with the error, once: the
// projector dropping their waiters later (it never applies them) changes
// nothing and gives back no slot twice.
func TestAsyncAppendFailureSettlesOnce(t *testing.T) {
	lg, pr := &heldAsyncLog{}, &handProjector{}
	e := New(lg, pr, Options{})
	ctx := context.Background()
	ps := e.Begin(ctx, []*pb.Event{pinOp("ann", "p1"), loginOp("bob", "login1")})
	notYet(t, ps)
	lg.finish(errors.New("disk on fire"))
	errs := make([]error, len(ps))
	for i, p := range ps {
		if _, errs[i] = p.Wait(ctx); CodeOf(errs[i]) != CodeUnavailable {
			t.Fatalf("op %d after a failed append: %v, want code %d", i, errs[i], CodeUnavailable)
		}
	}
	if e.Pending() != 0 {
		t.Fatalf("Pending = %d after the failure, want 0", e.Pending())
	}
	ws, _ := pr.registered()
	for _, w := range ws {
		w(nil, false, errors.New("projector closed"))
	}
	if e.Pending() != 0 {
		t.Fatalf("Pending = %d after the dropped waiters, want 0", e.Pending())
	}
	for i, p := range ps {
		if _, err := p.Wait(ctx); err != errs[i] {
			t.Fatalf("op %d changed its outcome: %v, was %v", i, err, errs[i])
		}
	}
	// The engine still works: a new op is appended and decided.
	p := e.Begin(ctx, []*pb.Event{pinOp("ann", "p3")})[0]
	ws, ops := pr.registered()
	ws[len(ws)-1](&pb.Decision{ClientOpId: ops[len(ops)-1], Kind: pb.Kind_KIND_CONVERSATION_PIN}, true, nil)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if d, err := p.Wait(wctx); err != nil || d.ClientOpId != "p3" {
		t.Fatalf("op after the failure: %v, %v", d, err)
	}
}

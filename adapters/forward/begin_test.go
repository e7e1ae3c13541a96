package forward_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdsync/mdsync/adapters/forward"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/encoding/protojson"
)

func (f fakeLocal) Begin(ctx context.Context, ops []*pb.Event) []*engine.Pending {
	out := make([]*engine.Pending, len(ops))
	for i, op := range ops {
		out[i] = engine.Resolved(f.Submit(ctx, op))
	}
	return out
}

// recLocal records the order in which ops reach the local engine: Begin
// runs and single Submits. Ops whose client op id starts with "r" are not
// owned here (1018).
type recLocal struct {
	mu    sync.Mutex
	calls []string
}

func (l *recLocal) record(s string) {
	l.mu.Lock()
	l.calls = append(l.calls, s)
	l.mu.Unlock()
}

func (l *recLocal) decide(op *pb.Event) (*pb.Decision, error) {
	if strings.HasPrefix(op.ClientOpId, "r") {
		return nil, engine.Errorf(engine.CodeNotOwner, "elsewhere")
	}
	return &pb.Decision{EventId: "local-" + op.ClientOpId}, nil
}

func (l *recLocal) Submit(_ context.Context, op *pb.Event) (*pb.Decision, error) {
	l.record("submit " + op.ClientOpId)
	return l.decide(op)
}

func (l *recLocal) Begin(_ context.Context, ops []*pb.Event) []*engine.Pending {
	ids := make([]string, len(ops))
	out := make([]*engine.Pending, len(ops))
	for i, op := range ops {
		ids[i] = op.ClientOpId
		out[i] = engine.Resolved(l.decide(op))
	}
	l.record("begin " + strings.Join(ids, ","))
	return out
}

// byID says ops whose client op id starts with "r" are owned by addr.
type byID struct{ addr string }

func (o byID) OwnerOfOp(op *pb.Event) (string, bool) {
	if strings.HasPrefix(op.ClientOpId, "r") {
		return o.addr, false
	}
	return "", true
}

// Begin keeps the ops' order across the local engine and the owner: each
// run of local ops is one local Begin, and an op owned elsewhere is
// forwarded, synchronously, between the runs around it; the Pendings come
// back in the ops' order.
func TestBeginKeepsOrderAcrossForwarding(t *testing.T) {
	local := &recLocal{}
	owner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		op := &pb.Event{}
		if err := protojson.Unmarshal(b, op); err != nil {
			t.Errorf("forwarded body: %v", err)
		}
		local.record("forward " + op.ClientOpId)
		fmt.Fprintf(w, `{"event_id":"owner-%s"}`, op.ClientOpId)
	}))
	t.Cleanup(owner.Close)
	s, err := forward.New(local, byID{owner.Listener.Addr().String()}, forward.Options{Token: token, Timeout: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{"a1", "a2", "r3", "a4", "r5", "r6", "a7"}
	ops := make([]*pb.Event, len(ids))
	for i, id := range ids {
		ops[i] = &pb.Event{App: "app", ClientOpId: id, Kind: pb.Kind_KIND_LOGOUT, Actor: &pb.Actor{User: "u", LoginId: "d"}}
	}
	ctx := context.Background()
	ps := s.Begin(ctx, ops)
	if len(ps) != len(ops) {
		t.Fatalf("%d pendings for %d ops", len(ps), len(ops))
	}
	for i, p := range ps {
		d, err := p.Wait(ctx)
		want := "local-" + ids[i]
		if strings.HasPrefix(ids[i], "r") {
			want = "owner-" + ids[i]
		}
		if err != nil || d.EventId != want {
			t.Fatalf("op %s: %v %v, want %s", ids[i], d, err, want)
		}
	}
	want := []string{"begin a1,a2", "submit r3", "forward r3", "begin a4", "submit r5", "forward r5", "submit r6", "forward r6", "begin a7"}
	if fmt.Sprint(local.calls) != fmt.Sprint(want) {
		t.Fatalf("calls %v\nwant  %v", local.calls, want)
	}
	// A marked context never forwards: one local Begin, 1018 kept.
	local.calls = nil
	ps = s.Begin(forward.Mark(ctx), ops[1:4])
	if _, err := ps[1].Wait(ctx); engine.CodeOf(err) != engine.CodeNotOwner {
		t.Fatalf("marked: %v, want 1018", err)
	}
	if fmt.Sprint(local.calls) != "[begin a2,r3,a4]" {
		t.Fatalf("marked: calls %v", local.calls)
	}
}

package delivery

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mdsync/mdsync/adapters/bus"
	"github.com/mdsync/mdsync/adapters/push"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// fakeGateway records what the flow asked of it.
type fakeGateway struct {
	mu        sync.Mutex
	calls     []string
	connected map[string]bool
}

func (g *fakeGateway) Deliver(app, user string, e *pb.TimelineEntry) {
	g.record(fmt.Sprintf("deliver %s/%s %d", app, user, e.GetSeq()))
}
func (g *fakeGateway) End(app string, e *pb.Ended) {
	g.record(fmt.Sprintf("end %s/%s %s %d", app, e.GetUser(), e.GetSession().GetLoginId(), e.GetCode()))
}
func (g *fakeGateway) Connected(app, user string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.connected[app+"/"+user]
}
func (g *fakeGateway) record(s string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, s)
}
func (g *fakeGateway) got() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.calls...)
}

type fakeOutbox struct {
	mu      sync.Mutex
	entries []push.Entry
	err     error
}

func (o *fakeOutbox) Enqueue(es ...push.Entry) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return o.err
	}
	o.entries = append(o.entries, es...)
	return nil
}

type ownerFunc func(app, user string) (string, bool)

func (f ownerFunc) Owner(app, user string) (string, bool) { return f(app, user) }

// message returns a timeline entry of a message from sender, as the
// recipient's timeline holds it.
func message(seq uint64, from string) *pb.TimelineEntry {
	return &pb.TimelineEntry{Seq: seq, EntryId: fmt.Sprint("e", seq), From: from, ChatType: pb.ChatType_CHAT_TYPE_USER,
		Source: &pb.Event{Kind: pb.Kind_KIND_MESSAGE_SEND, Actor: &pb.Actor{User: from},
			Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, Body: []byte("hi")}}}}
}

func deliver(user string, e *pb.TimelineEntry) bus.Effect {
	return bus.Effect{Kind: bus.EffectDeliver, App: "app", User: user, Entry: e}
}

func TestPushedOnlyOfflineUsersServedHere(t *testing.T) {
	gw := &fakeGateway{connected: map[string]bool{"app/online": true}}
	out := &fakeOutbox{}
	here := ownerFunc(func(app, user string) (string, bool) { return "", user != "elsewhere" })
	h := Pushed(gw, here, out)
	for _, e := range []bus.Effect{
		deliver("online", message(1, "bob")),      // connected: the gateway delivers
		deliver("elsewhere", message(2, "bob")),   // its owner pushes
		deliver("offline", message(3, "offline")), // own message: never pushed
		{Kind: bus.EffectEnded, App: "app", User: "offline", Ended: &pb.Ended{}},
		deliver("offline", message(4, "bob")), // pushed
	} {
		if err := h(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	if len(out.entries) != 1 || out.entries[0].User != "offline" || out.entries[0].Seq != 4 {
		t.Fatalf("pushed %+v, want only offline's seq 4", out.entries)
	}
	out.err = errors.New("disk full")
	if err := h(context.Background(), deliver("offline", message(5, "bob"))); !errors.Is(err, out.err) {
		t.Fatalf("an Enqueue failure returned %v, want it (the bus retries)", err)
	}
	// Without an Owner every user is served here.
	if err := Pushed(gw, nil, &fakeOutbox{})(context.Background(), deliver("elsewhere", message(6, "bob"))); err != nil {
		t.Fatal(err)
	}
}

func TestWireNeedsGateway(t *testing.T) {
	b, err := bus.New(context.Background(), bus.Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := Wire(b, Options{}); err == nil || !strings.HasPrefix(err.Error(), "delivery: ") {
		t.Fatalf("Wire without a gateway: %v", err)
	}
}

// The whole flow in one process: a committed batch handed to the
// Publisher reaches the gateway (an end, then a delivery) and, for a user
// with no device connected, the push outbox; observers see the batch.
func TestFlow(t *testing.T) {
	b, err := bus.New(context.Background(), bus.Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	gw := &fakeGateway{connected: map[string]bool{"app/alice": true}}
	out := &fakeOutbox{}
	if err := Wire(b, Options{Gateway: gw, Outbox: out}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	<-b.Running()

	var observed int
	publish := Publisher(b, func(projections.Applied) { observed++ })
	publish(0, projections.Applied{
		Decisions: []*pb.Decision{{App: "app", User: "alice", Ended: []*pb.Ended{{User: "alice", Code: 206, Session: &pb.Session{LoginId: "phone"}}}}},
		Entries: []projections.AppliedEntry{
			{App: "app", User: "alice", Entry: message(7, "carol")},
			{App: "app", User: "bob", Entry: message(42, "alice")},
		},
	})
	if observed != 1 {
		t.Fatalf("observer called %d times, want 1", observed)
	}
	want := []string{"end app/alice phone 206", "deliver app/alice 7", "deliver app/bob 42"}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out.mu.Lock()
		pushed := len(out.entries)
		out.mu.Unlock()
		if got := gw.got(); strings.Join(got, "|") == strings.Join(want, "|") && pushed == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway got %q (want %q), %d pushed (want 1)", gw.got(), want, pushed)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if e := out.entries[0]; e.User != "bob" || e.Seq != 42 {
		t.Fatalf("pushed %+v, want bob's seq 42", e)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

package node

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// device is a test device: it follows its user's timeline from a position,
// as the gateway does on connect.
type device struct {
	app, user, login string
	epoch            string
	pos              uint64
	got              []*pb.TimelineEntry
}

func (d *device) sync(t *testing.T, n *Node) []*pb.TimelineEntry {
	t.Helper()
	var page []*pb.TimelineEntry
	for {
		es, next, meta, err := n.Store.Timeline(d.app, d.user, d.login, d.epoch, d.pos, 3)
		if err != nil {
			t.Fatalf("%s: timeline: %v", d.login, err)
		}
		d.epoch = meta.Epoch
		if next == d.pos {
			break
		}
		d.pos = next
		page = append(page, es...)
	}
	d.got = append(d.got, page...)
	return page
}

// eventually polls until cond holds: copies to other partitions arrive
// through the relay, after the operation's own decision.
func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func submit(t *testing.T, n *Node, ev *pb.Event) *pb.Decision {
	t.Helper()
	d, err := n.Engine.Submit(context.Background(), ev)
	if err != nil {
		t.Fatalf("%s: %v", engine.KindName(ev.Kind), err)
	}
	return d
}

var opSeq int

func op(user, login string, kind pb.Kind) *pb.Event {
	opSeq++
	return &pb.Event{App: "app", ClientOpId: fmt.Sprintf("o%d", opSeq), Kind: kind, Actor: &pb.Actor{User: user, LoginId: login}}
}

func msg(user, login string, ct pb.ChatType, to, body string) *pb.Event {
	ev := op(user, login, pb.Kind_KIND_MESSAGE_SEND)
	ev.Payload = &pb.Event_Message{Message: &pb.MessageSend{ChatType: ct, To: to, ClientMsgId: ev.ClientOpId, Body: []byte(body)}}
	return ev
}

func kinds(es []*pb.TimelineEntry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = engine.KindName(e.Source.Kind) + ":" + e.From
		if m := e.Source.GetMessage(); m != nil {
			out[i] += ":" + string(m.Body)
		}
	}
	return out
}

// Seed: user A on A1 (platform 1) and A2 (platform 2); A1 pins a
// conversation → A2 gets pinnedConversation with from = A; A1 gets nothing.
// A2 is offline while B sends three messages and A1 reads them → A2
// reconnects and gets the three messages and the read state, in order,
// once each.
func TestSyncSeedScenarios(t *testing.T) {
	n := openNode(t, 4)
	submit(t, n, login("alice", "l1", "A1", 1, false))
	submit(t, n, login("alice", "l2", "A2", 2, false))
	a1 := &device{app: "app", user: "alice", login: "A1"}
	a2 := &device{app: "app", user: "alice", login: "A2"}

	pin := op("alice", "A1", pb.Kind_KIND_CONVERSATION_PIN)
	pin.Payload = &pb.Event_Conversation{Conversation: &pb.ConversationRef{ChatType: pb.ChatType_CHAT_TYPE_USER, ConversationId: "bob"}}
	submit(t, n, pin)
	if got := kinds(a2.sync(t, n)); fmt.Sprint(got) != "[conversation_pin:alice]" {
		t.Fatalf("A2 got %v", got)
	}
	if got := a1.sync(t, n); len(got) != 0 {
		t.Fatalf("the pinning device got %v", kinds(got))
	}
	if e := a2.got[0]; !e.MultiDevice {
		t.Fatal("pin is not marked as a multi-device event")
	}

	// A2 goes offline (keeps its position); B sends three messages.
	for i := 1; i <= 3; i++ {
		submit(t, n, msg("bob", "", pb.ChatType_CHAT_TYPE_USER, "alice", fmt.Sprint("m", i)))
	}
	eventually(t, func() bool {
		s, _ := n.Store.Snapshot("app", "alice")
		for _, c := range s.Conversations {
			if c.ConversationId == "bob" && c.Unread == 3 {
				return true
			}
		}
		return false
	})
	if got := kinds(a1.sync(t, n)); fmt.Sprint(got) != "[message_send:bob:m1 message_send:bob:m2 message_send:bob:m3]" {
		t.Fatalf("A1 got %v", got)
	}
	read := op("alice", "A1", pb.Kind_KIND_CONVERSATION_READ)
	read.Payload = &pb.Event_Conversation{Conversation: &pb.ConversationRef{ChatType: pb.ChatType_CHAT_TYPE_USER, ConversationId: "bob"}}
	submit(t, n, read)
	// A2 reconnects from its position.
	got := kinds(a2.sync(t, n))
	want := "[message_send:bob:m1 message_send:bob:m2 message_send:bob:m3 conversation_read:alice]"
	if fmt.Sprint(got) != want {
		t.Fatalf("A2 after reconnect got %v, want %v", got, want)
	}
	if again := a2.sync(t, n); len(again) != 0 {
		t.Fatalf("A2 got duplicates: %v", kinds(again))
	}
	s, _ := n.Store.Snapshot("app", "alice")
	for _, c := range s.Conversations {
		if c.ConversationId == "bob" && (c.Unread != 0 || !c.Pinned) {
			t.Fatalf("conversation state %v", c)
		}
	}
	// Bob's devices got the read state of the conversation (from = alice).
	eventually(t, func() bool {
		es, _, _, _ := n.Store.Timeline("app", "bob", "B1", "", 0, 100)
		for _, e := range es {
			if e.Source.Kind == pb.Kind_KIND_CONVERSATION_READ && e.From == "alice" && !e.MultiDevice {
				return true
			}
		}
		return false
	})

	// A message to one of your own devices through its login ID.
	ids, _ := n.Store.SelfIDs("app", "alice", "A1")
	submit(t, n, msg("alice", "A1", pb.ChatType_CHAT_TYPE_SELF_DEVICE, ids[0], "to-A2"))
	if got := kinds(a2.sync(t, n)); fmt.Sprint(got) != "[message_send:alice:to-A2]" {
		t.Fatalf("A2 got %v", got)
	}
	if got := a1.sync(t, n); len(got) != 0 {
		t.Fatalf("A1 got %v", kinds(got))
	}

	// Rebuild equals live once the relay is idle.
	settle(t, n)
	live, _ := n.Store.Digest()
	rb, err := projections.Rebuild(context.Background(), n.Log, projections.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	if d, _ := rb.Digest(); d != live {
		t.Fatal("rebuild digest differs from live")
	}
}

// settle waits until every appended event is applied and its fan-out
// relayed and applied (Node.Settle), failing the test after 10 s.
func settle(t *testing.T, n *Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Settle(ctx); err != nil {
		t.Fatalf("settle: %v", err)
	}
}

func TestCursorIsOperational(t *testing.T) {
	n := openNode(t, 2)
	submit(t, n, login("erin", "l1", "E1", 1, false))
	before, _ := n.Store.Digest()
	if _, _, ok, _ := n.Store.Cursor("app", "erin", "E1"); ok {
		t.Fatal("a new device has a cursor")
	}
	if err := n.Store.SetCursor("app", "erin", "E1", "ep", 5); err != nil {
		t.Fatal(err)
	}
	n.Store.SetCursor("app", "erin", "E1", "ep", 3) // never backwards
	if ep, seq, ok, _ := n.Store.Cursor("app", "erin", "E1"); !ok || ep != "ep" || seq != 5 {
		t.Fatalf("cursor %s %d %v", ep, seq, ok)
	}
	if after, _ := n.Store.Digest(); after != before {
		t.Fatal("a cursor changed the digest")
	}
}

// A retried message with the same client message id, even under a new
// client op id, creates no second message.
func TestMessageRetryByClientMsgID(t *testing.T) {
	n := openNode(t, 2)
	first := msg("frank", "", pb.ChatType_CHAT_TYPE_USER, "gina", "hello")
	first.GetMessage().ClientMsgId = "cm-1"
	d1 := submit(t, n, first)
	retry := msg("frank", "", pb.ChatType_CHAT_TYPE_USER, "gina", "hello")
	retry.GetMessage().ClientMsgId = "cm-1" // new client_op_id from msg(), same message id
	d2 := submit(t, n, retry)
	if d1.MessageId == "" || d1.MessageId != d2.MessageId || d1.Offset != d2.Offset {
		t.Fatalf("retry made a second message: %v / %v", d1, d2)
	}
	settle(t, n)
	es, _, _, err := n.Store.Timeline("app", "gina", "G1", "", 0, 100)
	if err != nil || len(es) != 1 {
		t.Fatalf("gina's timeline: %d entries, %v", len(es), err)
	}
}

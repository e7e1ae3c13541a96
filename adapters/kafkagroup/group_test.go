package kafkagroup

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdsync/mdsync/adapters/internal/testutil"
	"github.com/mdsync/mdsync/adapters/kafkalog"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// The group's protocol on its own: a Kafka log, a store and an engine per
// member, no node. The brokers are MDSYNC_KAFKA_BROKERS, or an in-process
// kfake cluster. adapters/node's owned tests cover a whole node in a group.

// cluster returns brokers and a fresh topic and group name.
func cluster(t *testing.T) (brokers []string, topic, group string) {
	t.Helper()
	name := testutil.Unique("mdsync-group-test")
	return testutil.Brokers(t), name, name
}

// member is one process of the group.
type member struct {
	lg   *kafkalog.Log
	st   *projections.Store
	g    *Group
	eng  *engine.Engine
	stop context.CancelFunc
	done chan error
}

type projector struct {
	*projections.Store
	g *Group
}

func (p projector) WaitApplied(ctx context.Context, pos engine.Position) error {
	return p.g.WaitApplied(ctx, pos)
}

func join(t *testing.T, brokers []string, topic, group, addr string, parts int32) *member {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lg, err := kafkalog.Open(ctx, kafkalog.Options{Brokers: brokers, Topic: topic, Partitions: parts, CreateTopic: true})
	if err != nil {
		t.Fatal(err)
	}
	st, err := projections.Open(projections.Options{Dir: t.TempDir(), Partitions: parts})
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(lg, st, Options{
		Brokers: brokers, Topic: topic, GroupID: group, Addr: addr,
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
		CommitInterval: 200 * time.Millisecond, HeartbeatInterval: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(context.Background())
	m := &member{lg: lg, st: st, g: g, stop: stop, done: make(chan error, 1),
		eng: engine.New(lg, projector{st, g}, engine.Options{Membership: g})}
	go func() { m.done <- g.Run(rctx) }()
	t.Cleanup(func() { m.close() })
	return m
}

// close leaves the group and closes the log and the store (once).
func (m *member) close() error {
	if m.stop == nil {
		return nil
	}
	m.stop()
	m.stop = nil
	lerr := m.lg.Close()
	err := <-m.done
	m.st.Close()
	if err != nil {
		return err
	}
	return lerr
}

func (m *member) serving() []int32 {
	var out []int32
	for p := int32(0); p < m.lg.Partitions(); p++ {
		if m.g.Serving(p) {
			out = append(out, p)
		}
	}
	return out
}

// waitServed waits until the members together serve every partition
// exactly once, each at least one, and returns what each serves.
func waitServed(t *testing.T, parts int32, ms ...*member) [][]int32 {
	t.Helper()
	var serving []func() []int32
	for _, m := range ms {
		serving = append(serving, m.serving)
	}
	return testutil.WaitSplit(t, parts, serving...)
}

// eventually polls cond: the condition here is another process's state
// (the group's committed metadata), which nothing in this process signals.
func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// userOn returns a user whose stream lives on partition p.
func userOn(p, parts int32) string { return testutil.UserOn("app", p, parts) }

func ends(t *testing.T, lg engine.Log) []int64 {
	out := make([]int64, lg.Partitions())
	for p := range out {
		e, err := lg.End(context.Background(), int32(p))
		if err != nil {
			t.Fatal(err)
		}
		out[p] = e
	}
	return out
}

var opSeq atomic.Int64

func login(user, id string) *pb.Event {
	return &pb.Event{App: "app", ClientOpId: fmt.Sprint("login-", id), Kind: pb.Kind_KIND_LOGIN, Actor: &pb.Actor{User: user},
		Payload: &pb.Event_Login{Login: &pb.Login{Platform: 1, LoginId: id, DeviceName: "name-" + id}}}
}

func msg(user, login, to, body string) *pb.Event {
	id := fmt.Sprint("op", opSeq.Add(1))
	return &pb.Event{App: "app", ClientOpId: id, Kind: pb.Kind_KIND_MESSAGE_SEND, Actor: &pb.Actor{User: user, LoginId: login},
		Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: to, ClientMsgId: id, Body: []byte(body)}}}
}

// Owns answers for every partition: nil when served here, 1018 or 1009
// otherwise, and an invalid-argument error out of range.
func TestOwns(t *testing.T) {
	const parts = 2
	brokers, topic, group := cluster(t)
	a := join(t, brokers, topic, group, "127.0.0.1:7001", parts)
	waitServed(t, parts, a)
	for p := int32(0); p < parts; p++ {
		if err := a.g.Owns(p); err != nil {
			t.Fatalf("Owns(%d) = %v while serving it", p, err)
		}
		if addr, local := a.g.OwnerOf(p); !local || addr != "127.0.0.1:7001" {
			t.Fatalf("OwnerOf(%d) = %q, %v", p, addr, local)
		}
	}
	if c := engine.CodeOf(a.g.Owns(parts)); c != engine.CodeInvalidArgument {
		t.Fatalf("Owns(out of range) code %d", c)
	}
	if err := a.close(); err != nil {
		t.Fatal(err)
	}
	for p := int32(0); p < parts; p++ {
		if c := engine.CodeOf(a.g.Owns(p)); c != engine.CodeNotOwner && c != engine.CodeUnavailable {
			t.Fatalf("Owns(%d) after leaving: code %d, want 1018 or 1009", p, c)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, o := range []Options{
		{},
		{Brokers: []string{"b"}, Topic: "t", GroupID: "g"},
		{Brokers: []string{"b"}, Topic: "t", GroupID: "g", Addr: strings.Repeat("a", MaxOwnerAddr+1)},
		{Brokers: []string{"b"}, Topic: "t", GroupID: "g", Addr: "a", CommitInterval: -1},
	} {
		o.EnsureDefaults()
		if err := o.Validate(); err == nil || !strings.HasPrefix(err.Error(), "kafkagroup: ") {
			t.Fatalf("Validate(%+v) = %v, want a kafkagroup: error", o, err)
		}
	}
	o := Options{Brokers: []string{"b"}, Topic: "t", GroupID: "g", Addr: "a"}
	o.EnsureDefaults()
	if err := o.Validate(); err != nil || o.CommitInterval != DefaultCommitInterval || o.SessionTimeout != DefaultSessionTimeout ||
		o.HeartbeatInterval != DefaultHeartbeat || o.RebalanceTimeout != DefaultRebalanceTimeout || o.Logger == nil {
		t.Fatalf("defaults: %+v, %v", o, err)
	}
}

// A wait for a decision does not outlive the partition's ownership: when
// the group rebalances, every waiter returns 1018 or 1009 (retry) instead
// of waiting for an event this process will no longer apply.
func TestWaitEndsOnRebalance(t *testing.T) {
	const parts = 4
	brokers, topic, group := cluster(t)
	a := join(t, brokers, topic, group, "127.0.0.1:7011", parts)
	waitServed(t, parts, a)
	errs := make(chan error, parts)
	for p := int32(0); p < parts; p++ {
		go func() {
			// An offset nobody appends: only the ownership change ends it.
			errs <- a.g.WaitApplied(context.Background(), engine.Position{Partition: p, Offset: 1 << 40})
		}()
	}
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-errs:
		t.Fatalf("a wait returned before any rebalance: %v", err)
	default:
	}
	join(t, brokers, topic, group, "127.0.0.1:7012", parts)
	for range parts {
		select {
		case err := <-errs:
			if c := engine.CodeOf(err); c != engine.CodeNotOwner && c != engine.CodeUnavailable {
				t.Fatalf("wait ended with %v, want 1018 or 1009", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a wait outlived the rebalance by 30s")
		}
	}
}

// A process taking a partition over continues its relay where the previous
// owner's ended (published with its group offset) instead of appending
// the fan-out copies of the partition's history again.
func TestRelayContinuesAfterMove(t *testing.T) {
	const parts = 4
	brokers, topic, group := cluster(t)
	a := join(t, brokers, topic, group, "127.0.0.1:7021", parts)
	waitServed(t, parts, a)
	b := join(t, brokers, topic, group, "127.0.0.1:7022", parts)
	each := waitServed(t, parts, a, b)
	q := each[1][0]
	sender, recipient := userOn(q, parts), userOn((q+1)%parts, parts)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if d, err := b.eng.Submit(ctx, login(sender, "s1")); err != nil || d.Code != 0 {
		t.Fatalf("login: %v %v", d, err)
	}
	for i := range 10 {
		if d, err := b.eng.Submit(ctx, msg(sender, "s1", recipient, fmt.Sprint("m", i))); err != nil || d.Code != 0 {
			t.Fatalf("message %d: %v %v", i, d, err)
		}
	}
	end, err := b.lg.End(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	// b has relayed everything and a has read b's published position.
	eventually(t, func() bool {
		a.g.mu.Lock()
		defer a.g.mu.Unlock()
		return b.st.RelayPosition(q) == end && a.g.dir[q].Relay == end
	})
	before := ends(t, a.lg)
	if a.st.RelayPosition(q) != 0 {
		t.Fatalf("a's own relay position for %d is %d, want 0 (it owned the partition only while empty)", q, a.st.RelayPosition(q))
	}
	if err := b.close(); err != nil {
		t.Fatal(err)
	}
	waitServed(t, parts, a)
	eventually(t, func() bool { return a.st.RelayPosition(q) >= end })
	time.Sleep(300 * time.Millisecond) // a re-relay would have appended by now
	if after := ends(t, a.lg); !slices.Equal(before, after) {
		t.Fatalf("log ends %v became %v: the new owner appended copies again", before, after)
	}
}

package gateway_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdsync/mdsync/adapters/gateway"
	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// envHooks change what newEnvHooks wires between the node and the gateway.
type envHooks struct {
	// dropEnded drops every session end on its way to the gateway (a bus
	// that lost every `ended` effect).
	dropEnded bool
	// dropDeliver drops every deliver hint (a bus that lost them all).
	dropDeliver bool
	// engine wraps the gateway's engine.
	engine func(*node.Node, gateway.Submitter) gateway.Submitter
	// maxPending and maxPendingAge are the node's node.Options.MaxPending
	// and MaxPendingAge.
	maxPending    int
	maxPendingAge time.Duration
	// listener wraps the server's listener.
	listener func(net.Listener) net.Listener
	// store wraps the gateway's store.
	store func(gateway.Store) gateway.Store
}

// results reads frames until it has the results of n distinct request
// ids, skipping events; it fails on anything else.
func (c *client) results(n int) map[string]sframe {
	c.t.Helper()
	out := map[string]sframe{}
	for len(out) < n {
		f := c.next()
		switch f.Type {
		case "result":
			if _, dup := out[f.ID]; dup {
				c.t.Fatalf("two results for %s", f.ID)
			}
			out[f.ID] = f
		case "event":
		default:
			c.t.Fatalf("waiting for %d results (have %d): got %+v", n, len(out), f)
		}
	}
	return out
}

// sourceIDs reads event frames until it has n of them and returns their
// source events' client op ids, in the order received.
func (c *client) sourceIDs(n int) []string {
	c.t.Helper()
	var out []string
	for len(out) < n {
		f := c.next()
		if f.Type != "event" {
			c.t.Fatalf("waiting for %d events (have %d): got %+v", n, len(out), f)
		}
		out = append(out, f.entry(c.t).GetSource().GetClientOpId())
	}
	return out
}

// streamOps returns the client op ids of the events of stream in log order.
func streamOps(t *testing.T, n *node.Node, stream string) []string {
	t.Helper()
	p := engine.PartitionFor([]byte(stream), n.Log.Partitions())
	end := logEnds(t, n)[p]
	var out []string
	for off := int64(0); off < end; {
		es, err := n.Log.Read(context.Background(), p, off, 512)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			ev, err := engine.Decode(e.Value)
			if err != nil {
				t.Fatal(err)
			}
			if ev.StreamKey == stream {
				out = append(out, ev.ClientOpId)
			}
			off = e.Offset + 1
		}
	}
	return out
}

// keep returns the ids of ops whose kind is in kinds, in order.
func keep(ids []string, kinds map[string]string, want ...string) []string {
	var out []string
	for _, id := range ids {
		for _, k := range want {
			if kinds[id] == k {
				out = append(out, id)
			}
		}
	}
	return out
}

// Invariant 8: 1,000 ops (1:1 messages, pins, read receipts, mixed)
// written back to back on one connection without waiting are appended in
// the order sent, and the recipient's device and the sender's other device
// see them in that order.
func TestPipelinedOrder(t *testing.T) {
	const n = 1000
	// No node bound: 1,000 ops at once would pass the age bound on a
	// loaded machine; this test is about order, TestAdmission* about bounds.
	e := newEnvHooks(t, func(o *gateway.Options) { o.MaxOpsInFlight = 2 * n }, envHooks{maxPending: 2 * n, maxPendingAge: -1})
	a1, _ := login(t, e, "alice", "A1", 1)
	a1.expect("snapshot")
	a2, _ := login(t, e, "alice", "A2", 2)
	a2.expect("snapshot")
	b1, _ := login(t, e, "bob", "B1", 1)
	b1.expect("snapshot")

	ids := make([]string, n)
	kinds := map[string]string{}
	var frames strings.Builder
	for i := range n {
		id := fmt.Sprintf("op-%04d", i)
		ids[i] = id
		var ev string
		switch i % 4 {
		case 0, 1:
			kinds[id] = "msg"
			ev = msgJSON("bob", id, "body "+id)
		case 2:
			kinds[id] = "pin"
			ev = fmt.Sprintf(`{"kind":"KIND_CONVERSATION_PIN","client_op_id":%q,"conversation":{"chat_type":"CHAT_TYPE_USER","conversation_id":"bob"}}`, id)
		case 3:
			kinds[id] = "receipt"
			ev = fmt.Sprintf(`{"kind":"KIND_READ_RECEIPT","client_op_id":%q,"receipt":{"chat_type":"CHAT_TYPE_USER","conversation_id":"bob","message_id":"m-%d"}}`, id, i)
		}
		frames.WriteString(`{"type":"op","id":"` + id + `","event":` + ev + "}\n")
	}
	// Written back to back from another goroutine while the results are
	// read here.
	sendDone := make(chan struct{})
	go func() {
		defer close(sendDone)
		for _, line := range strings.Split(strings.TrimSuffix(frames.String(), "\n"), "\n") {
			a1.sendRaw([]byte(line))
		}
	}()
	res := a1.results(n)
	<-sendDone
	var part int32 = -1
	var last int64 = -1
	for _, id := range ids {
		r := res[id]
		if r.Code != 0 {
			t.Fatalf("%s refused: %+v", id, r)
		}
		if part == -1 {
			part = r.Partition
		}
		if r.Partition != part {
			t.Fatalf("%s on partition %d, the others on %d", id, r.Partition, part)
		}
		if off := r.Offset; off <= last {
			t.Fatalf("%s appended at offset %d, after an op sent before it at %d: decided out of order", id, off, last)
		} else {
			last = off
		}
	}
	// The log of the actor's stream, in log order: the login, then the ops
	// in the order sent.
	logged := streamOps(t, e.n, engine.UserStream("app", "alice"))
	var got []string
	for _, id := range logged {
		if strings.HasPrefix(id, "op-") {
			got = append(got, id)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Fatalf("log order of alice's stream differs from the send order (%d ops logged)", len(got))
	}
	// The recipient's device sees the messages and receipts in send order.
	want := keep(ids, kinds, "msg", "receipt")
	if seen := b1.sourceIDs(len(want)); fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("bob's device saw %d events out of send order", len(seen))
	}
	// The sender's other device sees every op in send order.
	if seen := a2.sourceIDs(n); fmt.Sprint(seen) != fmt.Sprint(ids) {
		t.Fatalf("alice's other device saw events out of send order")
	}
}

// Invariants 9: with every `ended` effect lost, a device evicted by a newer
// login (206) and one kicked by another device (217) are still closed with
// their code, by the periodic session check, within a bounded time; an op
// either sends meanwhile is refused with that code and closes it at once.
func TestKickNeverLost(t *testing.T) {
	// The bound: the check runs every 100 ms ±25%.
	const bound = 2 * time.Second
	closedWith := func(t *testing.T, c *client, code int32, by string) {
		t.Helper()
		deadline := time.After(bound)
		for {
			select {
			case f := <-c.frames:
				switch f.Type {
				case "event", "result":
					continue
				case "kicked":
					if f.Code != code || f.ByLoginID != by {
						t.Fatalf("kicked %+v, want code %d by %s", f, code, by)
					}
					if st := c.closed(); st != 4000 {
						t.Fatalf("closed with %d, want 4000", st)
					}
					return
				default:
					t.Fatalf("got %+v, want kicked %d", f, code)
				}
			case <-c.done:
				if len(c.frames) > 0 {
					continue // the frames read before the close come first
				}
				t.Fatalf("closed without a kicked frame: %v", c.err)
			case <-deadline:
				t.Fatalf("still connected %v after its session ended (%d)", bound, code)
			}
		}
	}
	// evict logs in D1..D4 on platform 1 and D5, which evicts D1.
	evict := func(t *testing.T, e *env) *client {
		var d1 *client
		for i := 1; i <= 4; i++ {
			c, _ := login(t, e, "alice", fmt.Sprint("D", i), 1)
			c.expect("snapshot")
			if i == 1 {
				d1 = c
			}
		}
		c5, _ := login(t, e, "alice", "D5", 1)
		c5.expect("snapshot")
		return d1
	}
	// kick logs in K1 and K2 on platform 2; K2 kicks K1.
	kick := func(t *testing.T, e *env) *client {
		k1, _ := login(t, e, "alice", "K1", 2)
		k1.expect("snapshot")
		k2, _ := login(t, e, "alice", "K2", 2)
		k2.expect("snapshot")
		if r := k2.op("kick", `{"kind":"KIND_KICK_DEVICE","client_op_id":"kick-K1","kick_device":{"login_id":"K1"}}`); r.Code != 0 {
			t.Fatalf("kick: %+v", r)
		}
		return k1
	}

	t.Run("check", func(t *testing.T) {
		e := newEnvHooks(t, func(o *gateway.Options) { o.SessionCheckInterval = 100 * time.Millisecond }, envHooks{dropEnded: true})
		d1 := evict(t, e)
		k1 := kick(t, e)
		closedWith(t, d1, 206, "D5")
		closedWith(t, k1, 217, "K2") // the kicking device, as on the effect path
		eventually(t, "session check closes counted", func() bool {
			return metric(t, e, "mdsync_gateway_session_check_closes_total") == 2
		})
	})

	for _, rule := range []string{"log", "stand-in"} {
		t.Run("op/"+rule, func(t *testing.T) {
			opRefused(t, rule, closedWith, evict, kick)
		})
	}
}

// opRefused: with no periodic check, the refusal of an op sent by a
// device whose session ended closes it at once. rule "log" relies on the
// projections' rule (an actor without an active session is refused with
// the code that ended it); "stand-in" puts a stand-in for it in front of
// the engine that answers 1005, so the gateway's part (the store says the
// session is gone; the audit trail gives the code) is tested on its own.
func opRefused(t *testing.T, rule string, closedWith func(*testing.T, *client, int32, string), evict, kick func(*testing.T, *env) *client) {
	h := envHooks{dropEnded: true}
	if rule == "stand-in" {
		h.engine = func(n *node.Node, s gateway.Submitter) gateway.Submitter { return activeOnly{s, n} }
	}
	e := newEnvHooks(t, func(o *gateway.Options) { o.SessionCheckInterval = -1 }, h)
	for _, tc := range []struct {
		name string
		end  func(*testing.T, *env) *client
		code int32
		by   string
	}{{"evicted", evict, 206, "D5"}, {"kicked", kick, 217, "K2"}} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.end(t, e)
			id := "after-" + tc.name
			c.sendRaw([]byte(`{"type":"op","id":"` + id + `","event":` + msgJSON("bob", id, "from an ended session") + `}`))
			var r sframe
			for r.Type != "result" {
				r = c.next()
				if r.Type == "kicked" {
					t.Fatalf("kicked before the op's result: %+v", r)
				}
			}
			if r.Code == 0 {
				t.Fatalf("an op of an ended session was accepted: %+v (invariant 9: the projections refuse an actor without an active session)", r)
			}
			if want := tc.code; r.Code != want && !(rule == "stand-in" && r.Code == 1005) {
				t.Fatalf("op of an ended session: %+v, want code %d", r, want)
			}
			closedWith(t, c, tc.code, tc.by)
		})
	}
}

// activeOnly refuses with 1005, before the engine, an op whose actor login
// ID has no active session: a stand-in for the projections' rule.
type activeOnly struct {
	inner gateway.Submitter
	n     *node.Node
}

func (a activeOnly) Begin(ctx context.Context, ops []*pb.Event) []*engine.Pending {
	out := make([]*engine.Pending, len(ops))
	for i, op := range ops {
		ss, err := a.n.Store.Devices(op.App, op.Actor.User)
		active := false
		for _, s := range ss {
			active = active || s.LoginId == op.Actor.LoginId
		}
		if err == nil && op.Kind != pb.Kind_KIND_LOGIN && !active {
			out[i] = engine.Resolved(&pb.Decision{Code: int32(engine.CodeNotFound), Message: "no active session"}, nil)
			continue
		}
		out[i] = a.inner.Begin(ctx, ops[i:i+1])[0]
	}
	return out
}

// gated holds every Begin while held is set, so a test can fill the
// admission bounds deterministically.
type gated struct {
	inner gateway.Submitter
	mu    sync.Mutex
	hold  chan struct{} // nil: pass through
}

func (g *gated) Begin(ctx context.Context, ops []*pb.Event) []*engine.Pending {
	g.mu.Lock()
	h := g.hold
	g.mu.Unlock()
	if h != nil {
		select {
		case <-h:
		case <-ctx.Done():
		}
	}
	return g.inner.Begin(ctx, ops)
}

func (g *gated) close() {
	g.mu.Lock()
	g.hold = make(chan struct{})
	g.mu.Unlock()
}

func (g *gated) open() {
	g.mu.Lock()
	close(g.hold)
	g.hold = nil
	g.mu.Unlock()
}

// Invariant 10: past the per-connection and the per-gateway bound, ops are
// refused at once with 1019 and retry_after_ms; every admitted op is
// applied exactly once, in the order sent, and the refused ones, retried,
// follow in order.
func TestAdmission(t *testing.T) {
	const perConn, perGateway = 8, 12
	gate := &gated{}
	e := newEnvHooks(t, func(o *gateway.Options) {
		o.MaxOpsInFlight, o.MaxGatewayOpsInFlight, o.BusyRetryAfter = perConn, perGateway, 50*time.Millisecond
	}, envHooks{engine: func(_ *node.Node, s gateway.Submitter) gateway.Submitter { gate.inner = s; return gate }})
	a1, _ := login(t, e, "alice", "A1", 1)
	a1.expect("snapshot")
	c1, _ := login(t, e, "carol", "C1", 1)
	c1.expect("snapshot")
	b1, _ := login(t, e, "bob", "B1", 1)
	b1.expect("snapshot")

	gate.close()
	send := func(c *client, from string, lo, hi int) {
		for i := lo; i < hi; i++ {
			id := fmt.Sprintf("%s-%02d", from, i)
			c.sendRaw([]byte(`{"type":"op","id":"` + id + `","event":` + msgJSON("bob", id, id) + `}`))
		}
	}
	busy := func(c *client, from string, lo, hi int, bound string) {
		t.Helper()
		res := c.results(hi - lo)
		for i := lo; i < hi; i++ {
			id := fmt.Sprintf("%s-%02d", from, i)
			r, ok := res[id]
			if !ok || r.Code != int32(gateway.CodeBusy) || r.RetryAfterMs != 50 || !strings.Contains(r.Message, bound) {
				t.Fatalf("%s: %+v, want 1019 (%s) with retry_after_ms 50; results %v", id, r, bound, res)
			}
		}
	}
	// alice: the first perConn ops are admitted (held in Begin), the rest
	// refused at once.
	send(a1, "a", 0, 30)
	busy(a1, "a", perConn, 30, "connection")
	// carol: the gateway has perGateway-perConn slots left.
	send(c1, "c", 0, 10)
	busy(c1, "c", perGateway-perConn, 10, "gateway")
	if got := metric(t, e, "mdsync_gateway_ops_busy_total", "bound", "connection"); got != 30-perConn {
		t.Fatalf("busy{connection} = %v", got)
	}
	if got := metric(t, e, "mdsync_gateway_ops_busy_total", "bound", "gateway"); got != 10-(perGateway-perConn) {
		t.Fatalf("busy{gateway} = %v", got)
	}
	gate.open()
	for _, r := range a1.results(perConn) {
		if r.Code != 0 {
			t.Fatalf("admitted op refused: %+v", r)
		}
	}
	for _, r := range c1.results(perGateway - perConn) {
		if r.Code != 0 {
			t.Fatalf("admitted op refused: %+v", r)
		}
	}
	// The refused ops, retried as a client does: in order, after
	// retry_after_ms when refused again.
	retry := func(c *client, from string, lo, hi int) {
		for i := lo; i < hi; i++ {
			id := fmt.Sprintf("%s-%02d", from, i)
			for {
				r := c.op(id, msgJSON("bob", id, id))
				if r.Code == int32(gateway.CodeBusy) {
					time.Sleep(time.Duration(r.RetryAfterMs) * time.Millisecond)
					continue
				}
				if r.Code != 0 {
					t.Fatalf("retry %s: %+v", id, r)
				}
				break
			}
		}
	}
	retry(a1, "a", perConn, 30)
	retry(c1, "c", perGateway-perConn, 10)

	// Applied exactly once, in the order sent: the log of each sender's
	// stream, and what bob's device received from each.
	for _, s := range []struct {
		user, from string
		n          int
	}{{"alice", "a", 30}, {"carol", "c", 10}} {
		var want []string
		for i := range s.n {
			want = append(want, fmt.Sprintf("%s-%02d", s.from, i))
		}
		var logged []string
		for _, id := range streamOps(t, e.n, engine.UserStream("app", s.user)) {
			if strings.HasPrefix(id, s.from+"-") {
				logged = append(logged, id)
			}
		}
		if fmt.Sprint(logged) != fmt.Sprint(want) {
			t.Fatalf("%s's stream: %v\nwant %v", s.user, logged, want)
		}
	}
	seen := b1.sourceIDs(40)
	var fromA, fromC []string
	for _, id := range seen {
		if strings.HasPrefix(id, "a-") {
			fromA = append(fromA, id)
		} else {
			fromC = append(fromC, id)
		}
	}
	if len(fromA) != 30 || len(fromC) != 10 {
		t.Fatalf("bob saw %d of alice's and %d of carol's messages", len(fromA), len(fromC))
	}
	for i, id := range fromA {
		if id != fmt.Sprintf("a-%02d", i) {
			t.Fatalf("bob saw alice's messages as %v", fromA)
		}
	}
	select {
	case f := <-b1.frames:
		t.Fatalf("extra frame %+v", f)
	case <-time.After(100 * time.Millisecond):
	}
}

// nodeBusy refuses, as the engine does past its MaxPending, every op of
// the Begin calls (of ops other than logins) refuse picks: before anything
// is appended, with 1019; on even calls with the engine's own RetryAfter
// when after is set.
type nodeBusy struct {
	inner  gateway.Submitter
	mu     sync.Mutex
	calls  int
	refuse func(call int) bool
	after  time.Duration
}

func (b *nodeBusy) Begin(ctx context.Context, ops []*pb.Event) []*engine.Pending {
	if ops[0].Kind == pb.Kind_KIND_LOGIN {
		return b.inner.Begin(ctx, ops) // the engine never refuses a login as busy
	}
	b.mu.Lock()
	b.calls++
	call := b.calls
	no := b.refuse(call)
	b.mu.Unlock()
	if !no {
		return b.inner.Begin(ctx, ops)
	}
	var err error = engine.ErrBusy
	if b.after > 0 && call%2 == 0 {
		err = &engine.Error{Code: engine.CodeBusy, Message: engine.ErrBusy.Message, RetryAfter: b.after}
	}
	out := make([]*engine.Pending, len(ops))
	for i := range ops {
		out[i] = engine.Resolved(nil, err)
	}
	return out
}

// Invariant 10, the node's bound: an op the engine refuses as busy
// (engine.Options.MaxPending) is answered like the gateway's own bounds,
// 1019 with retry_after_ms (the engine's RetryAfter when it gives one, else
// the gateway's BusyRetryAfter), counted as bound "node"; sent again until
// accepted, as the SDK does, every op is applied exactly once, and the
// ops of one connection sent one at a time keep their order.
func TestAdmissionNodeBound(t *testing.T) {
	busy := &nodeBusy{refuse: func(call int) bool { return call%3 != 1 }, // two of every three Begin calls
		after: 35 * time.Millisecond}
	e := newEnvHooks(t, func(o *gateway.Options) { o.BusyRetryAfter = 20 * time.Millisecond },
		envHooks{engine: func(_ *node.Node, s gateway.Submitter) gateway.Submitter { busy.inner = s; return busy }})
	a1, _ := login(t, e, "alice", "A1", 1)
	a1.expect("snapshot")
	b1, _ := login(t, e, "bob", "B1", 1)
	b1.expect("snapshot")

	const n = 20
	refusals := 0
	afters := map[int64]int{}
	var want []string
	for i := range n {
		id := fmt.Sprintf("a-%02d", i)
		want = append(want, id)
		for {
			r := a1.op(id, msgJSON("bob", id, id))
			if r.Code == int32(gateway.CodeBusy) {
				if (r.RetryAfterMs != 20 && r.RetryAfterMs != 35) || !strings.Contains(r.Message, "awaiting decisions on this node") {
					t.Fatalf("%s: %+v, want 1019 from the node with retry_after_ms 20 or 35", id, r)
				}
				afters[r.RetryAfterMs]++
				refusals++
				time.Sleep(time.Duration(r.RetryAfterMs) * time.Millisecond)
				continue
			}
			if r.Code != 0 {
				t.Fatalf("%s: %+v", id, r)
			}
			break
		}
	}
	if refusals < n || afters[20] == 0 || afters[35] == 0 {
		t.Fatalf("%d refusals for %d ops (retry_after_ms %v): the node bound was not exercised", refusals, n, afters)
	}
	if got := metric(t, e, "mdsync_gateway_ops_busy_total", "bound", "node"); got != float64(refusals) {
		t.Fatalf("busy{node} = %v, want %d", got, refusals)
	}
	// Where the ops' time went: every op sent was queued and handed to
	// Begin; the refused ones are timed as busy, the decided ones by the
	// wait for their decision and in total.
	for _, s := range []struct {
		stage string
		want  int
	}{{"queue", n + refusals}, {"busy", refusals}, {"decide", n}, {"total", n}} {
		if got := metric(t, e, "mdsync_gateway_op_stage_seconds", "stage", s.stage); got != float64(s.want) {
			t.Fatalf("op_stage_seconds{stage=%q} counted %v ops, want %d", s.stage, got, s.want)
		}
	}
	var logged []string
	for _, id := range streamOps(t, e.n, engine.UserStream("app", "alice")) {
		if strings.HasPrefix(id, "a-") {
			logged = append(logged, id)
		}
	}
	if fmt.Sprint(logged) != fmt.Sprint(want) {
		t.Fatalf("alice's stream %v\nwant %v", logged, want)
	}
	if seen := b1.sourceIDs(n); fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("bob saw %v", seen)
	}
}

package forward_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdsync/mdsync/adapters/internal/testutil"
	"github.com/mdsync/mdsync/adapters/kafkagroup"
	"github.com/mdsync/mdsync/adapters/kafkalog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/mdsync/mdsync/adapters/forward"
	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/adapters/restapi"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

const token = "cluster-admin-token"

// proc is one mdsync process: an owned-mode node, its forwarding
// Submitter and its REST API on a local HTTP server whose address is the
// node's published owner address.
type proc struct {
	n    *node.Node
	fwd  *forward.Submitter
	srv  *httptest.Server
	addr string
}

func startProc(t *testing.T, brokers []string, topic, group string, parts int32) *proc {
	t.Helper()
	var h atomic.Pointer[http.Handler]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*h.Load()).ServeHTTP(w, r) }))
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := node.New(ctx, node.Options{
		Dir:   t.TempDir(),
		Kafka: &kafkalog.Options{Brokers: brokers, Topic: topic, Partitions: parts, CreateTopic: true},
		Group: &kafkagroup.Options{GroupID: group, Addr: addr,
			CommitInterval: 200 * time.Millisecond, HeartbeatInterval: 300 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	fwd, err := forward.New(n.Engine, n, forward.Options{Token: token, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	api, err := restapi.New(fwd, n.Store, restapi.Options{AdminToken: token, Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	h.Store(&api)
	return &proc{n: n, fwd: fwd, srv: srv, addr: addr}
}

// waitOwned waits until a and b together serve every partition once,
// each at least one, and returns b's.
func waitOwned(t *testing.T, parts int32, a, b *proc) []int32 {
	t.Helper()
	return testutil.WaitSplit(t, parts, a.n.Owned, b.n.Owned)[1]
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func partOf(stream string, parts int32) int32 { return engine.PartitionFor([]byte(stream), parts) }

// pick returns the first name with prefix whose stream (by mk) lies on
// one of ps.
func pick(prefix string, parts int32, ps []int32, stream func(string) string) string {
	for i := 0; ; i++ {
		s := fmt.Sprintf("%s%d", prefix, i)
		if slices.Contains(ps, partOf(stream(s), parts)) {
			return s
		}
	}
}

func loginOp(user, loginID string) *pb.Event {
	return &pb.Event{App: "app", ClientOpId: "login-" + loginID, Kind: pb.Kind_KIND_LOGIN, Actor: &pb.Actor{User: user},
		Payload: &pb.Event_Login{Login: &pb.Login{Platform: 1, LoginId: loginID, DeviceName: "n"}}}
}

func submitOK(t *testing.T, s interface {
	Submit(context.Context, *pb.Event) (*pb.Decision, error)
}, op *pb.Event) *pb.Decision {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	d, err := s.Submit(ctx, op)
	if err != nil || d.Code != 0 {
		t.Fatalf("%s %s: %v %v", engine.KindName(op.Kind), op.ClientOpId, d, err)
	}
	return d
}

// timelineHas reports whether user's timeline on n (seen by loginID)
// holds a group message with body, and returns its source.
func timelineHas(n *node.Node, user, loginID, body string) *pb.Event {
	es, _, _, err := n.Store.Timeline("app", user, loginID, "", 0, 100)
	if err != nil {
		return nil
	}
	for _, e := range es {
		if m := e.GetSource().GetMessage(); m != nil && string(m.Body) == body {
			return e.GetSource()
		}
	}
	return nil
}

// Two processes on one topic: user u is served by A, group g's stream by
// B. A device of u, connected to A, creates g and posts to it through A's
// forwarding Submitter: B decides both (code 0), a retry returns the same
// decision, the actor arrives as the device's (not admin), and the message
// reaches both members' timelines, each on its own owner. A forwarded
// request that reaches a non-owner is answered 1018, never forwarded again.
func TestForwardToOwner(t *testing.T) {
	const parts = 4
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	id := fmt.Sprint(time.Now().UnixNano())
	brokers, topic, group := c.ListenAddrs(), "fwd-test."+id, "fwd-group."+id
	a := startProc(t, brokers, topic, group, parts)
	b := startProc(t, brokers, topic, group, parts)
	onB := waitOwned(t, parts, a, b)
	onA := a.n.Owned()

	u := pick("u", parts, onA, func(s string) string { return engine.UserStream("app", s) })
	m := pick("m", parts, onB, func(s string) string { return engine.UserStream("app", s) })
	g := pick("g", parts, onB, func(s string) string { return engine.GroupStream("app", s) })
	submitOK(t, a.n.Engine, loginOp(u, "du"))
	submitOK(t, a.n.Engine, loginOp(u, "du2"))
	submitOK(t, b.n.Engine, loginOp(m, "dm"))

	create := &pb.Event{App: "app", ClientOpId: "create-g", Kind: pb.Kind_KIND_GROUP_CREATE, Actor: &pb.Actor{User: u, LoginId: "du"},
		Payload: &pb.Event_Group{Group: &pb.GroupOp{GroupId: g, Name: g, Users: []string{m}}}}
	// A learns B's address from the group's offsets within a commit interval.
	eventually(t, "A names B as the group's owner", func() bool {
		addr, local := a.n.OwnerOfOp(create)
		return !local && addr == b.addr
	})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := a.n.Engine.Submit(ctx, create); engine.CodeOf(err) != engine.CodeNotOwner {
		t.Fatalf("A's own engine on B's group: %v, want 1018", err)
	}
	dc := submitOK(t, a.fwd, create)
	if dc.Partition != partOf(engine.GroupStream("app", g), parts) {
		t.Fatalf("group create decided on partition %d, want the group's %d", dc.Partition, partOf(engine.GroupStream("app", g), parts))
	}

	send := &pb.Event{App: "app", ClientOpId: "msg-1", Kind: pb.Kind_KIND_MESSAGE_SEND, Actor: &pb.Actor{User: u, LoginId: "du"},
		Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_GROUP, To: g, ClientMsgId: "msg-1", Body: []byte("hello g")}}}
	d1 := submitOK(t, a.fwd, send)
	d2 := submitOK(t, a.fwd, send) // a retry, e.g. after a lost answer
	if d1.Partition != d2.Partition || d1.Offset != d2.Offset {
		t.Fatalf("retry got a second decision: %v then %v", d1, d2)
	}
	end, err := b.n.Log.End(ctx, d1.Partition)
	if err != nil {
		t.Fatal(err)
	}
	// The logged event carries the device's actor, not the admin.
	es, err := b.n.Log.Read(ctx, d1.Partition, d1.Offset, 1)
	if err != nil || len(es) != 1 {
		t.Fatalf("read the decided event: %v %v", es, err)
	}
	ev, err := engine.Decode(es[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Actor.GetUser() != u || ev.Actor.GetLoginId() != "du" || ev.Actor.GetAdmin() {
		t.Fatalf("logged actor %v, want user %s login du, not admin", ev.Actor, u)
	}
	// Both members see it, each on the process serving them (u on its
	// other device: the sending device does not get its own message).
	eventually(t, "the message on u's other device at A", func() bool { return timelineHas(a.n, u, "du2", "hello g") != nil })
	eventually(t, "the message on m's timeline at B", func() bool { return timelineHas(b.n, m, "dm", "hello g") != nil })

	// One hop: B does not own u's stream; an operation forwarded to B for
	// it is answered 1018 naming A, and B forwards nothing (A's log of u's
	// partition does not grow).
	pu := partOf(engine.UserStream("app", u), parts)
	eventually(t, "B names A as u's owner", func() bool { addr, _ := b.n.Owner("app", u); return addr == a.addr })
	before, _ := a.n.Log.End(ctx, pu)
	body := fmt.Sprintf(`{"app":"app","client_op_id":"hop","kind":"KIND_LOGIN","actor":{"user":%q},"login":{"platform":1,"login_id":"d2","device_name":"n"}}`, u)
	req, _ := http.NewRequest("POST", b.srv.URL+forward.Path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set(forward.Header, "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(out), `"code":1018`) || !strings.Contains(string(out), a.addr) {
		t.Fatalf("forwarded request at a non-owner: %d %s, want 503 with Retry-After and 1018 naming %s", resp.StatusCode, out, a.addr)
	}
	time.Sleep(200 * time.Millisecond)
	if after, _ := a.n.Log.End(ctx, pu); after != before {
		t.Fatalf("u's partition grew from %d to %d: the forwarded request was forwarded again", before, after)
	}
	if after, _ := b.n.Log.End(ctx, d1.Partition); after != end {
		t.Fatalf("the group's partition grew from %d to %d after the retry", end, after)
	}
}

// --- the Submitter alone, with fakes ---

type fakeLocal struct{ err error }

func (f fakeLocal) Submit(context.Context, *pb.Event) (*pb.Decision, error) {
	if f.err != nil {
		return nil, f.err
	}
	return &pb.Decision{Code: 0, Offset: 7}, nil
}

type fakeOwner struct{ addr string }

func (f fakeOwner) OwnerOfOp(*pb.Event) (string, bool) { return f.addr, f.addr == "" }

var anOp = &pb.Event{App: "app", ClientOpId: "x", Kind: pb.Kind_KIND_LOGIN, Actor: &pb.Actor{User: "u", LoginId: "d"}}

func TestSubmitterEdges(t *testing.T) {
	var calls atomic.Int32
	var lastHeader, lastAuth atomic.Value
	answer := func(status int, body string) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			lastHeader.Store(r.Header.Get(forward.Header))
			lastAuth.Store(r.Header.Get("Authorization"))
			w.WriteHeader(status)
			io.WriteString(w, body)
		}))
		t.Cleanup(s.Close)
		return s
	}
	notOwner := engine.Errorf(engine.CodeNotOwner, "elsewhere")
	addr := func(s *httptest.Server) string { return s.Listener.Addr().String() }
	ctx := context.Background()
	mk := func(local forward.Local, owner string) *forward.Submitter {
		s, err := forward.New(local, fakeOwner{owner}, forward.Options{Token: token, Timeout: 2 * time.Second,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	// Local decisions and other errors pass through; nothing is sent.
	ok := answer(200, `{"code":0}`)
	if d, err := mk(fakeLocal{}, addr(ok)).Submit(ctx, anOp); err != nil || d.Offset != 7 {
		t.Fatalf("local decision: %v %v", d, err)
	}
	if _, err := mk(fakeLocal{engine.Errorf(engine.CodeInvalidArgument, "bad")}, addr(ok)).Submit(ctx, anOp); engine.CodeOf(err) != engine.CodeInvalidArgument {
		t.Fatalf("local error: %v", err)
	}
	// 1018 with no known owner stays 1018.
	if _, err := mk(fakeLocal{notOwner}, "").Submit(ctx, anOp); engine.CodeOf(err) != engine.CodeNotOwner {
		t.Fatalf("unknown owner: %v", err)
	}
	// A marked (already forwarded) context is never forwarded.
	if _, err := mk(fakeLocal{notOwner}, addr(ok)).Submit(forward.Mark(ctx), anOp); engine.CodeOf(err) != engine.CodeNotOwner {
		t.Fatalf("marked context: %v", err)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("%d requests sent for operations that must not be forwarded", n)
	}

	// The owner's decision, with the cluster credential and the header.
	dec := answer(200, `{"code":1008,"message":"no","partition":3,"offset":42,"future_field":1}`)
	d, err := mk(fakeLocal{notOwner}, addr(dec)).Submit(ctx, anOp)
	if err != nil || d.Code != 1008 || d.Partition != 3 || d.Offset != 42 {
		t.Fatalf("owner's decision: %v %v", d, err)
	}
	if lastHeader.Load() != "1" || lastAuth.Load() != "Bearer "+token {
		t.Fatalf("request headers: forwarded=%v auth=%v", lastHeader.Load(), lastAuth.Load())
	}
	// The owner's coded error keeps its code (1018: it moved meanwhile).
	moved := answer(400, `{"code":1018,"message":"partition 2 is served by 10.0.0.9:8080"}`)
	if _, err := mk(fakeLocal{notOwner}, addr(moved)).Submit(ctx, anOp); engine.CodeOf(err) != engine.CodeNotOwner || !strings.Contains(err.Error(), "10.0.0.9") {
		t.Fatalf("owner's 1018: %v", err)
	}
	// The owner's 1019 keeps its retry_after_ms, bounded, so the device
	// waits what the owner asked, not a guess of this process.
	for body, want := range map[string]time.Duration{
		`{"code":1019,"message":"busy","retry_after_ms":120}`:     120 * time.Millisecond,
		`{"code":1019,"message":"busy","retry_after_ms":9000000}`: 5 * time.Second,
		`{"code":1019,"message":"busy"}`:                          0,
	} {
		_, err := mk(fakeLocal{notOwner}, addr(answer(429, body))).Submit(ctx, anOp)
		var e *engine.Error
		if !errors.As(err, &e) || e.Code != engine.CodeBusy || e.RetryAfter != want {
			t.Fatalf("owner's 1019 %s: %#v, want 1019 with RetryAfter %v", body, err, want)
		}
	}
	// A refused cluster credential, a garbage or oversized answer, an
	// unreachable owner: 1009, retry.
	unavailable := map[string]string{
		"credential refused": addr(answer(401, `{"code":1013,"message":"bad credentials"}`)),
		"garbage":            addr(answer(502, `<html>bad gateway</html>`)),
		"oversized":          addr(answer(200, `{"message":"`+strings.Repeat("x", forward.MaxResponseBytes)+`"}`)),
		"unreachable":        "127.0.0.1:1",
	}
	for what, a := range unavailable {
		_, err := mk(fakeLocal{notOwner}, a).Submit(ctx, anOp)
		var e *engine.Error
		if !errors.As(err, &e) || e.Code != engine.CodeUnavailable {
			t.Fatalf("%s: %v, want 1009", what, err)
		}
	}
	if _, err := forward.New(fakeLocal{}, fakeOwner{}, forward.Options{}); err == nil {
		t.Fatal("New without a token succeeded")
	}
}

package gateway_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/mdsync/mdsync/adapters/gateway"
	"github.com/mdsync/mdsync/adapters/node"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// A resume attaches without appending anything to the log; a resume of an
// evicted login ID is refused with the code that ended it, and of an
// unknown one with 1005.
func TestResume(t *testing.T) {
	e := newEnv(t, nil)
	a, _ := login(t, e, "alice", "A1", 1)
	a.expect("snapshot")
	a.ws.Close(websocket.StatusNormalClosure, "")
	<-a.done
	eventually(t, "A1 disconnected", func() bool { _, _, on := e.g.DeviceInfo("app", "alice", "A1"); return !on })
	if seen, addr, _ := e.g.DeviceInfo("app", "alice", "A1"); seen.IsZero() || addr == "" {
		t.Fatalf("a disconnected device is remembered: %v %q", seen, addr)
	}
	before := logEnds(t, e.n)
	r := dial(t, e)
	r.send(loginFrame{Type: "resume", ID: "r", App: "app", User: "alice", Password: "pw", LoginID: "A1"})
	if f := r.expect("login_result"); f.Code != 0 || !f.Resumed || f.LoginID != "A1" {
		t.Fatalf("resume: %+v", f)
	}
	r.expect("snapshot") // it never acknowledged anything
	r.send(map[string]string{"type": "ping", "id": "p"})
	r.expect("pong")
	if after := logEnds(t, e.n); !reflect.DeepEqual(before, after) {
		t.Fatalf("resume appended to the log: ends %v -> %v", before, after)
	}

	// Four more logins on platform 1 evict A1 (the earliest).
	for i := 2; i <= 5; i++ {
		c, _ := login(t, e, "alice", fmt.Sprint("A", i), 1)
		c.expect("snapshot")
	}
	if k := r.expect("kicked"); k.Code != 206 || k.ByLoginID != "A5" {
		t.Fatalf("kicked: %+v", k)
	}
	r.closed()
	for id, want := range map[string]int32{"A1": 206, "nobody": 1005} {
		c := dial(t, e)
		c.send(loginFrame{Type: "resume", ID: "r", App: "app", User: "alice", Password: "pw", LoginID: id})
		if f := c.expect("login_result"); f.Code != want {
			t.Fatalf("resume %s: %+v, want %d", id, f, want)
		}
		if st := c.closed(); st != 4000 {
			t.Fatalf("refused resume closed with %d", st)
		}
	}
}

// A device acts only as itself; kinds reserved to REST or to mdsync are
// refused; nothing refused reaches the log.
func TestOpRefusals(t *testing.T) {
	e := newEnv(t, nil)
	a, _ := login(t, e, "alice", "A1", 1)
	a.expect("snapshot")
	before := logEnds(t, e.n)
	pin := `"kind":"KIND_CONVERSATION_PIN","client_op_id":"p-%d","conversation":{"chat_type":"CHAT_TYPE_USER","conversation_id":"bob"}`
	for i, extra := range []string{
		`"actor":{"user":"bob"}`,
		`"actor":{"user":"alice","login_id":"A9"}`,
		`"actor":{"admin":true}`,
		`"app":"other"`,
	} {
		if r := a.op(fmt.Sprint("x", i), "{"+fmt.Sprintf(pin, i)+","+extra+"}"); r.Code != 1008 {
			t.Fatalf("%s: %+v", extra, r)
		}
	}
	for _, ev := range []string{
		`{"kind":"KIND_LOGIN","client_op_id":"k1","login":{"platform":1,"login_id":"A7"}}`,
		`{"kind":"KIND_POLICY_SET","client_op_id":"k2","policy_set":{"mode":"PLATFORM_MODE_MULTI","default_limit":1,"auto_login":"AUTO_LOGIN_POLICY_KICK_OLDEST"}}`,
		`{"kind":"KIND_PASSWORD_CHANGE","client_op_id":"k3","credential":{"password_hash":"$argon2id$x"}}`,
		`{"kind":"KIND_USER_REMOVE","client_op_id":"k4","empty":{}}`,
		`{"kind":"KIND_USER_REGISTER","client_op_id":"k6","credential":{"password_hash":"$argon2id$x"}}`,
		`{"kind":"KIND_TOKENS_REVOKE","client_op_id":"k7","empty":{}}`,
		`{"kind":"KIND_DELIVER","client_op_id":"k5","deliver":{"recipient":"alice"}}`,
	} {
		if r := a.op("k", ev); r.Code != 1008 {
			t.Fatalf("%s: %+v", ev, r)
		}
	}
	if after := logEnds(t, e.n); !reflect.DeepEqual(before, after) {
		t.Fatalf("refused operations reached the log: %v -> %v", before, after)
	}
	// The connection's own identity is accepted, explicitly or not.
	if r := a.op("ok1", "{"+fmt.Sprintf(pin, 100)+`,"actor":{"user":"alice","login_id":"A1"},"app":"app"}`); r.Code != 0 || r.EventID == "" {
		t.Fatalf("own op: %+v", r)
	}
	if r := a.op("ok2", "{"+fmt.Sprintf(pin, 101)+"}"); r.Code != 0 {
		t.Fatalf("op without actor: %+v", r)
	}
}

// A bad frame is answered with 1001 (with its id when readable) and the
// connection stays open.
func TestBadFrameKeepsConnection(t *testing.T) {
	e := newEnv(t, nil)
	a, _ := login(t, e, "alice", "A1", 1)
	a.expect("snapshot")
	for _, raw := range []string{`{nope`, `{"type":"bogus","id":"7"}`, `{"type":"history","id":"8","chat_type":"CHAT_TYPE_USER","conversation_id":"bob","limit":0}`,
		`{"type":"op","id":"9","event":"not an object"}`, `[1,2]`} {
		a.sendRaw([]byte(raw))
		f := a.expect("error")
		if f.Code != 1001 {
			t.Fatalf("%s: %+v", raw, f)
		}
		if strings.Contains(raw, `"id":"`) && f.ID == "" {
			t.Fatalf("%s: answer without the id: %+v", raw, f)
		}
	}
	a.send(map[string]string{"type": "ping", "id": "p"})
	if f := a.expect("pong"); f.ID != "p" {
		t.Fatalf("pong %+v", f)
	}
	// An ack beyond what was sent.
	a.send(map[string]any{"type": "ack", "id": "a", "epoch": "x", "seq": 5})
	if f := a.expect("error"); f.Code != 1001 {
		t.Fatalf("ack beyond: %+v", f)
	}
}

// A frame over the limit gets error 1004 and the connection is closed
// with status 1009.
func TestOversizedFrame(t *testing.T) {
	e := newEnv(t, nil)
	a, _ := login(t, e, "alice", "A1", 1)
	a.expect("snapshot")
	a.sendRaw([]byte(`{"type":"ping","id":"` + strings.Repeat("x", 70<<10) + `"}`))
	if f := a.expect("error"); f.Code != 1004 {
		t.Fatalf("oversized: %+v", f)
	}
	if st := a.closed(); st != websocket.StatusMessageTooBig {
		t.Fatalf("closed with %d, want 1009", st)
	}
}

// A device that sends nothing for the heartbeat timeout gets 1017 and is
// closed; one that never logs in gets 1013 after the login timeout.
func TestIdleAndLoginTimeouts(t *testing.T) {
	e := newEnv(t, func(o *gateway.Options) {
		// Margins for a loaded CI machine: alice's login must finish within
		// the login timeout, and a ping's round trip within the heartbeat.
		o.HeartbeatTimeout, o.LoginTimeout = 1200*time.Millisecond, 900*time.Millisecond
	})
	a, _ := login(t, e, "alice", "A1", 1)
	a.expect("snapshot")
	// Pings keep it alive past the timeout (4 × 400 ms > 1.2 s).
	for i := 0; i < 4; i++ {
		time.Sleep(400 * time.Millisecond)
		a.send(map[string]string{"type": "ping"})
		a.expect("pong")
	}
	f := a.expect("error")
	if f.Code != 1017 {
		t.Fatalf("idle: %+v", f)
	}
	if st := a.closed(); st != 4000 {
		t.Fatalf("idle closed with %d", st)
	}
	c := dial(t, e)
	if f := c.expect("error"); f.Code != 1013 {
		t.Fatalf("no login: %+v", f)
	}
	c.closed()
	eventually(t, "disconnects{1017}", func() bool { return metric(t, e, "mdsync_gateway_disconnects_total", "code", "1017") == 1 })
}

var _ gateway.Owner = (*node.Node)(nil)

type fakeOwner struct{}

func (fakeOwner) Owner(app, user string) (string, bool) {
	if user == "remote" {
		return "10.0.0.2:7000", false
	}
	return "", true
}

// A user whose partition is served by another process is sent there
// (1018 with the address) before any decision.
func TestNotOwner(t *testing.T) {
	e := newEnv(t, func(o *gateway.Options) { o.Owner = fakeOwner{} })
	before := logEnds(t, e.n)
	c := dial(t, e)
	c.send(loginFrame{Type: "login", ID: "l", App: "app", User: "remote", Password: "pw", Platform: 1})
	f := c.expect("error")
	if f.Code != 1018 || f.Addr != "10.0.0.2:7000" || f.ID != "l" {
		t.Fatalf("not owner: %+v", f)
	}
	if st := c.closed(); st != 4000 {
		t.Fatalf("closed with %d", st)
	}
	if after := logEnds(t, e.n); !reflect.DeepEqual(before, after) {
		t.Fatal("a refused login reached the log")
	}
	a, _ := login(t, e, "alice", "A1", 1)
	a.expect("snapshot")
}

// LOGOUT ends the device's own session: result, then a normal close.
func TestLogout(t *testing.T) {
	e := newEnv(t, nil)
	a, _ := login(t, e, "alice", "A1", 1)
	a.expect("snapshot")
	b, _ := login(t, e, "alice", "A2", 2)
	b.expect("snapshot")
	b.send(map[string]string{"type": "self_ids", "id": "s"})
	if f := b.expect("self_ids_result"); fmt.Sprint(f.LoginIDs) != "[A1]" {
		t.Fatalf("self ids: %+v", f)
	}
	if r := a.op("lo", `{"kind":"KIND_LOGOUT","client_op_id":"lo-1","empty":{}}`); r.Code != 0 {
		t.Fatalf("logout: %+v", r)
	}
	if st := a.closed(); st != websocket.StatusNormalClosure {
		t.Fatalf("logout closed with %d", st)
	}
	ss, _ := e.n.Store.Devices("app", "alice")
	if len(ss) != 1 || ss[0].LoginId != "A2" {
		t.Fatalf("sessions after logout: %v", ss)
	}
	if seen, _, on := e.g.DeviceInfo("app", "alice", "A1"); on || !seen.IsZero() {
		t.Fatal("a logged-out device is still remembered")
	}
}

// History pages a conversation's messages through the connection.
func TestHistory(t *testing.T) {
	e := newEnv(t, nil)
	a, _ := login(t, e, "alice", "A1", 1)
	a.expect("snapshot")
	for i := 0; i < 3; i++ {
		submit(t, e.n, &pb.Event{App: "app", ClientOpId: fmt.Sprint("h", i), Kind: pb.Kind_KIND_MESSAGE_SEND, Actor: &pb.Actor{User: "bob"},
			Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "alice", ClientMsgId: fmt.Sprint("h", i), Body: []byte(fmt.Sprint("m", i))}}})
		a.expect("event")
	}
	a.send(map[string]any{"type": "history", "id": "h", "chat_type": "CHAT_TYPE_USER", "conversation_id": "bob", "limit": 2})
	f := a.expect("history_result")
	if f.Code != 0 || len(f.Entries) != 2 {
		t.Fatalf("history: %+v", f)
	}
}

// smallBuffers makes the server's socket send buffers tiny, so that a
// device that stops reading stalls its writer after a few frames.
type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(4096)
	}
	return c, err
}

// One device stops reading while other users' devices receive a steady
// stream: the others get every event without stalls, and the slow one is
// closed with 1016.
func TestSlowConsumerDoesNotSlowOthers(t *testing.T) {
	e := newEnvListener(t, func(o *gateway.Options) {
		o.WriteTimeout, o.SendQueue = 300*time.Millisecond, 16
	}, func(l net.Listener) net.Listener { return smallBuffers{l} })

	// The slow device's socket receive buffer is tiny too.
	slowHC := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetReadBuffer(4096)
		}
		return c, err
	}}}
	slow := dialWith(t, e, slowHC)
	slow.send(loginFrame{Type: "login", ID: "l", App: "app", User: "sam", Password: "pw", LoginID: "S1", Platform: 1})
	slow.expect("login_result")
	slow.expect("snapshot")
	slow.gate.Lock() // stops reading (after at most one more frame)

	type dev struct {
		c    *client
		user string
	}
	var devs []dev
	for _, u := range []struct{ user, id string }{{"bob", "B1"}, {"bob", "B2"}, {"dave", "D1"}} {
		c, _ := login(t, e, u.user, u.id, 1)
		c.expect("snapshot")
		devs = append(devs, dev{c, u.user})
	}
	const n = 60
	body := strings.Repeat("z", 2048)
	var (
		mu       sync.Mutex
		accepted = map[string]time.Time{} // body -> when its decision returned
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < n; i++ {
			for _, to := range []string{"sam", "bob", "dave"} {
				b := fmt.Sprintf("%s-%d-%s", to, i, body)
				_, err := e.n.Engine.Submit(context.Background(), &pb.Event{App: "app", ClientOpId: fmt.Sprintf("c-%s-%d", to, i), Kind: pb.Kind_KIND_MESSAGE_SEND,
					Actor: &pb.Actor{User: "carol"}, Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: to, ClientMsgId: fmt.Sprintf("c-%s-%d", to, i), Body: []byte(b)}}})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				accepted[b] = time.Now()
				mu.Unlock()
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	type arrival struct {
		body string
		at   time.Time
	}
	got := make([][]arrival, len(devs))
	for k, d := range devs {
		fl := &follower{t: t, c: d.c}
		for len(fl.bodies) < n {
			f := d.c.next()
			fl.take(f)
			got[k] = append(got[k], arrival{fl.bodies[len(fl.bodies)-1], f.at})
		}
		for i, b := range fl.bodies {
			if want := fmt.Sprintf("%s-%d-%s", d.user, i, body); b != want {
				t.Fatalf("%s got %.20q at %d, want %.20q", d.user, b, i, want)
			}
		}
	}
	<-done
	// How long each event took from its acceptance to a fast device's read
	// (negative when the read beat the submitter's return).
	var worst time.Duration
	for _, as := range got {
		for _, a := range as {
			if w := a.at.Sub(accepted[a.body]); w > worst {
				worst = w
			}
		}
	}
	t.Logf("fast devices: worst wait %v for %d events each", worst, n)
	if worst > 2*time.Second {
		t.Fatalf("a fast device waited %v for an event", worst)
	}
	deadline := time.Now().Add(10 * time.Second)
	for metric(t, e, "mdsync_gateway_disconnects_total", "code", "1016") != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("slow device not closed with 1016 within 10s; disconnects: %v, frames out: %v", metric(t, e, "mdsync_gateway_disconnects_total"), metric(t, e, "mdsync_gateway_frames_total", "direction", "out"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	slow.gate.Unlock()
	select {
	case <-slow.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the slow device's connection is still open")
	}
}

// A reconnect of a login ID whose old socket still looks open replaces
// it: the old connection is closed (4000, no frame), the new one lives on
// and nothing is evicted.
func TestReconnectReplacesOldConnection(t *testing.T) {
	e := newEnv(t, nil)
	old, _ := login(t, e, "alice", "A1", 1)
	old.expect("snapshot")
	c, r := login(t, e, "alice", "A1", 1)
	if !r.Reconnect {
		t.Fatalf("second login of A1: %+v", r)
	}
	c.expect("snapshot")
	if st := old.closed(); st != 4000 {
		t.Fatalf("replaced connection closed with %d", st)
	}
	select {
	case f := <-old.frames:
		t.Fatalf("replaced connection got %+v", f)
	default:
	}
	c.send(map[string]string{"type": "ping"})
	c.expect("pong")
	if seen, _, on := e.g.DeviceInfo("app", "alice", "A1"); !on || seen.IsZero() {
		t.Fatal("the new connection is not the device's")
	}
}

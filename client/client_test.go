package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// fakeServer speaks the gateway's side of docs/protocol.md from a script:
// each accepted connection is handed to the test, which reads and writes
// frames itself.
type fakeServer struct {
	*httptest.Server
	conns    chan *fakeConn
	accepted atomic.Int32
}

type fakeConn struct {
	t    *testing.T
	ws   *websocket.Conn
	done chan struct{}
}

func newFakeServer(t *testing.T) *fakeServer {
	fs := &fakeServer{conns: make(chan *fakeConn, 8)}
	fs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{Subprotocol}})
		if err != nil {
			return
		}
		if ws.Subprotocol() != Subprotocol {
			ws.Close(websocket.StatusPolicyViolation, "subprotocol")
			return
		}
		fs.accepted.Add(1)
		fc := &fakeConn{t: t, ws: ws, done: make(chan struct{})}
		fs.conns <- fc
		<-fc.done
	}))
	t.Cleanup(func() {
		fs.CloseClientConnections()
		fs.Close()
	})
	return fs
}

func (fs *fakeServer) url() string { return "ws" + strings.TrimPrefix(fs.URL, "http") + "/v1/ws" }

func (fs *fakeServer) next(t *testing.T) *fakeConn {
	t.Helper()
	select {
	case fc := <-fs.conns:
		t.Cleanup(fc.close)
		return fc
	case <-time.After(5 * time.Second):
		t.Fatal("no connection")
		return nil
	}
}

// read returns the next frame the client sent, skipping pings and acks
// unless asked for.
func (fc *fakeConn) read(types ...string) map[string]any {
	fc.t.Helper()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, b, err := fc.ws.Read(ctx)
		cancel()
		if err != nil {
			fc.t.Fatalf("server read: %v", err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			fc.t.Fatalf("client sent non-JSON %q", b)
		}
		typ, _ := m["type"].(string)
		if len(types) == 0 && (typ == "ping" || typ == "ack") {
			continue
		}
		if len(types) > 0 && !contains(types, typ) {
			continue
		}
		return m
	}
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

func (fc *fakeConn) send(v any) {
	fc.t.Helper()
	var b []byte
	switch x := v.(type) {
	case string:
		b = []byte(x)
	default:
		b, _ = json.Marshal(v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := fc.ws.Write(ctx, websocket.MessageText, b); err != nil {
		fc.t.Fatalf("server write: %v", err)
	}
}

func (fc *fakeConn) close() {
	select {
	case <-fc.done:
	default:
		fc.ws.CloseNow()
		close(fc.done)
	}
}

// acceptLogin reads the login frame and accepts it.
func (fc *fakeConn) acceptLogin(loginID string) map[string]any {
	fc.t.Helper()
	m := fc.read("login", "resume")
	fc.send(map[string]any{"type": "login_result", "id": m["id"], "code": 0, "login_id": loginID, "resumed": m["type"] == "resume"})
	return m
}

func event(epoch string, seq uint64, name, entry string) string {
	return fmt.Sprintf(`{"type":"event","epoch":%q,"seq":%d,"name":%q,"entry":%s}`, epoch, seq, name, entry)
}

func msgEntry(seq uint64, from, body string) string {
	return fmt.Sprintf(`{"seq":%d,"from":%q,"conversation_id":%q,"chat_type":"CHAT_TYPE_USER","source":{"kind":"KIND_MESSAGE_SEND","message":{"chat_type":"CHAT_TYPE_USER","to":"alice","body":%q}}}`,
		seq, from, from, body)
}

type dialResult struct {
	c   *Client
	err error
}

func dialAsync(cfg Config) chan dialResult {
	ch := make(chan dialResult, 1)
	go func() {
		c, err := Dial(context.Background(), cfg)
		ch <- dialResult{c, err}
	}()
	return ch
}

func baseConfig(url string) Config {
	return Config{URL: url, App: "demo", User: "alice", Password: "pw", Platform: 1, DeviceName: "Phone", Extension: "ext",
		AckInterval: 20 * time.Millisecond, ReconnectMin: 20 * time.Millisecond, ReconnectMax: 100 * time.Millisecond}
}

func mustDial(t *testing.T, fs *fakeServer, cfg Config, loginID string) (*Client, *fakeConn, map[string]any) {
	t.Helper()
	var c *Client
	// Registered first, so it runs after the server side is closed.
	t.Cleanup(func() {
		if c != nil {
			c.Close()
		}
	})
	ch := dialAsync(cfg)
	fc := fs.next(t)
	login := fc.acceptLogin(loginID)
	r := <-ch
	if r.err != nil {
		t.Fatalf("dial: %v", r.err)
	}
	c = r.c
	return c, fc, login
}

// eventLog collects what handlers saw, safely across goroutines.
type eventLog struct {
	mu  sync.Mutex
	got []string
	ch  chan string
}

func newEventLog() *eventLog { return &eventLog{ch: make(chan string, 100)} }

func (l *eventLog) add(s string) {
	l.mu.Lock()
	l.got = append(l.got, s)
	l.mu.Unlock()
	l.ch <- s
}

func (l *eventLog) wait(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case s := <-l.ch:
			if s == want {
				return
			}
		case <-timeout:
			t.Fatalf("no %q; saw %v", want, l.all())
		}
	}
}

func (l *eventLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.got...)
}

func TestLoginFrameAndGeneratedLoginID(t *testing.T) {
	fs := newFakeServer(t)
	cfg := baseConfig(fs.url())
	c, _, login := mustDial(t, fs, cfg, "gen-1")
	for k, want := range map[string]any{"type": "login", "app": "demo", "user": "alice", "password": "pw",
		"platform": float64(1), "device_name": "Phone", "extension": "ext"} {
		if login[k] != want {
			t.Errorf("login[%s] = %v, want %v", k, login[k], want)
		}
	}
	if _, ok := login["auto_login"]; ok {
		t.Errorf("a first login without a login ID is not an auto-login: %v", login)
	}
	if c.LoginID() != "gen-1" {
		t.Fatalf("LoginID %q", c.LoginID())
	}
}

func TestDialRefusedIsCodedError(t *testing.T) {
	fs := newFakeServer(t)
	cfg := baseConfig(fs.url())
	cfg.LoginID, cfg.AutoLogin = "A9", true
	ch := dialAsync(cfg)
	fc := fs.next(t)
	m := fc.read("login")
	if m["auto_login"] != true || m["login_id"] != "A9" {
		t.Fatalf("Dial with AutoLogin and a login ID is an auto-login: %v", m)
	}
	fc.send(map[string]any{"type": "login_result", "id": m["id"], "code": 214, "message": "too many devices"})
	r := <-ch
	var e *Error
	if !errors.As(r.err, &e) || e.Code != 214 || e.Message != "too many devices" {
		t.Fatalf("err %v", r.err)
	}
	// An error frame (bad credentials) is refused the same way.
	ch = dialAsync(baseConfig(fs.url()))
	fc = fs.next(t)
	fc.read("login")
	fc.send(`{"type":"error","code":1013,"message":"bad credentials"}`)
	if r := <-ch; CodeOf(r.err) != 1013 {
		t.Fatalf("err %v", r.err)
	}
	// Bad configuration never reaches the server.
	bad := baseConfig(fs.url())
	bad.Platform = 101
	if _, err := Dial(context.Background(), bad); CodeOf(err) != CodeInvalidArgument {
		t.Fatalf("platform 101: %v", err)
	}
}

func TestPipelinedRequestsMatchedByID(t *testing.T) {
	fs := newFakeServer(t)
	c, fc, _ := mustDial(t, fs, baseConfig(fs.url()), "A1")
	type res struct {
		r   Result
		err error
	}
	out := make([]chan res, 3)
	for i := range out {
		out[i] = make(chan res, 1)
		go func(i int) {
			r, err := c.Send(context.Background(), Message{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob", ClientMsgID: fmt.Sprintf("m%d", i), Body: []byte("hi")})
			out[i] <- res{r, err}
		}(i)
	}
	var frames []map[string]any
	for range out {
		frames = append(frames, fc.read("op"))
	}
	// Answer in reverse order; each answer names the message it decides.
	for i := len(frames) - 1; i >= 0; i-- {
		ev := frames[i]["event"].(map[string]any)
		msg := ev["message"].(map[string]any)
		if ev["kind"] != "KIND_MESSAGE_SEND" || ev["client_op_id"] != msg["client_msg_id"] || msg["to"] != "bob" || msg["body"] != "aGk=" {
			t.Fatalf("op frame %v", frames[i])
		}
		code := 0
		if msg["client_msg_id"] == "m1" {
			code = 1011
		}
		fc.send(map[string]any{"type": "result", "id": frames[i]["id"], "code": code, "message": "not a member",
			"message_id": "id-" + msg["client_msg_id"].(string), "offset": 7})
	}
	for i, ch := range out {
		r := <-ch
		if i == 1 {
			if CodeOf(r.err) != 1011 {
				t.Fatalf("m1: %v", r.err)
			}
			continue
		}
		if r.err != nil || r.r.MessageID != fmt.Sprintf("id-m%d", i) || r.r.Offset != 7 || r.r.ClientOpID != fmt.Sprintf("m%d", i) {
			t.Fatalf("m%d: %+v %v", i, r.r, r.err)
		}
	}

	// self_ids and history answers.
	idsC := make(chan []string, 1)
	go func() {
		ids, _ := c.SelfIdsOnOtherPlatform(context.Background())
		idsC <- ids
	}()
	m := fc.read("self_ids")
	fc.send(map[string]any{"type": "self_ids_result", "id": m["id"], "code": 0, "login_ids": []string{"A2", "A3"}})
	if ids := <-idsC; strings.Join(ids, ",") != "A2,A3" {
		t.Fatalf("self ids %v", ids)
	}
	histC := make(chan []*pb.TimelineEntry, 1)
	go func() {
		h, err := c.History(context.Background(), pb.ChatType_CHAT_TYPE_USER, "bob", 9, 2)
		if err != nil {
			t.Error(err)
		}
		histC <- h
	}()
	m = fc.read("history")
	if m["chat_type"] != "CHAT_TYPE_USER" || m["conversation_id"] != "bob" || m["before"] != float64(9) || m["limit"] != float64(2) {
		t.Fatalf("history frame %v", m)
	}
	fc.send(fmt.Sprintf(`{"type":"history_result","id":%q,"code":0,"entries":[%s,%s]}`, m["id"], msgEntry(8, "bob", "Yg=="), msgEntry(5, "bob", "YQ==")))
	if h := <-histC; len(h) != 2 || h[0].Seq != 8 || string(h[1].GetSource().GetMessage().GetBody()) != "a" {
		t.Fatalf("history %v", h)
	}
	if _, err := c.History(context.Background(), pb.ChatType_CHAT_TYPE_USER, "bob", 0, 101); CodeOf(err) != CodeInvalidArgument {
		t.Fatalf("limit 101: %v", err)
	}
	if _, err := c.Send(context.Background(), Message{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob", Body: make([]byte, MaxFrameBytes)}); CodeOf(err) != CodeTooLarge {
		t.Fatalf("oversize: %v", err)
	}
}

func TestSnapshotDedupAndAck(t *testing.T) {
	fs := newFakeServer(t)
	log := newEventLog()
	cfg := baseConfig(fs.url())
	var snap Snapshot
	cfg.Handlers.OnSnapshot = func(s Snapshot) { snap = s; log.add("snapshot") }
	cfg.Handlers.OnEvent = func(e Event) { log.add(fmt.Sprintf("%s/%d", e.Epoch, e.Seq)) }
	c, fc, _ := mustDial(t, fs, cfg, "A1")
	fc.send(`{"type":"snapshot","resync":false,"epoch":"e1","seq":10,"contacts":{"friends":["bob"]},"groups":{"groups":["g1"]},"conversations":[{"chat_type":"CHAT_TYPE_USER","conversation_id":"bob","pinned":true}]}`)
	for _, seq := range []uint64{9, 10, 11, 12, 12, 11, 14} {
		fc.send(event("e1", seq, "message_send", msgEntry(seq, "bob", "aGk=")))
	}
	fc.send(event("e2", 1, "message_send", msgEntry(1, "bob", "aGk="))) // a new epoch starts over
	log.wait(t, "e2/1")
	if got := strings.Join(log.all(), " "); got != "snapshot e1/11 e1/12 e1/14 e2/1" {
		t.Fatalf("delivered %s", got)
	}
	if c.Duplicates() != 4 {
		t.Fatalf("duplicates %d, want 4", c.Duplicates())
	}
	if len(snap.Contacts.GetFriends()) != 1 || snap.Groups.GetGroups()[0] != "g1" || !snap.Conversations[0].GetPinned() {
		t.Fatalf("snapshot %+v", snap)
	}
	// Acks are batched: the last one names the newest position.
	deadline := time.After(5 * time.Second)
	for {
		select {
		case <-deadline:
			t.Fatal("no ack of e2/1")
		default:
		}
		m := fc.read("ack")
		if m["epoch"] == "e2" && m["seq"] == float64(1) {
			break
		}
	}
}

func TestRoutingToHandlers(t *testing.T) {
	fs := newFakeServer(t)
	log := newEventLog()
	cfg := baseConfig(fs.url())
	h := &cfg.Handlers
	h.OnMessage = func(e Event) { log.add("message " + e.Name) }
	h.OnReceipt = func(e Event) { log.add("receipt") }
	h.OnConversationEvent = func(e MultiDeviceEvent) { log.add("conversation " + e.Name + " " + e.Target) }
	h.OnRemoteMessagesRemoved = func(e MultiDeviceEvent) { log.add("removed " + e.Target) }
	h.OnGroupEvent = func(e MultiDeviceEvent) { log.add("group " + e.Target) }
	h.OnContactEvent = func(e MultiDeviceEvent) { log.add("contact " + e.Target) }
	h.OnChatThreadEvent = func(e MultiDeviceEvent) { log.add("thread " + e.Target) }
	_, fc, _ := mustDial(t, fs, cfg, "A1")
	fc.send(event("e", 1, "message_send", msgEntry(1, "bob", "aGk=")))
	fc.send(event("e", 2, "read_receipt", `{"source":{"kind":"KIND_READ_RECEIPT","receipt":{"chat_type":"CHAT_TYPE_USER","conversation_id":"bob","message_id":"x"}}}`))
	fc.send(event("e", 3, "pinnedConversation", `{"from":"alice","multi_device":true,"source":{"kind":"KIND_CONVERSATION_PIN","conversation":{"chat_type":"CHAT_TYPE_USER","conversation_id":"bob"}}}`))
	fc.send(event("e", 4, "deleteRoaming", `{"from":"alice","multi_device":true,"source":{"kind":"KIND_REMOTE_MESSAGES_REMOVE","conversation":{"chat_type":"CHAT_TYPE_USER","conversation_id":"bob"}}}`))
	// A group operation by someone else is not a multi-device event.
	fc.send(event("e", 5, "inviteToJoin", `{"from":"carol","source":{"kind":"KIND_GROUP_INVITE","group":{"group_id":"g0","users":["alice"]}}}`))
	fc.send(event("e", 6, "create", `{"from":"alice","multi_device":true,"source":{"kind":"KIND_GROUP_CREATE","group":{"group_id":"g1"}}}`))
	fc.send(event("e", 7, "onContactAgreed", `{"from":"alice","multi_device":true,"source":{"kind":"KIND_CONTACT_ACCEPT","contact":{"user":"dave"}}}`))
	fc.send(event("e", 8, "chatThreadCreate", `{"from":"alice","multi_device":true,"source":{"kind":"KIND_THREAD_CREATE","thread":{"thread_id":"t1","group_id":"g1"}}}`))
	log.wait(t, "thread t1")
	want := "message message_send|receipt|conversation pinnedConversation bob|removed bob|group g1|contact dave|thread t1"
	if got := strings.Join(log.all(), "|"); got != want {
		t.Fatalf("routed\n %s\nwant\n %s", got, want)
	}
}

func TestReconnectResumesAndResendsPending(t *testing.T) {
	fs := newFakeServer(t)
	log := newEventLog()
	cfg := baseConfig(fs.url())
	cfg.AutoLogin = true
	cfg.Handlers.OnEvent = func(e Event) { log.add(fmt.Sprint(e.Seq)) }
	cfg.Handlers.OnDisconnected = func(err error) { log.add("disconnected") }
	cfg.Handlers.OnReconnected = func() { log.add("reconnected") }
	c, fc, _ := mustDial(t, fs, cfg, "A1")
	for seq := uint64(1); seq <= 3; seq++ {
		fc.send(event("e1", seq, "message_send", msgEntry(seq, "bob", "aGk=")))
	}
	log.wait(t, "3")
	for {
		if m := fc.read("ack"); m["seq"] == float64(3) {
			break
		}
	}
	// A request in flight when the connection drops is resent after the
	// reconnect with the same client_op_id.
	sent := make(chan error, 1)
	go func() {
		_, err := c.Send(context.Background(), Message{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob", ClientMsgID: "m-1", Body: []byte("x")})
		sent <- err
	}()
	if m := fc.read("op"); m["event"].(map[string]any)["client_op_id"] != "m-1" {
		t.Fatalf("op %v", m)
	}
	fc.close()
	log.wait(t, "disconnected")

	fc2 := fs.next(t)
	m := fc2.read("resume", "login")
	if m["type"] != "resume" || m["login_id"] != "A1" || m["epoch"] != "e1" || m["seq"] != float64(3) || m["password"] != "pw" {
		t.Fatalf("resume frame %v", m)
	}
	fc2.send(map[string]any{"type": "login_result", "id": m["id"], "code": 0, "login_id": "A1", "resumed": true})
	op := fc2.read("op")
	if op["event"].(map[string]any)["client_op_id"] != "m-1" {
		t.Fatalf("resent op %v", op)
	}
	fc2.send(map[string]any{"type": "result", "id": op["id"], "code": 0, "message_id": "M1"})
	if err := <-sent; err != nil {
		t.Fatalf("send across reconnect: %v", err)
	}
	fc2.send(event("e1", 3, "message_send", msgEntry(3, "bob", "aGk="))) // resent: dropped
	fc2.send(event("e1", 4, "message_send", msgEntry(4, "bob", "aGk=")))
	log.wait(t, "4")
	if got := strings.Join(log.all(), " "); got != "1 2 3 disconnected reconnected 4" {
		t.Fatalf("saw %s", got)
	}
}

func TestResumeUnknownSessionAutoLoginRefused(t *testing.T) {
	fs := newFakeServer(t)
	log := newEventLog()
	cfg := baseConfig(fs.url())
	cfg.AutoLogin = true
	cfg.Handlers.OnDisconnected = func(err error) { log.add(fmt.Sprintf("disconnected %d", CodeOf(err))) }
	c, fc, _ := mustDial(t, fs, cfg, "A1")
	fc.send(`{"type":"error","code":1017,"message":"idle"}`)
	fc.close()
	log.wait(t, "disconnected 1017")
	fc2 := fs.next(t)
	m := fc2.read("resume")
	fc2.send(map[string]any{"type": "login_result", "id": m["id"], "code": 1005, "message": "no such session"})
	fc2.close()
	fc3 := fs.next(t)
	m = fc3.read("login")
	if m["auto_login"] != true || m["login_id"] != "A1" {
		t.Fatalf("auto-login frame %v", m)
	}
	fc3.send(map[string]any{"type": "login_result", "id": m["id"], "code": 214, "message": "too many devices"})
	fc3.close()
	log.wait(t, "disconnected 214")
	if _, err := c.Send(context.Background(), Message{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob"}); CodeOf(err) != 214 {
		t.Fatalf("send after 214: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	if n := fs.accepted.Load(); n != 3 {
		t.Fatalf("%d connections; a 214 must stop reconnecting", n)
	}
}

func TestKickedStopsReconnect(t *testing.T) {
	fs := newFakeServer(t)
	got := make(chan Kicked, 1)
	cfg := baseConfig(fs.url())
	cfg.AutoLogin = true
	cfg.Handlers.OnUserDidLoginFromOtherDevice = func(k Kicked) { got <- k }
	c, fc, _ := mustDial(t, fs, cfg, "A1")
	fc.send(`{"type":"kicked","code":206,"reason":"REASON_LOGIN_OTHER_DEVICE","by_login_id":"A5","by_device_name":"iPhone 15","by_extension":"{\"os\":\"ios\"}"}`)
	fc.close()
	select {
	case k := <-got:
		if k.Code != 206 || k.ByLoginID != "A5" || k.ByDeviceName != "iPhone 15" || k.ByExtension != `{"os":"ios"}` {
			t.Fatalf("kicked %+v", k)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no OnUserDidLoginFromOtherDevice")
	}
	if _, err := c.Send(context.Background(), Message{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob"}); CodeOf(err) != 206 {
		t.Fatalf("send after kick: %v", err)
	}
	time.Sleep(300 * time.Millisecond) // several backoff periods
	if n := fs.accepted.Load(); n != 1 {
		t.Fatalf("%d connections: a kicked device logged itself back in", n)
	}
}

func TestKickedWhileAway(t *testing.T) {
	fs := newFakeServer(t)
	got := make(chan Kicked, 1)
	cfg := baseConfig(fs.url())
	cfg.AutoLogin = true
	cfg.Handlers.OnUserKickedByOtherDevice = func(k Kicked) { got <- k }
	_, fc, _ := mustDial(t, fs, cfg, "A1")
	fc.close()
	fc2 := fs.next(t)
	m := fc2.read("resume")
	fc2.send(map[string]any{"type": "login_result", "id": m["id"], "code": 217, "message": "kicked"})
	fc2.close()
	select {
	case k := <-got:
		if k.Code != 217 {
			t.Fatalf("kicked %+v", k)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no OnUserKickedByOtherDevice for a session ended while away")
	}
	time.Sleep(300 * time.Millisecond)
	if n := fs.accepted.Load(); n != 2 {
		t.Fatalf("%d connections after a kick learned on resume", n)
	}
}

func TestDropWithoutAutoLoginStops(t *testing.T) {
	fs := newFakeServer(t)
	c, fc, _ := mustDial(t, fs, baseConfig(fs.url()), "A1")
	fc.close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ping after a drop without auto-login: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(context.Background(), Message{}); err == nil {
		t.Fatal("send after Close")
	}
}

func TestCloseSendsFinalAck(t *testing.T) {
	fs := newFakeServer(t)
	log := newEventLog()
	cfg := baseConfig(fs.url())
	cfg.AckInterval = time.Hour // only Close sends it
	var c *Client
	cfg.Handlers.OnEvent = func(e Event) {
		c.Ack(e.Epoch, e.Seq) // the automatic ack follows the handler: make it visible now
		log.add(fmt.Sprint(e.Seq))
	}
	c, fc, _ := mustDial(t, fs, cfg, "A1")
	fc.send(event("e1", 5, "message_send", msgEntry(5, "bob", "aGk=")))
	log.wait(t, "5")
	done := make(chan struct{})
	go func() { c.Close(); close(done) }()
	if m := fc.read("ack"); m["epoch"] != "e1" || m["seq"] != float64(5) {
		t.Fatalf("final ack %v", m)
	}
	fc.close()
	<-done
}

// An events frame is its event frames, dispatched in order exactly as if
// each had come alone: the same handlers, the same dedup, acks up to its
// last event, and the resume after a drop continues from there. Login and
// resume ask for batches.
func TestEventsFrameDispatchedAsSingleFrames(t *testing.T) {
	fs := newFakeServer(t)
	log := newEventLog()
	cfg := baseConfig(fs.url())
	cfg.AutoLogin = true
	h := &cfg.Handlers
	h.OnEvent = func(e Event) { log.add(fmt.Sprintf("%s/%d", e.Epoch, e.Seq)) }
	h.OnMessage = func(e Event) { log.add("message " + string(e.Entry.GetSource().GetMessage().GetBody())) }
	h.OnConversationEvent = func(e MultiDeviceEvent) { log.add("conversation " + e.Target) }
	h.OnDisconnected = func(error) { log.add("disconnected") }
	c, fc, login := mustDial(t, fs, cfg, "A1")
	if login["batch"] != true {
		t.Fatalf("login without batch: %v", login)
	}
	batch := func(frames ...string) string {
		return `{"type":"events","events":[` + strings.Join(frames, ",") + `]}`
	}
	pin := `{"from":"alice","multi_device":true,"source":{"kind":"KIND_CONVERSATION_PIN","conversation":{"chat_type":"CHAT_TYPE_USER","conversation_id":"bob"}}}`
	fc.send(batch(
		event("e1", 1, "message_send", msgEntry(1, "bob", "b25l")),
		event("e1", 2, "message_send", msgEntry(2, "bob", "dHdv")),
		event("e1", 2, "message_send", msgEntry(2, "bob", "dHdv")), // a duplicate inside a batch
		event("e1", 3, "pinnedConversation", pin)))
	fc.send(event("e1", 4, "message_send", msgEntry(4, "bob", "Zm91cg==")))
	fc.send(batch(
		event("e1", 3, "pinnedConversation", pin), // already seen
		event("e1", 5, "message_send", msgEntry(5, "bob", "Zml2ZQ=="))))
	log.wait(t, "message five")
	want := "e1/1|message one|e1/2|message two|e1/3|conversation bob|e1/4|message four|e1/5|message five"
	if got := strings.Join(log.all(), "|"); got != want {
		t.Fatalf("dispatched\n %s\nwant\n %s", got, want)
	}
	if c.Duplicates() != 2 {
		t.Fatalf("duplicates %d, want 2", c.Duplicates())
	}
	for {
		if m := fc.read("ack"); m["epoch"] == "e1" && m["seq"] == float64(5) {
			break
		}
	}
	fc.close()
	log.wait(t, "disconnected")
	fc2 := fs.next(t)
	m := fc2.read("resume", "login")
	if m["type"] != "resume" || m["epoch"] != "e1" || m["seq"] != float64(5) || m["batch"] != true {
		t.Fatalf("resume frame %v", m)
	}
}

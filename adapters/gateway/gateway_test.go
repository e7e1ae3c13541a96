package gateway_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/mdsync/mdsync/adapters/gateway"
	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"
)

// fakeAuth accepts password "pw"; "locked" is rate limited.
type fakeAuth struct{}

func (fakeAuth) Authenticate(app, user, password, token, remote string) error {
	switch password {
	case "pw":
		return nil
	case "locked":
		return engine.Errorf(engine.CodeRateLimited, "too many failures")
	}
	return engine.Errorf(engine.CodeUnauthenticated, "bad password")
}

type env struct {
	n   *node.Node
	g   *gateway.Gateway
	reg *prometheus.Registry
	url string
}

// newEnv runs a real node (embedded log on a temp dir) with its OnApplied
// hook wired straight to the gateway, served on 127.0.0.1.
func newEnv(t *testing.T, mod func(*gateway.Options)) *env {
	t.Helper()
	return newEnvListener(t, mod, nil)
}

// newEnvListener is newEnv with the server's listener wrapped.
func newEnvListener(t *testing.T, mod func(*gateway.Options), wrap func(net.Listener) net.Listener) *env {
	t.Helper()
	return newEnvHooks(t, mod, envHooks{listener: wrap})
}

// newEnvHooks is newEnv with the effect path, the engine or the listener
// changed (envHooks).
func newEnvHooks(t *testing.T, mod func(*gateway.Options), h envHooks) *env {
	t.Helper()
	var gp atomic.Pointer[gateway.Gateway]
	n, err := node.New(context.Background(), node.Options{Dir: t.TempDir(), Partitions: 4, MaxPending: h.maxPending, MaxPendingAge: h.maxPendingAge,
		OnApplied: func(p int32, a projections.Applied) {
			g := gp.Load()
			if g == nil {
				return
			}
			for _, d := range a.Decisions {
				for _, e := range d.Ended {
					if !h.dropEnded {
						g.End(d.App, e)
					}
				}
			}
			for _, e := range a.Entries {
				if !h.dropDeliver {
					g.Deliver(e.App, e.User, e.Entry)
				}
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	var eng gateway.Submitter = n.Engine
	if h.engine != nil {
		eng = h.engine(n, eng)
	}
	var store gateway.Store = n.Store
	if h.store != nil {
		store = h.store(store)
	}
	reg := prometheus.NewRegistry()
	o := gateway.Options{Auth: fakeAuth{}, Engine: eng, Store: store, Registerer: reg,
		HeartbeatTimeout: 20 * time.Second, WriteTimeout: 5 * time.Second}
	if mod != nil {
		mod(&o)
	}
	g, err := gateway.New(o)
	if err != nil {
		t.Fatal(err)
	}
	gp.Store(g)
	srv := httptest.NewUnstartedServer(g)
	if h.listener != nil {
		srv.Listener = h.listener(srv.Listener)
	}
	srv.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := g.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		srv.Close()
		n.Close()
	})
	return &env{n: n, g: g, reg: reg, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
}

// sframe is any server frame.
type sframe struct {
	Type          string            `json:"type"`
	ID            string            `json:"id"`
	Code          int32             `json:"code"`
	Message       string            `json:"message"`
	LoginID       string            `json:"login_id"`
	Reconnect     bool              `json:"reconnect"`
	Resumed       bool              `json:"resumed"`
	PolicyVersion uint64            `json:"policy_version"`
	Resync        bool              `json:"resync"`
	Epoch         string            `json:"epoch"`
	Seq           uint64            `json:"seq"`
	Name          string            `json:"name"`
	Entry         json.RawMessage   `json:"entry"`
	Reason        string            `json:"reason"`
	ByLoginID     string            `json:"by_login_id"`
	ByDeviceName  string            `json:"by_device_name"`
	ByExtension   string            `json:"by_extension"`
	LoginIDs      []string          `json:"login_ids"`
	Entries       []json.RawMessage `json:"entries"`
	EventID       string            `json:"event_id"`
	MessageID     string            `json:"message_id"`
	Conversations []json.RawMessage `json:"conversations"`
	Addr          string            `json:"addr"`
	Partition     int32             `json:"partition"`
	Offset        int64             `json:"offset"`
	RetryAfterMs  int64             `json:"retry_after_ms"`
	Events        []json.RawMessage `json:"events"`

	at    time.Time // when the client read it
	batch int       // an event of an events frame: the frame's number (from 1) on this connection
}

func (f sframe) entry(t *testing.T) *pb.TimelineEntry {
	t.Helper()
	e := &pb.TimelineEntry{}
	if err := (protojsonUnmarshal(f.Entry, e)); err != nil {
		t.Fatalf("entry: %v", err)
	}
	return e
}

// client is a minimal test-only frame client: a goroutine reads frames
// into a channel; hold gate to stop reading the socket.
type client struct {
	t      *testing.T
	ws     *websocket.Conn
	frames chan sframe
	done   chan struct{}
	err    error // the read error that ended the client, after done
	gate   sync.Mutex
	// batches counts the events frames read; each is unpacked into its
	// event frames, in order, as a device that asked for batches does.
	batches atomic.Int64
}

func dial(t *testing.T, e *env) *client {
	t.Helper()
	return dialWith(t, e, nil)
}

func dialWith(t *testing.T, e *env, hc *http.Client) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, e.url, &websocket.DialOptions{HTTPClient: hc, Subprotocols: []string{gateway.Subprotocol}})
	if err != nil {
		t.Fatal(err)
	}
	ws.SetReadLimit(16 << 20)
	c := &client{t: t, ws: ws, frames: make(chan sframe, 100_000), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			c.gate.Lock()
			c.gate.Unlock()
			_, b, err := ws.Read(context.Background())
			if err != nil {
				c.err = err
				return
			}
			var f sframe
			if err := json.Unmarshal(b, &f); err != nil {
				c.err = fmt.Errorf("bad frame %s: %w", b, err)
				return
			}
			f.at = time.Now()
			if f.Type != "events" {
				c.frames <- f
				continue
			}
			n := int(c.batches.Add(1))
			for _, raw := range f.Events {
				ev := sframe{at: f.at, batch: n}
				if err := json.Unmarshal(raw, &ev); err != nil || ev.Type != "event" {
					c.err = fmt.Errorf("bad element %s of an events frame: %v", raw, err)
					return
				}
				c.frames <- ev
			}
		}
	}()
	t.Cleanup(func() { ws.CloseNow() })
	return c
}

func (c *client) send(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendRaw(b)
}

func (c *client) sendRaw(b []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, b); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// next returns the next frame, failing after 5s.
func (c *client) next() sframe {
	c.t.Helper()
	select {
	case f := <-c.frames:
		return f
	case <-c.done:
		select {
		case f := <-c.frames:
			return f
		default:
		}
		c.t.Fatalf("connection ended: %v", c.err)
	case <-time.After(5 * time.Second):
		c.t.Fatal("no frame within 5s")
	}
	return sframe{}
}

func (c *client) expect(typ string) sframe {
	c.t.Helper()
	f := c.next()
	if f.Type != typ {
		c.t.Fatalf("got %s frame %+v, want %s", f.Type, f, typ)
	}
	return f
}

// closed waits for the server to close the connection and returns its
// close status.
func (c *client) closed() websocket.StatusCode {
	c.t.Helper()
	select {
	case <-c.done:
		return websocket.CloseStatus(c.err)
	case <-time.After(5 * time.Second):
		c.t.Fatal("connection still open after 5s")
	}
	return 0
}

type loginFrame struct {
	Type       string `json:"type"`
	ID         string `json:"id"`
	App        string `json:"app"`
	User       string `json:"user"`
	Password   string `json:"password"`
	LoginID    string `json:"login_id,omitempty"`
	Platform   int32  `json:"platform,omitempty"`
	DeviceName string `json:"device_name,omitempty"`
	Extension  string `json:"extension,omitempty"`
	AutoLogin  bool   `json:"auto_login,omitempty"`
	Epoch      string `json:"epoch,omitempty"`
	Seq        uint64 `json:"seq,omitempty"`
	Batch      bool   `json:"batch,omitempty"`
}

// login connects a device and returns it after its login_result (code 0).
func login(t *testing.T, e *env, user, loginID string, platform int32) (*client, sframe) {
	t.Helper()
	c := dial(t, e)
	c.send(loginFrame{Type: "login", ID: "l", App: "app", User: user, Password: "pw", LoginID: loginID,
		Platform: platform, DeviceName: "name-" + loginID, Extension: "ext-" + loginID})
	r := c.expect("login_result")
	if r.Code != 0 || r.ID != "l" {
		t.Fatalf("login %s/%s: %+v", user, loginID, r)
	}
	return c, r
}

func (c *client) op(id string, ev string) sframe {
	c.t.Helper()
	c.sendRaw([]byte(`{"type":"op","id":"` + id + `","event":` + ev + `}`))
	for {
		f := c.next()
		if f.Type == "result" && f.ID == id {
			return f
		}
		if f.Type != "event" {
			c.t.Fatalf("waiting for result %s: got %+v", id, f)
		}
	}
}

func msgJSON(to, id, body string) string {
	return fmt.Sprintf(`{"kind":"KIND_MESSAGE_SEND","client_op_id":%q,"message":{"chat_type":"CHAT_TYPE_USER","to":%q,"client_msg_id":%q,"content_type":"text/plain","body":%q}}`,
		id, to, id, b64(body))
}

func logEnds(t *testing.T, n *node.Node) []int64 {
	t.Helper()
	out := make([]int64, n.Log.Partitions())
	for p := range out {
		e, err := n.Log.End(context.Background(), int32(p))
		if err != nil {
			t.Fatal(err)
		}
		out[p] = e
	}
	return out
}

func submit(t *testing.T, n *node.Node, ev *pb.Event) *pb.Decision {
	t.Helper()
	d, err := n.Engine.Submit(context.Background(), ev)
	if err != nil {
		t.Fatalf("%s: %v", engine.KindName(ev.Kind), err)
	}
	return d
}

func metric(t *testing.T, e *env, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.Metric {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.Label {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The seeds: a 5th login on platform 1 evicts the earliest login, which is
// told who took its slot (206 with the new device's name and extension)
// and then closed.
func TestFifthLoginEvictsEarliest(t *testing.T) {
	e := newEnv(t, nil)
	var cs []*client
	for i := 1; i <= 4; i++ {
		c, _ := login(t, e, "alice", fmt.Sprint("D", i), 1)
		c.expect("snapshot")
		cs = append(cs, c)
	}
	c5, r := login(t, e, "alice", "D5", 1)
	if r.LoginID != "D5" || r.Reconnect {
		t.Fatalf("5th login: %+v", r)
	}
	k := cs[0].expect("kicked")
	if k.Code != 206 || k.Reason != "REASON_LOGIN_OTHER_DEVICE" || k.ByLoginID != "D5" || k.ByDeviceName != "name-D5" || k.ByExtension != "ext-D5" {
		t.Fatalf("kicked: %+v", k)
	}
	if st := cs[0].closed(); st != 4000 {
		t.Fatalf("evicted device closed with %d, want 4000", st)
	}
	c5.expect("snapshot")
	// The others stay: a ping still answers.
	for _, c := range append(cs[1:], c5) {
		c.send(map[string]string{"type": "ping", "id": "p"})
		if f := c.expect("pong"); f.ID != "p" {
			t.Fatalf("pong: %+v", f)
		}
	}
	eventually(t, "disconnects{206} = 1", func() bool { return metric(t, e, "mdsync_gateway_disconnects_total", "code", "206") == 1 })
	eventually(t, "connected gauge", func() bool { return metric(t, e, "mdsync_connected_devices", "platform", "1") == 4 })
	if _, _, on := e.g.DeviceInfo("app", "alice", "D1"); on {
		t.Fatal("evicted device still connected")
	}
	if seen, addr, on := e.g.DeviceInfo("app", "alice", "D2"); !on || !strings.HasPrefix(addr, "127.0.0.1:") || seen.IsZero() {
		t.Fatalf("DeviceInfo(D2) = %v %q %v", seen, addr, on)
	}
	if !e.g.Connected("app", "alice") || e.g.Connected("app", "bob") {
		t.Fatal("Connected is wrong")
	}
}

// Under KEEP_CURRENT, an auto-login at the limit is refused with 214 and
// the connection closed; nobody is evicted.
func TestKeepCurrentAutoLoginRefused(t *testing.T) {
	e := newEnv(t, nil)
	submit(t, e.n, &pb.Event{App: "app", ClientOpId: "pol-1", Kind: pb.Kind_KIND_POLICY_SET, Actor: &pb.Actor{User: "admin", Admin: true},
		Payload: &pb.Event_PolicySet{PolicySet: &pb.PolicySet{Mode: pb.PlatformMode_PLATFORM_MODE_MULTI, DefaultLimit: 4,
			AutoLogin: pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KEEP_CURRENT}}})
	var cs []*client
	for i := 1; i <= 4; i++ {
		c, r := login(t, e, "alice", fmt.Sprint("D", i), 1)
		if r.PolicyVersion != 1 {
			t.Fatalf("policy_version %d", r.PolicyVersion)
		}
		cs = append(cs, c)
	}
	c := dial(t, e)
	c.send(loginFrame{Type: "login", ID: "x", App: "app", User: "alice", Password: "pw", LoginID: "D5", Platform: 1, AutoLogin: true})
	r := c.expect("login_result")
	if r.Code != 214 || r.ID != "x" {
		t.Fatalf("auto-login at the limit: %+v", r)
	}
	if st := c.closed(); st != 4000 {
		t.Fatalf("refused login closed with %d", st)
	}
	for _, c := range cs {
		c.expect("snapshot")
		c.send(map[string]string{"type": "ping"})
		c.expect("pong")
	}
	ss, _ := e.n.Store.Devices("app", "alice")
	if len(ss) != 4 {
		t.Fatalf("%d sessions after the refused login", len(ss))
	}
	if got := metric(t, e, "mdsync_gateway_logins_total", "code", "214"); got != 1 {
		t.Fatalf("logins{214} = %v", got)
	}
}

// Bad credentials are answered by login_result 1013 (1014 when locked).
func TestBadCredentials(t *testing.T) {
	e := newEnv(t, nil)
	for pw, want := range map[string]int32{"nope": 1013, "locked": 1014} {
		c := dial(t, e)
		c.send(loginFrame{Type: "login", ID: "1", App: "app", User: "alice", Password: pw, Platform: 1})
		if r := c.expect("login_result"); r.Code != want {
			t.Fatalf("password %q: %+v", pw, r)
		}
		c.closed()
	}
	// A first frame that is not a login.
	c := dial(t, e)
	c.send(map[string]string{"type": "ping", "id": "p"})
	if f := c.expect("error"); f.Code != 1013 {
		t.Fatalf("ping first: %+v", f)
	}
	c.closed()
}

// follower reads a device's events and checks them as they come: seqs
// strictly increasing, never repeated.
type follower struct {
	t      *testing.T
	c      *client
	epoch  string
	seq    uint64
	bodies []string
	snaps  int
}

func (f *follower) take(fr sframe) {
	f.t.Helper()
	switch fr.Type {
	case "snapshot":
		f.snaps++
		f.epoch, f.seq = fr.Epoch, fr.Seq
	case "event":
		if fr.Seq <= f.seq {
			f.t.Fatalf("event seq %d after %d: duplicate or out of order", fr.Seq, f.seq)
		}
		f.epoch, f.seq = fr.Epoch, fr.Seq
		e := fr.entry(f.t)
		if m := e.GetSource().GetMessage(); m != nil {
			f.bodies = append(f.bodies, string(m.Body))
		}
	default:
		f.t.Fatalf("unexpected frame %+v", fr)
	}
}

// The first login gets a snapshot, then live events. An offline device
// reconnects (by login with its login ID, or by resume) while messages keep
// arriving, and receives every missed and new message once, in order.
func TestCatchUpThenLiveWithoutGapOrDuplicate(t *testing.T) {
	for _, how := range []string{"login", "resume", "login+batch", "resume+batch"} {
		batch := strings.HasSuffix(how, "+batch")
		how := strings.TrimSuffix(how, "+batch")
		t.Run(fmt.Sprint(how, "/batch=", batch), func(t *testing.T) {
			e := newEnv(t, nil)
			a, _ := login(t, e, "alice", "A1", 1)
			snap := a.expect("snapshot")
			if snap.Seq != 0 || snap.Resync {
				t.Fatalf("first snapshot: %+v", snap)
			}
			b, _ := login(t, e, "bob", "B1", 2)
			b.expect("snapshot")
			fa := &follower{t: t, c: a}
			fa.take(snap)

			var sent []string
			var sentMu sync.Mutex
			send := func(i int) {
				body := fmt.Sprint("m", i)
				if r := b.op(fmt.Sprint("op", i), msgJSON("alice", fmt.Sprint("m-", i), body)); r.Code != 0 {
					t.Errorf("send %d: %+v", i, r)
				}
				sentMu.Lock()
				sent = append(sent, body)
				sentMu.Unlock()
			}
			// Live.
			for i := 0; i < 3; i++ {
				send(i)
				ev := a.expect("event")
				if ev.Name != "message_send" {
					t.Fatalf("event name %q", ev.Name)
				}
				fa.take(ev)
			}
			// Ack and go offline.
			a.send(map[string]any{"type": "ack", "epoch": fa.epoch, "seq": fa.seq})
			eventually(t, "cursor", func() bool {
				_, seq, ok, _ := e.n.Store.Cursor("app", "alice", "A1")
				return ok && seq == fa.seq
			})
			a.ws.Close(websocket.StatusNormalClosure, "")
			<-a.done
			for i := 3; i < 8; i++ {
				send(i) // missed while offline
			}
			// Keep sending while the device comes back.
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 8; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					send(i)
					if i >= 40 {
						return
					}
				}
			}()
			a2 := dial(t, e)
			if how == "login" {
				a2.send(loginFrame{Type: "login", ID: "l2", App: "app", User: "alice", Password: "pw", LoginID: "A1", Platform: 1, Batch: batch})
				if r := a2.expect("login_result"); r.Code != 0 || !r.Reconnect {
					t.Fatalf("reconnect: %+v", r)
				}
			} else {
				a2.send(loginFrame{Type: "resume", ID: "r", App: "app", User: "alice", Password: "pw", LoginID: "A1", Epoch: fa.epoch, Seq: fa.seq, Batch: batch})
				if r := a2.expect("login_result"); r.Code != 0 || !r.Resumed {
					t.Fatalf("resume: %+v", r)
				}
			}
			fa.c = a2
			wg.Wait()
			close(stop)
			sentMu.Lock()
			want := append([]string(nil), sent...)
			sentMu.Unlock()
			for len(fa.bodies) < len(want) {
				fa.take(a2.next())
			}
			if fa.snaps != 1 {
				t.Fatalf("%d snapshots: a device with a position must not get one", fa.snaps)
			}
			if fmt.Sprint(fa.bodies) != fmt.Sprint(want) {
				t.Fatalf("received %v\nwant     %v", fa.bodies, want)
			}
			select {
			case f := <-a2.frames:
				t.Fatalf("extra frame %+v", f)
			case <-time.After(100 * time.Millisecond):
			}
			if metric(t, e, "mdsync_catchup_events") < 3 {
				t.Fatal("catch-up not observed")
			}
			if !batch && a2.batches.Load() != 0 {
				t.Fatalf("%d events frames to a device that did not ask for them", a2.batches.Load())
			}
		})
	}
}

func protojsonUnmarshal(b []byte, m *pb.TimelineEntry) error { return protojson.Unmarshal(b, m) }

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

var _ = errors.New

package gateway_test

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/mdsync/mdsync/adapters/clientaddr"
	"github.com/mdsync/mdsync/adapters/gateway"
	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// remoteAuth is fakeAuth that records the remote address of each check.
type remoteAuth struct {
	mu      sync.Mutex
	remotes []string
}

func (a *remoteAuth) Authenticate(app, user, password, token, remote string) error {
	a.mu.Lock()
	a.remotes = append(a.remotes, remote)
	a.mu.Unlock()
	return fakeAuth{}.Authenticate(app, user, password, token, remote)
}

// loginFrom logs a device in with an X-Forwarded-For header.
func loginFrom(t *testing.T, e *env, xff, user, loginID string) *client {
	t.Helper()
	hc := &http.Client{Transport: headerTransport{"X-Forwarded-For", xff}}
	c := dialWith(t, e, hc)
	c.send(loginFrame{Type: "login", ID: "l", App: "app", User: user, Password: "pw", LoginID: loginID, Platform: 1})
	if r := c.expect("login_result"); r.Code != 0 {
		t.Fatalf("login: %+v", r)
	}
	c.expect("snapshot")
	return c
}

type headerTransport struct{ k, v string }

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(h.k, h.v)
	return http.DefaultTransport.RoundTrip(r)
}

func presenceOf(t *testing.T, e *env, user, loginID string) *pb.Presence {
	t.Helper()
	ps, err := e.n.Store.Presence("app", user)
	if err != nil {
		t.Fatal(err)
	}
	return ps[loginID]
}

// A gateway with a Process records a connection in the log when the device
// attaches and when the connection ends — with the client address a
// trusted proxy forwarded, the process and the last frame — and the record
// is forgotten when the session ends.
func TestPresenceRecordedInTheLog(t *testing.T) {
	proxies, err := clientaddr.Parse("127.0.0.1/32") // the test's own peer is the proxy
	if err != nil {
		t.Fatal(err)
	}
	auth := &remoteAuth{}
	e := newEnv(t, func(o *gateway.Options) {
		o.Process, o.Incarnation, o.ClientAddr, o.Auth = "gw1:7000", "run1", proxies.Addr, auth
	})
	c := loginFrom(t, e, "203.0.113.9, 198.51.100.7", "alice", "a1")
	var p *pb.Presence
	eventually(t, "connect recorded", func() bool { p = presenceOf(t, e, "alice", "a1"); return p.GetConnected() })
	if p.RemoteAddr != "198.51.100.7" || p.Process != "gw1:7000" || p.Incarnation != "run1" || p.ConnectedUnixMs == 0 || p.LastSeenUnixMs > p.ConnectedUnixMs || p.LastSeenUnixMs == 0 {
		t.Fatalf("connect record %v", p)
	}
	if _, remote, connected := e.g.DeviceInfo("app", "alice", "a1"); !connected || remote != "198.51.100.7" {
		t.Fatalf("DeviceInfo: %q %v", remote, connected)
	}
	auth.mu.Lock()
	if got := auth.remotes; len(got) != 1 || got[0] != "198.51.100.7" {
		t.Errorf("Authenticate saw remotes %q, want the forwarded client", got)
	}
	auth.mu.Unlock()

	// Heartbeats append nothing: a connection costs two records, however
	// long it lasts.
	before := logEnds(t, e.n)
	connectedSeen := p.LastSeenUnixMs
	time.Sleep(20 * time.Millisecond)
	for i := 0; i < 50; i++ {
		c.send(map[string]string{"type": "ping", "id": "p"})
		c.expect("pong")
	}
	if after := logEnds(t, e.n); !slices.Equal(before, after) {
		t.Fatalf("50 pings appended to the log: ends %v, then %v", before, after)
	}
	c.ws.Close(websocket.StatusNormalClosure, "")
	eventually(t, "disconnect recorded", func() bool { p = presenceOf(t, e, "alice", "a1"); return p != nil && !p.Connected })
	if p.LastSeenUnixMs < connectedSeen+20 || p.RemoteAddr != "198.51.100.7" {
		t.Fatalf("disconnect record %v: last seen must be the ping, 20ms after the login", p)
	}

	// A second connection of the device, then a late disconnect of the
	// first one (replayed by hand) changes nothing.
	c2 := loginFrom(t, e, "198.51.100.8", "alice", "a1")
	eventually(t, "reconnect recorded", func() bool { p = presenceOf(t, e, "alice", "a1"); return p.GetConnected() })
	late := &pb.Event{App: "app", ClientOpId: "late", Kind: pb.Kind_KIND_DEVICE_DISCONNECTED, Actor: &pb.Actor{User: "alice", LoginId: "a1"},
		Payload: &pb.Event_Presence{Presence: &pb.DevicePresence{Process: "gw1:7000", Incarnation: "run1", Connection: 1, LastSeenUnixMs: 1}}}
	if d := submit(t, e.n, late); d.Code != 0 {
		t.Fatalf("late disconnect: %v", d)
	}
	if p2 := presenceOf(t, e, "alice", "a1"); !p2.Connected || p2.RemoteAddr != "198.51.100.8" {
		t.Fatalf("a late disconnect of an older connection changed the record: %v", p2)
	}

	// The session ends: the record goes with it.
	kick := &pb.Event{App: "app", ClientOpId: "k", Kind: pb.Kind_KIND_KICK_DEVICE, Actor: &pb.Actor{User: "alice", Admin: true},
		Payload: &pb.Event_KickDevice{KickDevice: &pb.KickDevice{LoginId: "a1"}}}
	if d := submit(t, e.n, kick); d.Code != 0 {
		t.Fatalf("kick: %v", d)
	}
	c2.expect("kicked")
	if p := presenceOf(t, e, "alice", "a1"); p != nil {
		t.Fatalf("presence of an ended session kept: %v", p)
	}
}

// X-Forwarded-For is believed only from a trusted proxy: a device
// connecting directly is recorded with its TCP peer address.
func TestPresenceUntrustedForwardedFor(t *testing.T) {
	proxies, err := clientaddr.Parse("10.0.0.0/8")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(o *gateway.Options) { o.Process, o.ClientAddr = "gw1:7000", proxies.Addr })
	loginFrom(t, e, "198.51.100.7", "bob", "b1")
	var p *pb.Presence
	eventually(t, "connect recorded", func() bool { p = presenceOf(t, e, "bob", "b1"); return p.GetConnected() })
	if host := p.RemoteAddr; len(host) < len("127.0.0.1:") || host[:10] != "127.0.0.1:" {
		t.Fatalf("remote %q, want the TCP peer 127.0.0.1:port", host)
	}
}

// A device may not submit presence: the gateway records it.
func TestPresenceOpsRefusedFromDevices(t *testing.T) {
	e := newEnv(t, nil)
	c, _ := login(t, e, "carol", "c1", 1)
	c.expect("snapshot")
	for _, kind := range []string{"KIND_DEVICE_CONNECTED", "KIND_DEVICE_DISCONNECTED"} {
		r := c.op("x", `{"kind":"`+kind+`","client_op_id":"x1","presence":{"incarnation":"i","remote_addr":"1.2.3.4"}}`)
		if r.Code != int32(engine.CodeForbidden) {
			t.Errorf("%s from a device: %+v, want 1008", kind, r)
		}
	}
	ps, err := e.n.Store.Presence("app", "carol")
	if err != nil || len(ps) != 0 {
		t.Fatalf("presence after refused ops: %v %v", ps, err)
	}
}

// refusing answers every message op with a fixed error, and passes the rest.
type refusing struct {
	gateway.Submitter
	err error
}

func (r refusing) Begin(ctx context.Context, ops []*pb.Event) []*engine.Pending {
	if ops[0].Kind == pb.Kind_KIND_MESSAGE_SEND {
		return []*engine.Pending{engine.Resolved(nil, r.err)}
	}
	return r.Submitter.Begin(ctx, ops)
}

type noOwner struct{}

func (noOwner) Owner(app, user string) (string, bool) { return "", false }

// A refusal a retry may cure carries retry_after_ms: 1009 and 1018
// without an owner's address (UnavailableRetryAfter), 1019
// (BusyRetryAfter); a refusal that will not change has none.
func TestRetryAfterOnRefusals(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int64
	}{
		{engine.Errorf(engine.CodeUnavailable, "the log did not answer"), 1500},
		{engine.Errorf(engine.CodeNotOwner, "partition 1 is moving; retry"), 1500},
		{engine.Errorf(engine.CodeInvalidArgument, "bad"), 0},
	} {
		e := newEnvHooks(t, func(o *gateway.Options) { o.UnavailableRetryAfter = 1500 * time.Millisecond },
			envHooks{engine: func(_ *node.Node, s gateway.Submitter) gateway.Submitter { return refusing{s, c.err} }})
		dev, _ := login(t, e, "dan", "d1", 1)
		dev.expect("snapshot")
		r := dev.op("m", msgJSON("eve", "m1", "hi"))
		if r.Code != int32(engine.CodeOf(c.err)) || r.RetryAfterMs != c.want {
			t.Errorf("%v: result %+v, want retry_after_ms %d", c.err, r, c.want)
		}
	}
	// A login refused because nobody is known to serve the user yet.
	e := newEnv(t, func(o *gateway.Options) { o.Owner = noOwner{} })
	dev := dial(t, e)
	dev.send(loginFrame{Type: "login", ID: "l", App: "app", User: "fay", Password: "pw", LoginID: "f1", Platform: 1})
	if f := dev.expect("error"); f.Code != int32(engine.CodeNotOwner) || f.Addr != "" || f.RetryAfterMs != 1000 {
		t.Errorf("login without a known owner: %+v, want 1018 with retry_after_ms 1000", f)
	}
}

// switchOwner serves every user here until moveTo is set.
type switchOwner struct{ to atomic.Value }

func (o *switchOwner) Owner(app, user string) (string, bool) {
	if a, _ := o.to.Load().(string); a != "" {
		return a, false
	}
	return "", true
}

// A connection whose user's partition moved to another process is sent
// there by the session check (1018 with the owner's address): this
// process's store no longer follows the user.
func TestMovedUserSentToNewOwner(t *testing.T) {
	owner := &switchOwner{}
	e := newEnv(t, func(o *gateway.Options) { o.Owner, o.SessionCheckInterval = owner, 30*time.Millisecond })
	dev, _ := login(t, e, "gus", "g1", 1)
	dev.expect("snapshot")
	owner.to.Store("10.0.0.9:8080")
	f := dev.expect("error")
	if f.Code != int32(engine.CodeNotOwner) || f.Addr != "10.0.0.9:8080" {
		t.Fatalf("after the move: %+v, want 1018 naming the new owner", f)
	}
	if st := dev.closed(); st != 4000 {
		t.Fatalf("close status %d, want 4000", st)
	}
}

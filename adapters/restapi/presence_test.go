package restapi

import (
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/mdsync/mdsync/adapters/clientaddr"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// remoteCreds records the remote address of each password check.
type remoteCreds struct {
	Credentials
	mu      sync.Mutex
	remotes []string
}

func (c *remoteCreds) CheckPassword(app, user, pw, remote string) error {
	c.mu.Lock()
	c.remotes = append(c.remotes, remote)
	c.mu.Unlock()
	return c.Credentials.CheckPassword(app, user, pw, remote)
}

func (c *remoteCreds) last() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.remotes[len(c.remotes)-1]
}

// Password checks are rate-limited by the client's address: behind a
// trusted proxy the forwarded one, else the TCP peer whatever the request
// claims.
func TestTrustedProxiesRateLimitKey(t *testing.T) {
	for _, c := range []struct {
		trusted, want string
	}{
		{"127.0.0.1/32", "198.51.100.7"},
		{"10.0.0.0/8", "127.0.0.1:"},
		{"", "127.0.0.1:"},
	} {
		rs, err := clientaddr.Parse(c.trusted)
		if err != nil {
			t.Fatal(err)
		}
		var creds *remoteCreds
		h := newHarnessWith(t, nil, func(o *Options) {
			creds = &remoteCreds{Credentials: o.Auth}
			o.Auth, o.ClientAddr = creds, rs.Addr
		})
		h.register("alice", "password-1")
		code, _ := h.raw("GET", "/v1/apps/demo/users/alice/devices", basic("alice", "password-1"), "", "X-Forwarded-For", "203.0.113.1, 198.51.100.7")
		if code != http.StatusOK {
			t.Fatalf("trusted %q: status %d", c.trusted, code)
		}
		if got := creds.last(); !strings.HasPrefix(got, c.want) {
			t.Errorf("trusted %q: password checked for remote %q, want %q", c.trusted, got, c.want)
		}
	}
}

// Presence is the gateway's to record: a presence op submitted by a client
// is refused with 1008.
func TestPresenceOpsRefused(t *testing.T) {
	h := newHarness(t)
	h.login("alice", "a1", 1)
	for _, kind := range []string{"KIND_DEVICE_CONNECTED", "KIND_DEVICE_DISCONNECTED"} {
		code, m := h.do("POST", "/v1/operations", admin, `{"app":"demo","client_op_id":"p1","kind":"`+kind+`","actor":{"user":"alice","login_id":"a1"},"presence":{"incarnation":"i","remote_addr":"6.6.6.6"}}`)
		h.want(http.StatusForbidden, float64(engine.CodeForbidden), code, m, kind)
	}
	ps, err := h.node.Store.Presence("demo", "alice")
	if err != nil || len(ps) != 0 {
		t.Fatalf("presence after refused ops: %v %v", ps, err)
	}
}

// The device list shows what the log recorded of a device's connections
// when the device is not connected here, and the live connection when it is.
func TestDeviceListFromPresence(t *testing.T) {
	h := newHarness(t)
	h.login("alice", "a1", 1)
	h.login("alice", "online", 2)
	for i, login := range []string{"a1", "online"} {
		for _, kind := range []pb.Kind{pb.Kind_KIND_DEVICE_CONNECTED, pb.Kind_KIND_DEVICE_DISCONNECTED} {
			ev := &pb.Event{App: "demo", ClientOpId: "pr" + login + kind.String(), Kind: kind, Actor: &pb.Actor{User: "alice", LoginId: login},
				Payload: &pb.Event_Presence{Presence: &pb.DevicePresence{RemoteAddr: "192.0.2.1:1", Process: "p", Incarnation: "i", Connection: uint64(i), LastSeenUnixMs: 1}}}
			if d, err := h.node.Engine.Submit(t.Context(), ev); err != nil || d.Code != 0 {
				t.Fatalf("%v: %v %v", kind, d, err)
			}
		}
	}
	code, m := h.do("GET", "/v1/apps/demo/users/alice/devices", admin, "")
	if code != http.StatusOK {
		t.Fatalf("status %d", code)
	}
	ds := m["devices"].([]any)
	a1, online := ds[0].(map[string]any), ds[1].(map[string]any)
	if a1["remote_addr"] != "192.0.2.1:1" || a1["connected"] != false || a1["last_seen_unix_ms"].(float64) == 0 || a1["process"] != "" {
		t.Errorf("recorded device: %v", a1)
	}
	if online["remote_addr"] != "10.1.2.3:4567" || online["connected"] != true || online["last_seen_unix_ms"] != float64(1_700_000_123_456) {
		t.Errorf("live device: %v", online)
	}
}

// fakeOwner says another process owns every user ("" while unknown).
type fakeOwner struct{ addr string }

func (o fakeOwner) Owner(app, user string) (string, bool) { return o.addr, false }

type fakeReads struct {
	mu    sync.Mutex
	calls []string
}

func (f *fakeReads) ForwardRead(w http.ResponseWriter, r *http.Request, addr string) {
	f.mu.Lock()
	f.calls = append(f.calls, r.Method+" "+r.URL.Path+" @"+addr)
	f.mu.Unlock()
	if strings.HasSuffix(r.URL.Path, "/audit") {
		w.Header().Set("Content-Type", "application/x-ndjson")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte(`{"devices":[]}`))
}

// A read about a user whose partition another process owns is sent to the
// owner, once; a read forwarded here is not forwarded again, and while no
// owner is known the answer is 503/1018 with Retry-After. Writes are not
// forwarded here (the engine's forwarder does).
func TestUserReadsAnsweredByOwner(t *testing.T) {
	reads := &fakeReads{}
	owner := &fakeOwner{addr: "10.0.0.2:8080"}
	h := newHarnessWith(t, nil, func(o *Options) { o.Owner, o.Reads = owner, reads })
	code, _ := h.raw("GET", "/v1/apps/demo/users/alice/devices", admin, "")
	if code != http.StatusOK || len(reads.calls) != 1 || reads.calls[0] != "GET /v1/apps/demo/users/alice/devices @10.0.0.2:8080" {
		t.Fatalf("devices: %d %v", code, reads.calls)
	}
	h.raw("GET", "/v1/apps/demo/users/alice/audit", admin, "")
	if len(reads.calls) != 2 || !strings.HasPrefix(reads.calls[1], "GET /v1/apps/demo/users/alice/audit") {
		t.Fatalf("audit: %v", reads.calls)
	}
	req, _ := http.NewRequest("GET", h.srv.URL+"/org/demo/users/alice/resources", nil)
	req.Header.Set("Authorization", admin)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK || len(reads.calls) != 3 {
		t.Fatalf("resources: %v %v %v", resp, err, reads.calls)
	}
	// Bad ids are the route's to refuse, not forwarded.
	if code, _ := h.raw("GET", "/v1/apps/demo/users/bad%20id/devices", admin, ""); code != http.StatusBadRequest || len(reads.calls) != 3 {
		t.Fatalf("bad id: %d %v", code, reads.calls)
	}

	code, m := h.do("GET", "/v1/apps/demo/users/alice/devices", admin, "", "X-Mdsync-Forwarded", "1")
	h.want(http.StatusServiceUnavailable, float64(engine.CodeNotOwner), code, m, "forwarded twice")

	owner.addr = ""
	req, _ = http.NewRequest("GET", h.srv.URL+"/v1/apps/demo/users/alice/devices", nil)
	req.Header.Set("Authorization", admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || len(reads.calls) != 3 {
		t.Fatalf("owner unknown: %d Retry-After %q calls %v", resp.StatusCode, resp.Header.Get("Retry-After"), reads.calls)
	}
}

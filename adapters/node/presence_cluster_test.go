package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mdsync/mdsync/adapters/forward"
	"github.com/mdsync/mdsync/adapters/gateway"
	"github.com/mdsync/mdsync/adapters/kafkagroup"
	"github.com/mdsync/mdsync/adapters/kafkalog"
	"github.com/mdsync/mdsync/adapters/restapi"
)

const presenceAdmin = "presence-admin"

type allowAll struct{}

func (allowAll) Authenticate(app, user, password, token, remote string) error { return nil }

// presenceProc is one mdsync process as serve wires it for presence: the
// node in a consumer group, the gateway recording presence, the REST API
// answering reads about a user from the user's owner.
type presenceProc struct {
	t    *testing.T
	dir  string
	addr string
	n    *Node
	g    *gateway.Gateway
	srv  *http.Server
}

func startPresenceProc(t *testing.T, brokers []string, topic, group string, parts int32, dir string) *presenceProc {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &presenceProc{t: t, dir: dir, addr: ln.Addr().String()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p.n, err = New(ctx, Options{
		Dir:   dir,
		Kafka: &kafkalog.Options{Brokers: brokers, Topic: topic, Partitions: parts, CreateTopic: true},
		Group: &kafkagroup.Options{GroupID: group, Addr: p.addr, CommitInterval: 200 * time.Millisecond, HeartbeatInterval: 300 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	sub, err := forward.New(p.n.Engine, p.n, forward.Options{Token: presenceAdmin, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	p.g, err = gateway.New(gateway.Options{Auth: allowAll{}, Engine: sub, Store: p.n.Store, Owner: p.n, Registerer: prometheus.NewRegistry(),
		Logger: log, Process: p.addr})
	if err != nil {
		t.Fatal(err)
	}
	reads, err := forward.NewReads(forward.Options{Token: presenceAdmin})
	if err != nil {
		t.Fatal(err)
	}
	api, err := restapi.New(sub, p.n.Store, restapi.Options{AdminToken: presenceAdmin, Registry: prometheus.NewRegistry(), Logger: log,
		Presence: p.g, Owner: p.n, Reads: reads, Process: p.addr})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/ws", p.g)
	mux.Handle("/", api)
	p.srv = &http.Server{Handler: mux}
	go p.srv.Serve(ln)
	return p
}

// stop stops the process: gracefully (the gateway closes its connections,
// recording their end, then the node closes), or as a crash would leave
// the log (the node closes first: nothing the gateway appends after lands).
func (p *presenceProc) stop(graceful bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !graceful {
		p.n.Close()
	}
	p.g.Shutdown(ctx)
	p.srv.Close()
	p.n.Close()
}

// get returns the body of an admin GET on p; a 503 (a rebalance under
// way: no owner known for a moment) is retried, as the SDKs do.
func (p *presenceProc) get(path string) []byte {
	p.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		req, _ := http.NewRequest("GET", "http://"+p.addr+path, nil)
		req.Header.Set("Authorization", "Bearer "+presenceAdmin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			p.t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return b
		}
		if resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) {
			p.t.Fatalf("GET %s on %s: %d %s", path, p.addr, resp.StatusCode, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type listedDevice struct {
	LoginID    string `json:"login_id"`
	LastSeen   int64  `json:"last_seen_unix_ms"`
	RemoteAddr string `json:"remote_addr"`
	Connected  bool   `json:"connected"`
	Process    string `json:"process"`
}

// sameDevices reads user's device list on every process until the answers
// are byte for byte the same (they may differ only while a rebalance moves
// the user between two reads) and returns the one device listed.
func sameDevices(t *testing.T, user string, procs ...*presenceProc) (listedDevice, []byte) {
	t.Helper()
	path := "/v1/apps/app/users/" + user + "/devices"
	deadline := time.Now().Add(20 * time.Second)
	for {
		first, differ := procs[0].get(path), ""
		for _, p := range procs[1:] {
			if b := p.get(path); !bytes.Equal(b, first) {
				differ = fmt.Sprintf("%s: %s\n%s: %s", procs[0].addr, first, p.addr, b)
			}
		}
		if differ == "" {
			var l struct{ Devices []listedDevice }
			if err := json.Unmarshal(first, &l); err != nil || len(l.Devices) != 1 {
				t.Fatalf("devices of %s: %s %v", user, first, err)
			}
			return l.Devices[0], first
		}
		if time.Now().After(deadline) {
			t.Fatalf("devices of %s differ:\n%s", user, differ)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitReady(t *testing.T, procs ...*presenceProc) {
	t.Helper()
	ns := make([]*Node, len(procs))
	for i, p := range procs {
		ns[i] = p.n
	}
	waitOwned(t, ns[0].Log.Partitions(), ns...)
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range procs {
		for p.n.Ready() != nil {
			if time.Now().After(deadline) {
				t.Fatalf("%s not ready: %v", p.addr, p.n.Ready())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// ownerOf returns the process that serves user (waiting while nobody does:
// a rebalance under way).
func ownerOf(t *testing.T, user string, procs ...*presenceProc) *presenceProc {
	t.Helper()
	var p *presenceProc
	until(t, "an owner of "+user, func() bool {
		for _, q := range procs {
			if _, local := q.n.Owner("app", user); local {
				p = q
				return true
			}
		}
		return false
	})
	return p
}

// connect logs a device in on its user's owner over the WebSocket; a 1018
// (the partition moved meanwhile) is retried on the new owner, as the SDKs
// do.
func connect(t *testing.T, user, loginID string, procs ...*presenceProc) (*websocket.Conn, *presenceProc) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		p := ownerOf(t, user, procs...)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ws, _, err := websocket.Dial(ctx, "ws://"+p.addr+"/v1/ws", &websocket.DialOptions{Subprotocols: []string{gateway.Subprotocol}})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		b, _ := json.Marshal(map[string]any{"type": "login", "id": "l", "app": "app", "user": user, "password": "x", "login_id": loginID, "platform": 1, "device_name": "phone"})
		if err := ws.Write(ctx, websocket.MessageText, b); err != nil {
			cancel()
			t.Fatal(err)
		}
		_, b, err = ws.Read(ctx)
		cancel()
		if err == nil && strings.Contains(string(b), `"code":1018`) && time.Now().Before(deadline) {
			ws.CloseNow()
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if err != nil || !strings.Contains(string(b), `"login_result"`) || strings.Contains(string(b), `"code":1`) {
			t.Fatalf("login of %s on %s: %s %v", user, p.addr, b, err)
		}
		go func() { // drain: the snapshot, then nothing
			for {
				if _, _, err := ws.Read(context.Background()); err != nil {
					return
				}
			}
		}()
		return ws, p
	}
}

func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// GET .../devices gives the same answer on every process — last seen,
// address, connected and where — while devices are connected, after one
// disconnects, and after every process restarted (one gracefully, one as
// after a crash, whose connection the log never saw end).
func TestPresenceSameOnEveryProcess(t *testing.T) {
	const parts = 4
	brokers, topic, group := ownedCluster(t)
	dirA, dirB := t.TempDir(), t.TempDir()
	a := startPresenceProc(t, brokers, topic, group, parts, dirA)
	b := startPresenceProc(t, brokers, topic, group, parts, dirB)
	waitReady(t, a, b)
	each := [][]int32{a.n.Owned(), b.n.Owned()}
	ua, ub := userOn(each[0][0], parts), userOn(each[1][0], parts)

	wsA, ownA := connect(t, ua, "da", a, b)
	wsB, ownB := connect(t, ub, "db", a, b)
	for _, c := range []struct {
		user  string
		owner *presenceProc
	}{{ua, ownA}, {ub, ownB}} {
		var d listedDevice
		until(t, c.user+" connected", func() bool { d, _ = sameDevices(t, c.user, a, b); return d.Connected })
		if !strings.HasPrefix(d.RemoteAddr, "127.0.0.1:") || d.LastSeen == 0 || d.Process != c.owner.addr {
			t.Fatalf("%s connected: %+v, want its address, a last seen and process %s", c.user, d, c.owner.addr)
		}
	}

	// A device disconnects: the log records it; every process says so.
	connected, _ := sameDevices(t, ua, a, b)
	wsA.Close(websocket.StatusNormalClosure, "")
	var off listedDevice
	var offJSON []byte
	owner := ownerOf(t, ua, a, b)
	until(t, ua+" disconnected", func() bool {
		ps, err := owner.n.Store.Presence("app", ua)
		return err == nil && ps["da"] != nil && !ps["da"].Connected
	})
	off, offJSON = sameDevices(t, ua, a, b)
	if off.Connected || off.RemoteAddr != connected.RemoteAddr || off.LastSeen < connected.LastSeen || off.Process != "" {
		t.Fatalf("after the disconnect %+v, before %+v", off, connected)
	}
	dbBefore, _ := sameDevices(t, ub, a, b)

	// Restart every process: a gracefully, b as after a crash (db's
	// connection never recorded as ended).
	a.stop(true)
	b.stop(false)
	wsB.CloseNow()
	a = startPresenceProc(t, brokers, topic, group, parts, dirA)
	b = startPresenceProc(t, brokers, topic, group, parts, dirB)
	defer a.stop(true)
	defer b.stop(true)
	waitReady(t, a, b)

	if _, got := sameDevices(t, ua, a, b); !bytes.Equal(got, offJSON) {
		t.Fatalf("after the restart %s lists\n%s\nbefore\n%s", ua, got, offJSON)
	}
	d, _ := sameDevices(t, ub, a, b)
	if d.Connected || d.Process != "" || d.RemoteAddr != dbBefore.RemoteAddr || d.LastSeen != dbBefore.LastSeen {
		t.Fatalf("after a crash %s lists %+v; before %+v: not connected, same address and last seen (the login, its last frame)", ub, d, dbBefore)
	}
}

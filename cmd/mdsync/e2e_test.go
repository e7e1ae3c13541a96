package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdsync/mdsync/adapters/auth"
	"github.com/mdsync/mdsync/adapters/gateway"
	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/adapters/restapi"
	"github.com/mdsync/mdsync/client"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
	"github.com/prometheus/client_golang/prometheus"
)

// e2eServer is a running mdsync: its REST base URL, WebSocket URL and
// admin token.
type e2eServer struct {
	base, ws, admin string
	// cluster, when set, are the other processes of a cluster (cluster_test.go):
	// devices dial them and ws in turn, users are registered on each.
	cluster *e2eCluster
}

// TestEndToEndSDK is the acceptance test of the serve issue: the real
// binary, users registered over REST, devices connected through the SDK,
// playing the seeds' scenarios. It skips while serve does not route
// /v1/ws (the gateway not wired yet).
func TestEndToEndSDK(t *testing.T) {
	bin := buildBinary(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "serve", "--data", t.TempDir(), "--addr", addr, "--admin-token", "e2e-admin", "--partitions", "4")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	base := "http://" + addr
	deadline := time.Now().Add(10 * time.Second)
	for {
		if resp, err := http.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("server did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	playSeedScenarios(t, e2eServer{base: base, ws: "ws://" + addr + "/v1/ws", admin: "e2e-admin"})
	scrapeMetrics(t, base, "e2e-admin")
}

// scrapeMetrics reads /metrics after the scenarios and finds the metrics
// the serve issue names, and every metric the Grafana dashboard queries.
func scrapeMetrics(t *testing.T, base, admin string) {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d %s", resp.StatusCode, body)
	}
	present := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if name, _, ok := strings.Cut(line, " "); ok && !strings.HasPrefix(line, "#") {
			name, _, _ = strings.Cut(name, "{")
			present[name] = true
		}
	}
	want := []string{
		"mdsync_connected_devices",                        // by platform
		"mdsync_gateway_logins_total",                     // logins by code
		"mdsync_sessions_ended_total",                     // evictions and kicks by reason
		"mdsync_operations_applied_total",                 // operations by kind
		"mdsync_log_append_duration_seconds_bucket",       // append latency
		"mdsync_projection_apply_duration_seconds_bucket", // apply latency
		"mdsync_catchup_events_bucket",                    // catch-up size
		"mdsync_catchup_duration_seconds_bucket",          // catch-up time
		"mdsync_projection_lag_events",                    // lag per partition
		"mdsync_bus_deliveries_total",                     // bus deliveries
		"mdsync_aggregate_logins_total",                   // the aggregates projection
	}
	dash, err := os.ReadFile("../../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`mdsync_[a-z_]+`).FindAllString(string(dash), -1) {
		if m != "mdsync_push_outbox_depth" { // registered only with --push-webhook (TestServeEndToEnd)
			want = append(want, m)
		}
	}
	for _, m := range want {
		if !present[m] {
			t.Errorf("/metrics has no %s", m)
		}
	}
	for _, lbl := range []string{`mdsync_connected_devices{platform="1"}`, `mdsync_sessions_ended_total{reason="REASON_LOGIN_OTHER_DEVICE"}`, `mdsync_sessions_ended_total{reason="REASON_KICKED"}`} {
		if !strings.Contains(string(body), lbl) {
			t.Errorf("/metrics has no series %s", lbl)
		}
	}
}

// TestSeedScenariosInProcess plays the same scenarios on the adapters
// wired in-process (node, auth, gateway, restapi), as serve wires them.
func TestSeedScenariosInProcess(t *testing.T) {
	base, ws := startInProcess(t, 4)
	playSeedScenarios(t, e2eServer{base: base, ws: ws, admin: "adm"})
}

// startInProcess wires node, auth, gateway and restapi in this process as
// serve wires them (admin token "adm") and returns the HTTP base URL and
// the WebSocket URL.
func startInProcess(t *testing.T, partitions int32) (base, ws string) {
	t.Helper()
	var gp atomic.Pointer[gateway.Gateway]
	n, err := node.New(context.Background(), node.Options{Dir: t.TempDir(), Partitions: partitions,
		OnApplied: func(p int32, a projections.Applied) {
			g := gp.Load()
			if g == nil {
				return
			}
			for _, d := range a.Decisions {
				for _, e := range d.Ended {
					g.End(d.App, e)
				}
			}
			for _, e := range a.Entries {
				g.Deliver(e.App, e.User, e.Entry)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	creds, err := auth.Open(auth.Options{Dir: t.TempDir(), Log: n.Log, TokenKey: []byte(strings.Repeat("k", 32)),
		Argon2: auth.Argon2Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}})
	if err != nil {
		t.Fatal(err)
	}
	g, err := gateway.New(gateway.Options{Logger: slog.New(slog.DiscardHandler), Auth: creds, Engine: n.Engine, Store: n.Store, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	gp.Store(g)
	api, err := restapi.New(n.Engine, n.Store, restapi.Options{Logger: slog.New(slog.DiscardHandler), AdminToken: "adm", Registry: prometheus.NewRegistry(), Auth: creds, Presence: g})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/ws", g)
	mux.Handle("/", api)
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		g.Shutdown(ctx)
		srv.Close()
		n.Close()
		creds.Close()
	})
	return srv.URL, "ws" + strings.TrimPrefix(srv.URL, "http") + "/v1/ws"
}

// device is one SDK client with what its handlers saw.
type device struct {
	c      *client.Client
	msgs   chan client.Event
	kicked chan client.Kicked
	drops  atomic.Int32
}

func (s e2eServer) dial(t *testing.T, app, user, token string, platform int32, name, ext, loginID string, mod func(*client.Config)) (*device, error) {
	t.Helper()
	d := &device{msgs: make(chan client.Event, 256), kicked: make(chan client.Kicked, 4)}
	kick := func(k client.Kicked) { d.kicked <- k }
	cfg := client.Config{URL: s.wsURL(), App: app, User: user, Token: token, Platform: platform, DeviceName: name, Extension: ext, LoginID: loginID,
		AckInterval: 20 * time.Millisecond, ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond,
		Handlers: client.Handlers{
			OnMessage:                     func(e client.Event) { d.msgs <- e },
			OnUserDidLoginFromOtherDevice: kick, OnUserKickedByOtherDevice: kick, OnUserRemoved: kick, OnPasswordChanged: kick,
			OnDisconnected: func(error) { d.drops.Add(1) },
		}}
	if mod != nil {
		mod(&cfg)
	}
	if s.cluster != nil && cfg.Dialer != nil {
		// A scenario that cuts its device's first TCP connection means the
		// live one: dial the owner, whose connection is not a redirect.
		cfg.URL = s.cluster.ownerWS(app, user)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	d.c = c
	t.Cleanup(func() { c.Close() })
	return d, nil
}

func (s e2eServer) mustDial(t *testing.T, app, user, token string, platform int32, name, ext, loginID string, mod func(*client.Config)) *device {
	t.Helper()
	d, err := s.dial(t, app, user, token, platform, name, ext, loginID, mod)
	if err != nil {
		t.Fatalf("dial %s/%s %s: %v", app, user, name, err)
	}
	return d
}

// register creates a user and returns a token for its devices (tokens keep
// the password checks, which are rate limited per remote address, few).
func (s e2eServer) register(t *testing.T, r *client.REST, app, user string) string {
	t.Helper()
	ctx := context.Background()
	admin := client.Credential{Admin: s.admin}
	if err := r.RegisterUser(ctx, app, user, "password-"+user, admin); err != nil {
		t.Fatalf("register %s/%s: %v", app, user, err)
	}
	tok, err := r.IssueToken(ctx, app, user, time.Hour, admin)
	if err != nil {
		t.Fatalf("token %s/%s: %v", app, user, err)
	}
	return tok.Token
}

func (d *device) waitKicked(t *testing.T, what string) client.Kicked {
	t.Helper()
	select {
	case k := <-d.kicked:
		return k
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: no kick", what)
		return client.Kicked{}
	}
}

func (d *device) noKick(t *testing.T, what string) {
	t.Helper()
	select {
	case k := <-d.kicked:
		t.Fatalf("%s: kicked %+v", what, k)
	default:
	}
}

// nextMessage returns the body of the next message the device got.
func (d *device) nextMessage(t *testing.T, what string) string {
	t.Helper()
	select {
	case e := <-d.msgs:
		return string(e.Entry.GetSource().GetMessage().GetBody())
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: no message", what)
		return ""
	}
}

func send(t *testing.T, d *device, ct pb.ChatType, to, body string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := d.c.Send(ctx, client.Message{ChatType: ct, To: to, ContentType: "text/plain", Body: []byte(body)}); err != nil {
		t.Fatalf("send %q: %v", body, err)
	}
}

func playSeedScenarios(t *testing.T, s e2eServer) {
	r := client.NewREST(s.base, nil)
	ctx := context.Background()

	t.Run("fifth login evicts the earliest with 206", func(t *testing.T) {
		tok := s.register(t, r, "e2e", "alice")
		bobTok := s.register(t, r, "e2e", "bob")
		var phones []*device
		for i := 1; i <= 4; i++ {
			phones = append(phones, s.mustDial(t, "e2e", "alice", tok, 1, fmt.Sprintf("Phone %d", i), "", fmt.Sprintf("phone%d", i), nil))
		}
		desk := s.mustDial(t, "e2e", "alice", tok, 2, "Desk", "", "desk", nil)
		p5 := s.mustDial(t, "e2e", "alice", tok, 1, "iPhone 15", `{"os":"ios"}`, "phone5", nil)
		k := phones[0].waitKicked(t, "earliest phone")
		if k.Code != 206 || k.ByLoginID != "phone5" || k.ByDeviceName != "iPhone 15" || k.ByExtension != `{"os":"ios"}` {
			t.Fatalf("kick of the earliest: %+v", k)
		}
		for i, d := range append(phones[1:], desk) {
			d.noKick(t, fmt.Sprintf("device %d", i+2))
		}

		// fetchLoggedInDevices with the user's password, not logged in.
		devs, err := r.FetchLoggedInDevices(ctx, "e2e", "alice", client.Credential{Password: "password-alice"})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, d := range devs {
			ids = append(ids, d.LoginID)
			if !d.Connected {
				t.Errorf("device %s listed as not connected", d.LoginID)
			}
		}
		if got := strings.Join(ids, ","); got != "phone2,phone3,phone4,desk,phone5" {
			t.Fatalf("logged-in devices %s", got)
		}

		// A message to one own device through its login ID arrives there
		// only: bob's later message, which every device gets, proves the
		// others had nothing before it.
		self, err := p5.c.SelfIdsOnOtherPlatform(ctx)
		if err != nil || !contains(self, "phone2") || contains(self, "phone5") {
			t.Fatalf("self ids %v %v", self, err)
		}
		send(t, p5, pb.ChatType_CHAT_TYPE_SELF_DEVICE, "phone2", "just for phone2")
		bob := s.mustDial(t, "e2e", "bob", bobTok, 1, "Bob", "", "", nil)
		send(t, bob, pb.ChatType_CHAT_TYPE_USER, "alice", "hello all")
		if got := phones[1].nextMessage(t, "phone2"); got != "just for phone2" {
			t.Fatalf("phone2 got %q first", got)
		}
		for _, d := range []*device{phones[1], phones[2], phones[3], desk, p5} {
			if got := d.nextMessage(t, "alice's devices"); got != "hello all" {
				t.Fatalf("got %q, want bob's message (the self-device message went elsewhere?)", got)
			}
		}

		// An offline device catches up exactly: phone4 closes, bob sends,
		// phone4 logs in again with its login ID.
		phones[3].c.Close()
		for i := 1; i <= 5; i++ {
			send(t, bob, pb.ChatType_CHAT_TYPE_USER, "alice", fmt.Sprintf("offline %d", i))
		}
		back := s.mustDial(t, "e2e", "alice", tok, 1, "Phone 4", "", "phone4", nil)
		send(t, bob, pb.ChatType_CHAT_TYPE_USER, "alice", "marker")
		var got []string
		for len(got) == 0 || got[len(got)-1] != "marker" {
			got = append(got, back.nextMessage(t, "phone4 catching up"))
		}
		if strings.Join(got, "|") != "offline 1|offline 2|offline 3|offline 4|offline 5|marker" {
			t.Fatalf("phone4 caught up %q", got)
		}

		// A dropped connection resumes (auto-login set) and the messages
		// sent meanwhile arrive once each, in order.
		var mu sync.Mutex
		var tcp []net.Conn
		dialer := func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			mu.Lock()
			tcp = append(tcp, c)
			mu.Unlock()
			return c, err
		}
		flaky := s.mustDial(t, "e2e", "alice", tok, 3, "Tablet", "", "tablet", func(c *client.Config) { c.Dialer, c.AutoLogin = dialer, true })
		send(t, bob, pb.ChatType_CHAT_TYPE_USER, "alice", "before drop")
		if m := flaky.nextMessage(t, "tablet"); m != "before drop" {
			t.Fatalf("tablet got %q", m)
		}
		time.Sleep(60 * time.Millisecond) // the ack goes out
		mu.Lock()
		tcp[0].Close()
		mu.Unlock()
		for i := 1; i <= 3; i++ {
			send(t, bob, pb.ChatType_CHAT_TYPE_USER, "alice", fmt.Sprintf("during drop %d", i))
		}
		got = nil
		for len(got) < 3 {
			got = append(got, flaky.nextMessage(t, "tablet after the drop"))
		}
		send(t, bob, pb.ChatType_CHAT_TYPE_USER, "alice", "after drop")
		got = append(got, flaky.nextMessage(t, "tablet"))
		if strings.Join(got, "|") != "during drop 1|during drop 2|during drop 3|after drop" || flaky.drops.Load() < 1 {
			t.Fatalf("tablet after a drop: %q (drops %d)", got, flaky.drops.Load())
		}
		flaky.noKick(t, "tablet")

		// kickDevice and kickAllDevices with the password, not logged in:
		// 217 on the devices, and none logs itself back in.
		pw := client.Credential{Password: "password-alice"}
		if err := r.KickDevice(ctx, "e2e", "alice", "phone2", pw); err != nil {
			t.Fatal(err)
		}
		if k := phones[1].waitKicked(t, "phone2"); k.Code != 217 {
			t.Fatalf("kickDevice: %+v", k)
		}
		if err := r.KickAllDevices(ctx, "e2e", "alice", pw); err != nil {
			t.Fatal(err)
		}
		for _, d := range []*device{phones[2], back, desk, p5, flaky} {
			if k := d.waitKicked(t, "kickAllDevices"); k.Code != 217 {
				t.Fatalf("kickAllDevices: %+v", k)
			}
		}
		time.Sleep(300 * time.Millisecond) // longer than the tablet's reconnect backoff
		if devs, err := r.FetchLoggedInDevices(ctx, "e2e", "alice", pw); err != nil || len(devs) != 0 {
			t.Fatalf("after kickAllDevices: %+v %v", devs, err)
		}
		if err := r.KickDevice(ctx, "e2e", "alice", "phone2", client.Credential{Password: "wrong"}); client.CodeOf(err) != 1013 {
			t.Fatalf("kick with a wrong password: %v", err)
		}
	})

	t.Run("single-platform mode", func(t *testing.T) {
		admin := client.Credential{Admin: s.admin}
		if _, err := r.SetPolicy(ctx, "e2e-single", &pb.PolicySet{Mode: pb.PlatformMode_PLATFORM_MODE_SINGLE, DefaultLimit: 4,
			AutoLogin: pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST}, admin); err != nil {
			t.Fatal(err)
		}
		if p, err := r.GetPolicy(ctx, "e2e-single", admin); err != nil || p.Mode != pb.PlatformMode_PLATFORM_MODE_SINGLE {
			t.Fatalf("policy %v %v", p, err)
		}
		tok := s.register(t, r, "e2e-single", "carol")
		phone := s.mustDial(t, "e2e-single", "carol", tok, 1, "Phone", "", "", nil)
		s.mustDial(t, "e2e-single", "carol", tok, 2, "Laptop", "mac", "", nil)
		if k := phone.waitKicked(t, "phone"); k.Code != 206 || k.ByDeviceName != "Laptop" || k.ByExtension != "mac" {
			t.Fatalf("single-platform: %+v", k)
		}
	})

	t.Run("auto-login refused with 214 under keep-current", func(t *testing.T) {
		if _, err := r.SetPolicy(ctx, "e2e-keep", &pb.PolicySet{Mode: pb.PlatformMode_PLATFORM_MODE_MULTI, DefaultLimit: 2,
			AutoLogin: pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KEEP_CURRENT}, client.Credential{Admin: s.admin}); err != nil {
			t.Fatal(err)
		}
		tok := s.register(t, r, "e2e-keep", "dave")
		a := s.mustDial(t, "e2e-keep", "dave", tok, 1, "A", "", "", nil)
		b := s.mustDial(t, "e2e-keep", "dave", tok, 1, "B", "", "", nil)
		_, err := s.dial(t, "e2e-keep", "dave", tok, 1, "C", "", "restarted-c", func(c *client.Config) { c.AutoLogin = true })
		if client.CodeOf(err) != 214 {
			t.Fatalf("auto-login at the limit under keep-current: %v", err)
		}
		a.noKick(t, "A")
		b.noKick(t, "B")
		// A manual login still takes the slot (the policy governs
		// auto-login only).
		s.mustDial(t, "e2e-keep", "dave", tok, 1, "C", "", "", nil)
		if k := a.waitKicked(t, "A"); k.Code != 206 {
			t.Fatalf("manual login: %+v", k)
		}
	})
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

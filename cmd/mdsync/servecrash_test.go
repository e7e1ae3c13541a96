package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/client"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// TestServeCrashSIGKILL is issue 12's crash test of the whole server: the
// built binary serving the embedded log, SDK devices connected and working
// (1:1 and group messages from one device of every user, and a stream of
// logins past the per-platform limit that evict the oldest device), the
// server SIGKILLed at random points — while serving, and sometimes while
// it is still starting — and restarted on the same data directory; the
// devices reconnect (AutoLogin) and resume from their acknowledged position.
//
// At the end, with the server up and the load stopped:
//   - every message was acknowledged (the senders resend one with the same
//     client id until it is), and every device received each message of a
//     sender→recipient stream (1:1, or the group) at most once and in send
//     order, with no gap inside what it received;
//   - a device still logged in received every message whose send started
//     after its login was answered (the devices logged in from the start:
//     all of them);
//   - the devices still logged in are exactly the sessions the log holds
//     (read by recovering the data directory as the server does), and every
//     other device was told it was evicted (its kick handler ran and its
//     client stopped with the kick's code);
//   - the recovered projection's digest equals a rebuild from offset 0.
//
// MDSYNC_SERVE_CRASH_KILLS sets the number of kills (default 50, ~1 min;
// the long mode is 1000, run by hand with -timeout 60m: ~30 min on a
// loaded 2-core VM, figures in benchmarks/RESULTS.md).
func TestServeCrashSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test builds and kills the server")
	}
	kills := 50
	if s := os.Getenv("MDSYNC_SERVE_CRASH_KILLS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("MDSYNC_SERVE_CRASH_KILLS=%q: want a positive number", s)
		}
		kills = n
	}
	const users = 6
	srv := newCrashServer(t, buildBinary(t))
	srv.start()
	srv.waitHealthy()

	// Setup, before the first kill: two devices per platform, a newer
	// login evicts the oldest (an auto-login too: the rotating devices
	// dial with their login ID and AutoLogin); users, tokens, a group of all.
	r := client.NewREST(srv.base(), nil)
	ctx := context.Background()
	admin := client.Credential{Admin: crashAdmin}
	if _, err := r.SetPolicy(ctx, crashApp, &pb.PolicySet{Mode: pb.PlatformMode_PLATFORM_MODE_MULTI, DefaultLimit: 2,
		AutoLogin: pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST}, admin); err != nil {
		t.Fatal(err)
	}
	w := &crashWorld{t: t, srv: srv, users: users, started: map[crashStream]int{}}
	es := e2eServer{base: srv.base(), ws: srv.ws(), admin: crashAdmin}
	for u := range users {
		w.tokens = append(w.tokens, es.register(t, r, crashApp, crashUser(u)))
	}
	var senders []*crashDevice
	for u := range users {
		d := w.login(es, u, 2, fmt.Sprintf("u%d-stable", u), true)
		if d == nil {
			t.Fatalf("user %d: the stable device did not log in", u)
		}
		senders = append(senders, d)
	}
	var members []string
	for u := 1; u < users; u++ {
		members = append(members, crashUser(u))
	}
	if _, err := senders[0].c.Op(ctx, &pb.Event{Kind: pb.Kind_KIND_GROUP_CREATE, ClientOpId: "crash-group",
		Payload: &pb.Event_Group{Group: &pb.GroupOp{GroupId: crashGroup, Name: crashGroup, Users: members}}}); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for u := range users {
		wg.Add(2)
		go func() { defer wg.Done(); w.send(senders[u], stop) }()
		go func() { defer wg.Done(); w.rotate(es, u, stop) }()
	}

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 12))
	began := time.Now()
	early := 0
	for i := 1; i <= kills && !t.Failed(); i++ {
		if rng.IntN(5) == 0 {
			// While it starts: recovery, the projector catching up, the
			// first reconnects.
			early++
			time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		} else {
			srv.waitHealthy()
			time.Sleep(time.Duration(150+rng.IntN(900)) * time.Millisecond)
		}
		srv.kill()
		srv.start()
	}
	srv.waitHealthy()
	loadTime := time.Since(began)
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}
	w.verify()
	w.closeAll()
	srv.kill()
	w.verifyLog(filepath.Join(srv.data))
	w.mu.Lock()
	defer w.mu.Unlock()
	var msgs, got, dups uint64
	for _, n := range w.started {
		msgs += uint64(n)
	}
	for _, d := range w.devices {
		for _, ks := range d.got {
			got += uint64(len(ks))
		}
		dups += d.c.Duplicates()
	}
	t.Logf("%d kills (%d while starting) in %s; %d messages acknowledged, %d received by %d devices (%d reconnects, %d resent events dropped by the SDK), %d evicted",
		kills, early, loadTime.Round(time.Second), msgs, got, len(w.devices), w.reconnects.Load(), dups, w.evicted)
}

const (
	crashApp   = "crash"
	crashGroup = "crash-all"
	crashAdmin = "crash-admin"
)

func crashUser(u int) string { return fmt.Sprintf("user-%d", u) }

// crashServer is the binary serving one data directory on one address,
// started again after each kill (the devices reconnect to the same URL).
type crashServer struct {
	t              *testing.T
	bin, data, dir string
	addr           string
	log            *os.File
	cmd            *exec.Cmd
	exited         chan error
}

func newCrashServer(t *testing.T, bin string) *crashServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	s := &crashServer{t: t, bin: bin, data: filepath.Join(dir, "data"), dir: dir, addr: addr, log: f}
	t.Cleanup(func() {
		if s.cmd != nil {
			s.cmd.Process.Kill()
			<-s.exited
		}
		if t.Failed() {
			s.dumpLog()
		}
		f.Close()
	})
	return s
}

func (s *crashServer) base() string { return "http://" + s.addr }
func (s *crashServer) ws() string   { return "ws://" + s.addr + "/v1/ws" }

func (s *crashServer) start() {
	s.t.Helper()
	cmd := exec.Command(s.bin, "serve", "--data", s.data, "--addr", s.addr, "--admin-token", crashAdmin,
		"--partitions", "4", "--debug-addr=")
	cmd.Env = append(os.Environ(), "MDSYNC_CONFIG=")
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.cmd = cmd
	s.exited = make(chan error, 1)
	go func() { s.exited <- cmd.Wait() }()
}

func (s *crashServer) kill() {
	s.t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		s.t.Fatal(err)
	}
	<-s.exited
	s.cmd = nil
}

// waitHealthy waits until the server answers /healthz; a server that
// exits instead (e.g. its address was taken meanwhile) fails the test.
func (s *crashServer) waitHealthy() {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-s.exited:
			s.cmd = nil
			s.t.Fatalf("serve exited while starting: %v (log in serve.log)", err)
		default:
		}
		if resp, err := http.Get(s.base() + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatal("serve did not become healthy in 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dumpLog prints the end of the server's log for a failed run.
func (s *crashServer) dumpLog() {
	b, _ := os.ReadFile(s.log.Name())
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) > 60 {
		lines = lines[len(lines)-60:]
	}
	s.t.Logf("last lines of serve's log:\n%s", bytes.Join(lines, []byte("\n")))
}

// crashStream is one ordered stream of messages: a sender's 1:1 messages
// to one user, or its messages to the group (to = -1).
type crashStream struct{ from, to int }

// crashDevice is one SDK device and what its handlers saw.
type crashDevice struct {
	user    int
	loginID string
	stable  bool
	c       *client.Client
	// from: per stream, the number of messages whose send had started when
	// this device took its first snapshot; later ones must all reach it.
	// Not the login's answer: the gateway reads the snapshot after it, and
	// a message applied in between (or while a kill made the device log in
	// again before any snapshot) is in the snapshot, as state, not an
	// event (docs/protocol.md, snapshot).
	from map[crashStream]int

	mu     sync.Mutex
	got    map[crashStream][]int
	kicks  []client.Kicked
	bad    []string
	snaps  int
	snapOK chan struct{} // closed at the first snapshot
}

func (d *crashDevice) onSnapshot(s client.Snapshot) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.snaps++
	switch {
	case d.snaps == 1:
		close(d.snapOK)
	default:
		// The SDK acks a snapshot's position as it takes it and resumes from
		// there, and the embedded log keeps its epoch: a second snapshot
		// would mean a position was lost.
		d.bad = append(d.bad, fmt.Sprintf("snapshot %d at %s/%d (resync %v): the device's position was lost", d.snaps, s.Epoch, s.Seq, s.Resync))
	}
}

func (d *crashDevice) onMessage(e client.Event) {
	body := string(e.Entry.GetSource().GetMessage().GetBody())
	var from, to, k int
	_, err := fmt.Sscanf(body, "m %d %d %d", &from, &to, &k)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.bad = append(d.bad, fmt.Sprintf("unexpected message %q", body))
		return
	}
	st := crashStream{from, to}
	d.got[st] = append(d.got[st], k)
}

func (d *crashDevice) onKick(k client.Kicked) {
	d.mu.Lock()
	d.kicks = append(d.kicks, k)
	d.mu.Unlock()
}

// crashWorld is the devices, the messages sent, and the checks.
type crashWorld struct {
	t      *testing.T
	srv    *crashServer
	users  int
	tokens []string

	mu      sync.Mutex
	devices []*crashDevice
	started map[crashStream]int // messages whose send started, per stream
	evicted int
	active  []bool // after verify: per device, whether it holds a session

	reconnects atomic.Int64
}

// login dials a device, retrying with the same login ID until the server
// answers (a login whose answer a kill lost may be in the log; the retry
// with its login ID is then a reconnect that evicts nobody). nil when the
// deadline passes.
func (w *crashWorld) login(es e2eServer, u int, platform int32, loginID string, stable bool) *crashDevice {
	d := &crashDevice{user: u, loginID: loginID, stable: stable, got: map[crashStream][]int{}, snapOK: make(chan struct{})}
	mod := func(c *client.Config) {
		c.AutoLogin = true
		c.Handlers = client.Handlers{
			OnMessage: d.onMessage, OnSnapshot: d.onSnapshot,
			OnUserDidLoginFromOtherDevice: d.onKick, OnUserKickedByOtherDevice: d.onKick,
			OnUserRemoved: d.onKick, OnPasswordChanged: d.onKick,
			OnReconnected: func() { w.reconnects.Add(1) },
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		dev, err := es.dial(w.t, crashApp, crashUser(u), w.tokens[u], platform, loginID, "", loginID, mod)
		if err == nil {
			d.c = dev.c
			break
		}
		if time.Now().After(deadline) {
			w.t.Errorf("login %s: still refused after 60s: %v", loginID, err)
			return nil
		}
		time.Sleep(30 * time.Millisecond)
	}
	// The device's position starts at its snapshot (see from). One evicted
	// before it had one starts nowhere: verify checks only its order.
	for waiting := true; waiting; {
		select {
		case <-d.snapOK:
			waiting = false
		case <-time.After(50 * time.Millisecond):
			d.mu.Lock()
			kicked := len(d.kicks) > 0
			d.mu.Unlock()
			if kicked {
				waiting = false
			} else if time.Now().After(deadline) {
				w.t.Errorf("login %s: no snapshot after 60s", loginID)
				waiting = false
			}
		}
	}
	w.mu.Lock()
	d.from = make(map[crashStream]int, len(w.started))
	for st, n := range w.started {
		d.from[st] = n
	}
	w.devices = append(w.devices, d)
	w.mu.Unlock()
	return d
}

// send is one user's stable device sending until stop: 1:1 messages to
// the other users and messages to the group, one at a time, each resent
// with its client id until the server acknowledges it.
func (w *crashWorld) send(d *crashDevice, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(uint64(d.user), 99))
	for {
		select {
		case <-stop:
			return
		case <-time.After(time.Duration(5+rng.IntN(20)) * time.Millisecond):
		}
		st := crashStream{d.user, -1}
		m := client.Message{ChatType: pb.ChatType_CHAT_TYPE_GROUP, To: crashGroup, ContentType: "text/plain"}
		if rng.IntN(4) != 0 {
			st.to = (d.user + 1 + rng.IntN(w.users-1)) % w.users
			m = client.Message{ChatType: pb.ChatType_CHAT_TYPE_USER, To: crashUser(st.to), ContentType: "text/plain"}
		}
		w.mu.Lock()
		k := w.started[st]
		w.started[st] = k + 1
		w.mu.Unlock()
		m.ClientMsgID = fmt.Sprintf("u%d-%d-%d", st.from, st.to, k)
		m.Body = []byte(fmt.Sprintf("m %d %d %d", st.from, st.to, k))
		deadline := time.Now().Add(60 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			_, err := d.c.Send(ctx, m)
			cancel()
			if err == nil {
				break
			}
			switch client.CodeOf(err) {
			case 0, 1009, 1010, 1018, 1019: // not decided, or not known: the same id again
			default:
				w.t.Errorf("send %s refused: %v", m.ClientMsgID, err)
				return
			}
			if time.Now().After(deadline) {
				w.t.Errorf("send %s not acknowledged after 60s: %v", m.ClientMsgID, err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// rotate logs new devices in for user u on platform 1 until stop; with a
// limit of 2 each one from the third on evicts the oldest (206).
func (w *crashWorld) rotate(es e2eServer, u int, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(uint64(u), 7))
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-time.After(time.Duration(100+rng.IntN(500)) * time.Millisecond):
		}
		if w.login(es, u, 1, fmt.Sprintf("u%d-r%d", u, i), false) == nil {
			return
		}
	}
}

// verify waits for the devices to settle (each either answers a ping on a
// live session or has stopped with a kick) and for the messages to
// arrive, then checks what every device received.
func (w *crashWorld) verify() {
	t := w.t
	w.mu.Lock()
	devices := append([]*crashDevice(nil), w.devices...)
	final := make(map[crashStream]int, len(w.started))
	for st, n := range w.started {
		final[st] = n
	}
	w.mu.Unlock()

	// Who holds a session: a ping answered, or the client's stop reason.
	active := make([]bool, len(devices))
	var wg sync.WaitGroup
	for i, d := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := d.c.Ping(ctx)
			switch code := client.CodeOf(err); {
			case err == nil:
				active[i] = true
			case code == client.CodeLoginOtherDevice:
			default:
				t.Errorf("device %s: neither logged in nor evicted: %v", d.loginID, err)
			}
		}()
	}
	wg.Wait()

	// expected: the streams a device of user u must receive.
	expected := func(d *crashDevice, st crashStream) (lo, hi int, ok bool) {
		if st.from == d.user || (st.to != -1 && st.to != d.user) {
			return 0, 0, false
		}
		return d.from[st], final[st], true
	}
	complete := func(d *crashDevice) bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		for st := range final {
			lo, hi, ok := expected(d, st)
			if !ok || lo >= hi {
				continue
			}
			g := d.got[st]
			if len(g) == 0 || g[len(g)-1] < hi-1 {
				return false
			}
		}
		return true
	}
	told := func(d *crashDevice) bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return len(d.kicks) > 0
	}
	deadline := time.Now().Add(60 * time.Second)
	for i, d := range devices {
		for active[i] && !complete(d) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		// A stopped client runs its kick handler after the events queued
		// before the kick (client.dispatch): wait for it, not for the ping.
		for !active[i] && !told(d) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
	}

	for i, d := range devices {
		d.mu.Lock()
		for _, b := range d.bad {
			t.Errorf("device %s: %s", d.loginID, b)
		}
		if d.stable && !active[i] {
			t.Errorf("device %s (never over the limit) lost its session; kicks %+v", d.loginID, d.kicks)
		}
		if active[i] && len(d.kicks) > 0 {
			t.Errorf("device %s holds a session but was told it was kicked: %+v", d.loginID, d.kicks)
		}
		if !active[i] {
			if len(d.kicks) != 1 || d.kicks[0].Code != client.CodeLoginOtherDevice {
				t.Errorf("device %s evicted, told %+v", d.loginID, d.kicks)
			}
			w.evicted++
		}
		for st, g := range d.got {
			hi := final[st]
			for j, k := range g {
				if k < 0 || k >= hi {
					t.Errorf("device %s: stream %v message %d was never sent (%d were)", d.loginID, st, k, hi)
				}
				if j > 0 && k != g[j-1]+1 {
					t.Errorf("device %s: stream %v received %d after %d (duplicate, reordered or a gap): %v", d.loginID, st, k, g[j-1], clip(g, j))
					break
				}
			}
		}
		if active[i] {
			for st := range final {
				lo, hi, ok := expected(d, st)
				if !ok || lo >= hi {
					continue
				}
				g := d.got[st]
				if len(g) == 0 || g[0] > lo || g[len(g)-1] != hi-1 {
					t.Errorf("device %s (logged in when %d messages of stream %v had started): received %s of %d", d.loginID, lo, st, span(g), hi)
				}
			}
		}
		d.mu.Unlock()
	}
	w.active = active
}

// closeAll closes every client, so none reconnects while the data
// directory is recovered.
func (w *crashWorld) closeAll() {
	var wg sync.WaitGroup
	for _, d := range w.devices {
		wg.Add(1)
		go func() { defer wg.Done(); d.c.Close() }()
	}
	wg.Wait()
}

// verifyLog recovers the data directory as the server does and compares
// the sessions the log holds with the devices that hold one, then the
// recovered digest with a rebuild from offset 0.
func (w *crashWorld) verifyLog(data string) {
	t := w.t
	ctx := context.Background()
	n, err := node.New(ctx, node.Options{Dir: data})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := n.Settle(sctx); err != nil {
		t.Fatal(err)
	}
	for u := range w.users {
		ss, err := n.Store.Devices(crashApp, crashUser(u))
		if err != nil {
			t.Fatal(err)
		}
		var inLog, held []string
		for _, s := range ss {
			inLog = append(inLog, s.LoginId)
		}
		for i, d := range w.devices {
			if d.user == u && w.active[i] {
				held = append(held, d.loginID)
			}
		}
		sort.Strings(inLog)
		sort.Strings(held)
		if strings.Join(inLog, ",") != strings.Join(held, ",") {
			t.Errorf("user %d: the log's sessions %v, the devices holding one %v", u, inLog, held)
		}
	}
	live, err := n.Store.Digest()
	if err != nil {
		t.Fatal(err)
	}
	rb, err := projections.Rebuild(ctx, n.Log, projections.Options{Dir: filepath.Join(t.TempDir(), "rebuild")})
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	if rebuilt, _ := rb.Digest(); live != rebuilt {
		diff, _ := n.Store.Diff(rb, 20)
		t.Errorf("digest after the kills %s != rebuild %s; differences (live, rebuild):\n%s", live, rebuilt, strings.Join(diff, "\n"))
	}
}

// clip is g around index j, for a failure message.
func clip(g []int, j int) []int { return g[max(0, j-3):min(len(g), j+3)] }

// span describes a received sequence briefly.
func span(g []int) string {
	if len(g) == 0 {
		return "nothing"
	}
	return fmt.Sprintf("%d messages, %d..%d", len(g), g[0], g[len(g)-1])
}

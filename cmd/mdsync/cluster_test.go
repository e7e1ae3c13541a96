package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/mdsync/mdsync/client"
	"github.com/mdsync/mdsync/engine"
)

// Cluster tests run several `mdsync serve --kafka-brokers` processes on one
// topic and consumer group: on the brokers in MDSYNC_KAFKA_BROKERS (the
// real broker in .ci/kafka/ci.sh), else on a kfake cluster in this test
// process, which the binaries reach over TCP like any broker.

const (
	clusterParts    = 4
	clusterAdmin    = "cluster-admin"
	clusterTokenKey = "cluster-token-key-0123456789abcdef0123456789"
)

// clusterBrokers returns the brokers to run on and whether they are a real
// Kafka (MDSYNC_KAFKA_BROKERS) rather than kfake.
func clusterBrokers(t *testing.T) (string, bool) {
	t.Helper()
	if b := os.Getenv("MDSYNC_KAFKA_BROKERS"); b != "" {
		return b, true
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return strings.Join(c.ListenAddrs(), ","), false
}

// freeAddr returns a 127.0.0.1 address nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// serveCluster is a set of serve processes sharing one topic, group and
// bus topic, admin token and token key.
type serveCluster struct {
	t                 *testing.T
	bin, brokers      string
	topic, group, bus string
	mu                sync.Mutex
	procs             []*serveProc
	logs              []string
	starts            int
}

// serveProc is one process slot: its data dir and address survive restarts.
type serveProc struct {
	dir, addr string
	cmd       *exec.Cmd
	done      chan struct{} // closed when cmd exited
}

func (p *serveProc) base() string { return "http://" + p.addr }
func (p *serveProc) ws() string   { return "ws://" + p.addr + "/v1/ws" }

func newServeCluster(t *testing.T, brokers string, n int) *serveCluster {
	t.Helper()
	id := fmt.Sprintf("%d", time.Now().UnixNano())
	name := strings.NewReplacer("/", ".", " ", "_").Replace(t.Name())
	c := &serveCluster{t: t, bin: buildFaultBin(t), brokers: brokers,
		topic: "mdsync-cluster." + name + "." + id, group: "mdsync-cluster-group." + name + "." + id,
		bus: "mdsync-cluster-bus." + name + "." + id}
	for i := 0; i < n; i++ {
		c.procs = append(c.procs, &serveProc{dir: filepath.Join(t.TempDir(), fmt.Sprintf("p%d", i)), addr: freeAddr(t)})
	}
	t.Cleanup(func() {
		for i := range c.procs {
			c.kill(i)
		}
		if t.Failed() {
			for _, l := range c.logs {
				b, _ := os.ReadFile(l)
				if len(b) > 3000 {
					b = b[len(b)-3000:]
				}
				t.Logf("%s (tail):\n%s", filepath.Base(l), b)
			}
		}
	})
	return c
}

// start starts process i on its data dir and address (it must not run).
func (c *serveCluster) start(i int) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.procs[i]
	c.starts++
	logPath := filepath.Join(filepath.Dir(p.dir), fmt.Sprintf("serve-%d-%d.log", i, c.starts))
	lf, err := os.Create(logPath)
	if err != nil {
		c.t.Fatal(err)
	}
	c.logs = append(c.logs, logPath)
	p.cmd = exec.Command(c.bin, "serve", "--data", p.dir, "--addr", p.addr, "--partitions", fmt.Sprint(clusterParts),
		"--admin-token", clusterAdmin, "--token-key", clusterTokenKey, "--debug-addr", "",
		"--kafka-brokers", c.brokers, "--kafka-topic", c.topic, "--kafka-group", c.group, "--kafka-bus-topic", c.bus)
	p.cmd.Env = append(os.Environ(), "MDSYNC_CONFIG=")
	p.cmd.Stdout, p.cmd.Stderr = lf, lf
	if err := p.cmd.Start(); err != nil {
		lf.Close()
		c.t.Fatal(err)
	}
	done := make(chan struct{})
	p.done = done
	cmd := p.cmd
	go func() {
		cmd.Wait()
		lf.Close()
		close(done)
	}()
}

// kill SIGKILLs process i and waits until it exited; a no-op when it is
// not running.
func (c *serveCluster) kill(i int) { c.signal(i, syscall.SIGKILL) }

// stop SIGTERMs process i (a graceful shutdown: it leaves the group) and
// waits until it exited.
func (c *serveCluster) stop(i int) { c.signal(i, syscall.SIGTERM) }

func (c *serveCluster) signal(i int, sig syscall.Signal) {
	c.mu.Lock()
	p := c.procs[i]
	cmd, done := p.cmd, p.done
	p.cmd = nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// running reports whether process i was started and not stopped.
func (c *serveCluster) running(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.procs[i].cmd != nil
}

// ready reports whether GET /readyz of process i answers 200.
func (c *serveCluster) ready(i int) bool {
	resp, err := httpQuick.Get(c.procs[i].base() + "/readyz")
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

var httpQuick = &http.Client{Timeout: 2 * time.Second}

// waitReady polls /readyz of each process until it answers 200.
func (c *serveCluster) waitReady(limit time.Duration, procs ...int) {
	c.t.Helper()
	deadline := time.Now().Add(limit)
	for _, i := range procs {
		for !c.ready(i) {
			select {
			case <-c.procs[i].done:
				c.t.Fatalf("process %d exited before it was ready", i)
			default:
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("process %d not ready after %v", i, limit)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// userOnPartition returns a user of app whose stream is on partition p.
func userOnPartition(app, prefix string, p int32) string {
	for i := 0; ; i++ {
		u := fmt.Sprintf("%s%d", prefix, i)
		if engine.PartitionFor([]byte(engine.UserStream(app, u)), clusterParts) == p {
			return u
		}
	}
}

// refusal is a request's answer when it is not a success: HTTP status,
// code and message.
type refusal struct {
	what    string
	status  int
	code    int
	message string
}

// restOp submits ev with POST /v1/operations as the admin, once (no SDK
// retry), and returns nil on 200 with decision code 0.
func restOp(base string, ev map[string]any) *refusal {
	b, _ := json.Marshal(ev)
	req, _ := http.NewRequest("POST", base+"/v1/operations", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+clusterAdmin)
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpQuick.Do(req)
	if err != nil {
		return &refusal{what: "REST " + fmt.Sprint(ev["kind"]), message: err.Error()}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var a struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	json.Unmarshal(body, &a)
	if resp.StatusCode != 200 || a.Code != 0 {
		return &refusal{what: "REST " + fmt.Sprint(ev["kind"]), status: resp.StatusCode, code: a.Code, message: a.Message}
	}
	return nil
}

// restGet reads path as the admin, once, and returns nil on 200.
func restGet(base, path string) *refusal {
	req, _ := http.NewRequest("GET", base+path, nil)
	req.Header.Set("Authorization", "Bearer "+clusterAdmin)
	resp, err := httpQuick.Do(req)
	if err != nil {
		return &refusal{what: "GET " + path, message: err.Error()}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		var a struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		json.Unmarshal(body, &a)
		return &refusal{what: "GET " + path, status: resp.StatusCode, code: a.Code, message: a.Message}
	}
	return nil
}

// wsLoginAndSend logs a device in over a raw WebSocket (no SDK retry or
// redirect) and sends one message to `to`; it returns the first refusal.
func wsLoginAndSend(wsURL, app, user, token, loginID, to string) *refusal {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{Subprotocols: []string{client.Subprotocol}})
	if err != nil {
		return &refusal{what: "WS dial", message: err.Error()}
	}
	defer ws.CloseNow()
	write := func(v any) error {
		b, _ := json.Marshal(v)
		return ws.Write(ctx, websocket.MessageText, b)
	}
	next := func(types ...string) (map[string]any, error) {
		for {
			_, b, err := ws.Read(ctx)
			if err != nil {
				return nil, err
			}
			var m map[string]any
			if err := json.Unmarshal(b, &m); err != nil {
				return nil, err
			}
			for _, ty := range types {
				if m["type"] == ty {
					return m, nil
				}
			}
		}
	}
	answer := func(what string, m map[string]any, err error) *refusal {
		if err != nil {
			return &refusal{what: what, message: err.Error()}
		}
		if a := answerOf(m); a.Code != 0 {
			return &refusal{what: what, code: a.Code, message: a.Message}
		}
		return nil
	}
	if err := write(map[string]any{"type": "login", "id": "l", "app": app, "user": user, "token": token,
		"login_id": loginID, "platform": 2, "device_name": "ready-test"}); err != nil {
		return &refusal{what: "WS login", message: err.Error()}
	}
	m, err := next("login_result", "error")
	if r := answer("WS login", m, err); r != nil {
		return r
	}
	if err := write(map[string]any{"type": "op", "id": "m", "event": map[string]any{"kind": "KIND_MESSAGE_SEND", "client_op_id": "m-" + loginID,
		"message": map[string]any{"chat_type": "CHAT_TYPE_USER", "to": to, "client_msg_id": "m-" + loginID, "content_type": "text/plain", "body": "aGk="}}}); err != nil {
		return &refusal{what: "WS op", message: err.Error()}
	}
	m, err = next("result", "error")
	return answer("WS message", m, err)
}

// A serve process on Kafka SIGKILLed and restarted on its data dir: from
// the moment GET /readyz answers 200, no request — REST writes and reads,
// WebSocket logins and messages, for users on every partition — is refused
// with 1018 (owner not known), 1009 (being restored) or HTTP 503. This is
// node.Ready through the binary (issue 14: /readyz said ready 4.4 s
// before the process served anything).
func TestClusterReadyAfterSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary on Kafka")
	}
	brokers, _ := clusterBrokers(t)
	c := newServeCluster(t, brokers, 1)
	c.start(0)
	c.waitReady(60*time.Second, 0)
	const app = "ready"
	ctx := context.Background()
	r := client.NewREST(c.procs[0].base(), nil)
	admin := client.Credential{Admin: clusterAdmin}
	users := make([]string, clusterParts)
	tokens := make([]string, clusterParts)
	for p := int32(0); p < clusterParts; p++ {
		users[p] = userOnPartition(app, "u", p)
	}
	for p := int32(0); p < clusterParts; p++ {
		if err := r.RegisterUser(ctx, app, users[p], "password-"+users[p], admin); err != nil {
			t.Fatal(err)
		}
		tok, err := r.IssueToken(ctx, app, users[p], time.Hour, admin)
		if err != nil {
			t.Fatal(err)
		}
		tokens[p] = tok.Token
		if rf := wsLoginAndSend(c.procs[0].ws(), app, users[p], tokens[p], "before", users[(p+1)%clusterParts]); rf != nil {
			t.Fatalf("before the kill: %+v", *rf)
		}
	}

	for round := 0; round < 2; round++ {
		c.kill(0)
		restarted := time.Now()
		c.start(0)
		c.waitReady(60*time.Second, 0)
		ready := time.Now()
		// Requests from the moment of readiness, for 2 s, each partition
		// concurrently.
		var mu sync.Mutex
		var refused []string
		sent := 0
		for wave := 0; time.Since(ready) < 2*time.Second; wave++ {
			var wg sync.WaitGroup
			for p := int32(0); p < clusterParts; p++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					u, to := users[p], users[(p+1)%clusterParts]
					id := fmt.Sprintf("r%d-w%d", round, wave)
					var got []*refusal
					got = append(got, restOp(c.procs[0].base(), map[string]any{"app": app, "kind": "KIND_LOGIN", "client_op_id": "rest-" + id,
						"actor": map[string]any{"user": u, "login_id": "rest-" + id},
						"login": map[string]any{"login_id": "rest-" + id, "platform": 1, "device_name": "rest"}}))
					got = append(got, restGet(c.procs[0].base(), "/v1/apps/"+app+"/users/"+u+"/devices"))
					got = append(got, wsLoginAndSend(c.procs[0].ws(), app, u, tokens[p], "ws-"+id, to))
					mu.Lock()
					defer mu.Unlock()
					sent += len(got)
					for _, rf := range got {
						if rf != nil {
							refused = append(refused, fmt.Sprintf("%.3fs after ready, partition %d: %s: HTTP %d code %d %q",
								time.Since(ready).Seconds(), p, rf.what, rf.status, rf.code, rf.message))
						}
					}
				}()
			}
			wg.Wait()
		}
		if len(refused) > 0 {
			if len(refused) > 20 {
				refused = append(refused[:20], "…")
			}
			t.Fatalf("round %d: ready %.2fs after the restart, then %d of %d requests refused:\n%s",
				round, ready.Sub(restarted).Seconds(), len(refused), sent, strings.Join(refused, "\n"))
		}
		t.Logf("round %d: SIGKILL, restart, /readyz 200 after %.2fs; %d requests in the next 2s, none refused",
			round, ready.Sub(restarted).Seconds(), sent)
	}
}

// e2eCluster spreads an e2eServer's devices over a cluster's processes.
type e2eCluster struct {
	ws   []string // every process's WebSocket URL
	next atomic.Int64
	// ownerWS is the WebSocket URL of the process that owns user.
	ownerWS func(app, user string) string
}

// wsURL is the URL the next device dials: the server's, or in a cluster
// each process's in turn (the SDK follows a 1018 redirect to the owner).
func (s e2eServer) wsURL() string {
	if s.cluster == nil {
		return s.ws
	}
	return s.cluster.ws[int(s.cluster.next.Add(1))%len(s.cluster.ws)]
}

// currentLog returns what process i's current run has logged so far.
func (c *serveCluster) currentLog(i int) []byte {
	c.mu.Lock()
	var path string
	for _, l := range c.logs {
		if strings.HasPrefix(filepath.Base(l), fmt.Sprintf("serve-%d-", i)) {
			path = l
		}
	}
	c.mu.Unlock()
	b, _ := os.ReadFile(path)
	return b
}

// lastGeneration returns the generation of the last "partitions assigned"
// line in process i's current log, 0 when none.
func (c *serveCluster) lastGeneration(i int) int {
	b := c.currentLog(i)
	gen := 0
	for _, m := range generationRE.FindAllSubmatch(b, -1) {
		gen, _ = strconv.Atoi(string(m[1]))
	}
	return gen
}

var (
	generationRE = regexp.MustCompile(`partitions assigned generation=(\d+)`)
	servingRE    = regexp.MustCompile(`serving partition partition=(\d+) generation=(\d+)`)
)

// owners reads, from the processes' logs, which process serves each
// partition in the current generation (call it once waitStable returned).
func (c *serveCluster) owners() map[int32]int {
	out := map[int32]int{}
	for i := range c.procs {
		gen := c.lastGeneration(i)
		b := c.currentLog(i)
		for _, m := range servingRE.FindAllSubmatch(b, -1) {
			p, _ := strconv.Atoi(string(m[1]))
			if g, _ := strconv.Atoi(string(m[2])); g == gen {
				out[int32(p)] = i
			}
		}
	}
	return out
}

// waitStable waits until every running process is ready and was last
// assigned partitions in the same generation: every member joined, no
// rebalance is pending.
func (c *serveCluster) waitStable(limit time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		gen, ok := -1, true
		for i := range c.procs {
			if !c.running(i) {
				continue
			}
			select {
			case <-c.procs[i].done:
				c.t.Fatalf("process %d exited on its own", i)
			default:
			}
			g := c.lastGeneration(i)
			ok = ok && g > 0 && (gen == -1 || g == gen) && c.ready(i)
			gen = g
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("cluster not stable after %v", limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The seed scenarios end to end (playSeedScenarios, unchanged) on three
// serve processes on Kafka: devices dial the processes in turn (the SDK
// follows 1018 redirects to their user's owner), operations owned
// elsewhere (a policy, a message to a user on another partition) are
// forwarded, REST calls about a user reach the user's owner.
func TestClusterSeedScenarios(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three binaries on Kafka")
	}
	brokers, _ := clusterBrokers(t)
	c := newServeCluster(t, brokers, 3)
	for i := range c.procs {
		c.start(i)
	}
	c.waitStable(90 * time.Second)
	// REST calls all go to process 0: it forwards operations and reads
	// about a user to the user's owner (adapters/forward), and accounts are
	// events every process follows.
	owners := c.owners()
	if len(owners) != clusterParts {
		t.Fatalf("owners from the logs: %v", owners)
	}
	cl := &e2eCluster{ownerWS: func(app, user string) string {
		return c.procs[owners[engine.PartitionFor([]byte(engine.UserStream(app, user)), clusterParts)]].ws()
	}}
	for _, p := range c.procs {
		cl.ws = append(cl.ws, p.ws())
	}
	playSeedScenarios(t, e2eServer{base: c.procs[0].base(), ws: c.procs[0].ws(), admin: clusterAdmin, cluster: cl})
}

package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/mdsync/mdsync/adapters/kafkalog"
	"github.com/mdsync/mdsync/client"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// TestNemesis runs three serve processes on Kafka with devices of many
// users spread over them (the Go SDK): each user has one device (platform
// 2) that sends 1:1 messages to the others and receives theirs, and two
// admin clients that log the user in on platform 1 past its limit and kick
// devices, through any process. Meanwhile a nemesis SIGKILLs and restarts
// processes, stops one gracefully and starts it again (it leaves and
// joins the group: rebalances) and, on the real broker with
// MDSYNC_KAFKA_SCRIPTS, restarts the broker on its data.
//
// At the end, once every operation not yet answered was retried to its
// decision on the healed cluster:
//   - every acknowledged operation is in the log, applied exactly once, at
//     its acknowledged position with its acknowledged code (a rebuild from
//     the log, and each partition's count of distinct operations);
//   - every device received every acknowledged message addressed to it
//     exactly once, each sender's in the order sent, and no device was
//     resynced (each follows its timeline live, far within retention);
//   - each user's history of login and kick decisions is linearizable
//     against engine.ApplySession (porcupine, sessionmodel_test.go).
//
// MDSYNC_NEMESIS_DURATION sets the fault phase (default 20s on kfake, 2m
// on a real broker; the long mode is 30m, docs/operations.md).
func TestNemesis(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three binaries on Kafka under faults")
	}
	brokers, onReal := clusterBrokers(t)
	dur := 20 * time.Second
	if onReal {
		dur = 2 * time.Minute
	}
	if s := os.Getenv("MDSYNC_NEMESIS_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("MDSYNC_NEMESIS_DURATION: %v", err)
		}
		dur = d
	}
	scripts := ""
	if onReal {
		scripts = os.Getenv("MDSYNC_KAFKA_SCRIPTS")
	}
	c := newServeCluster(t, brokers, 3)
	for i := range c.procs {
		c.start(i)
	}
	c.waitStable(90 * time.Second)

	const app, users, limit = "nemesis", 8, 3
	w := &nemesisWorld{t: t, c: c, app: app}
	ctx := context.Background()
	admin := client.Credential{Admin: clusterAdmin}
	pol := &pb.PolicySet{Mode: pb.PlatformMode_PLATFORM_MODE_MULTI, DefaultLimit: limit, AutoLogin: pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST}
	if _, err := client.NewREST(c.procs[0].base(), nil).SetPolicy(ctx, app, pol, admin); err != nil {
		t.Fatal(err)
	}
	model := engine.DefaultPolicy()
	model.DefaultLimit = limit
	for u := 0; u < users; u++ {
		name := fmt.Sprintf("n%d", u)
		w.users = append(w.users, name)
		var tok string
		for i, p := range c.procs {
			r := client.NewREST(p.base(), nil)
			if err := r.RegisterUser(ctx, app, name, "password-"+name, admin); err != nil && client.CodeOf(err) != 1006 {
				t.Fatalf("register %s on process %d: %v", name, i, err)
			}
			if i == 0 {
				tk, err := r.IssueToken(ctx, app, name, 24*time.Hour, admin)
				if err != nil {
					t.Fatal(err)
				}
				tok = tk.Token
			}
		}
		w.devices = append(w.devices, w.dial(name, tok, c.procs[u%len(c.procs)].ws()))
	}

	// Load.
	loadCtx, stopLoad := context.WithCancel(ctx)
	var load sync.WaitGroup
	for u := range w.users {
		load.Add(1)
		go func() { defer load.Done(); w.sender(loadCtx, u) }()
		for k := 0; k < 2; k++ {
			load.Add(1)
			go func() { defer load.Done(); w.churner(loadCtx, u, k) }()
		}
	}

	// Faults.
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 14))
	start := time.Now()
	var kills, leaves, brokerRestarts int
	for time.Since(start) < dur {
		time.Sleep(time.Duration(1500+rng.IntN(2000)) * time.Millisecond)
		i := rng.IntN(len(c.procs))
		switch a := rng.IntN(10); {
		case a < 5:
			c.kill(i)
			kills++
			time.Sleep(time.Duration(500+rng.IntN(2500)) * time.Millisecond)
			c.start(i)
		case a < 8:
			c.stop(i) // leaves the group: a rebalance
			leaves++
			time.Sleep(time.Duration(1000+rng.IntN(2000)) * time.Millisecond)
			c.start(i) // joins: another
		case scripts != "":
			restartBroker(t, scripts)
			brokerRestarts++
		}
		// One fault at a time: the next starts from a healed cluster (every
		// process ready, the group settled), so each is a fault the system
		// must absorb, not a storm it cannot make progress in.
		c.waitStable(3 * time.Minute)
		t.Logf("%5.1fs: %d kills, %d leave/join, %d broker restarts; %d operations acknowledged",
			time.Since(start).Seconds(), kills, leaves, brokerRestarts, w.acked.Load())
	}
	healed := time.Now()
	stopLoad()
	load.Wait()
	// Retry every operation still unanswered to its decision: a retry with
	// the same client id appends nothing new if the first attempt got in.
	w.finish(ctx)
	t.Logf("healed and drained in %v", time.Since(healed).Round(100*time.Millisecond))

	anomalies := w.checkDelivery()
	anomalies += w.checkLog(ctx, brokers)
	anomalies += w.checkLinearizable(model)
	gens := 0
	for i := range c.procs {
		gens = max(gens, c.lastGeneration(i))
	}
	t.Logf("nemesis %v on %s: %d operations acknowledged (%d messages, %d logins and kicks), %d kills, %d leave/join, %d broker restarts, %d rebalances (group generations), %d anomalies",
		dur, map[bool]string{true: "a real broker", false: "kfake"}[onReal], w.acked.Load(), w.messagesAcked(), len(w.sessionOps()),
		kills, leaves, brokerRestarts, gens, anomalies)
	if anomalies > 0 {
		t.Fatalf("%d anomalies", anomalies)
	}
}

func restartBroker(t *testing.T, scripts string) {
	t.Helper()
	stop := exec.Command("bash", filepath.Join(scripts, "stop.sh"))
	stop.Env = append(os.Environ(), "KAFKA_KEEP=1")
	if out, err := stop.CombinedOutput(); err != nil {
		t.Fatalf("stop.sh: %v\n%s", err, out)
	}
	time.Sleep(time.Second)
	st := exec.Command("bash", filepath.Join(scripts, "start.sh"))
	st.Env = append(os.Environ(), "KAFKA_REUSE=1")
	if os.Getenv("KAFKA_START_TIMEOUT") == "" {
		// A broker that carries the topics of every earlier suite reloads
		// them all on a restart: on a busy 2-core machine that exceeded
		// start.sh's default 90 s.
		st.Env = append(st.Env, "KAFKA_START_TIMEOUT=300")
	}
	if out, err := st.CombinedOutput(); err != nil {
		t.Fatalf("start.sh (reuse): %v\n%s", err, out)
	}
}

type nemesisWorld struct {
	t     *testing.T
	c     *serveCluster
	app   string
	users []string

	devices []*nemesisDevice
	acked   atomic.Int64

	mu       sync.Mutex
	sent     []nemesisMsg    // acknowledged messages, per sender in send order
	pending  []nemesisMsg    // sent, not acknowledged before the load stopped
	sessOps  []nemesisSessOp // login and kick decisions, and those still pending
	failures []string
}

type nemesisMsg struct {
	from, to, id string
	seq          int
	part         int32
	off          int64
}

type nemesisSessOp struct {
	user, op  string
	client    int
	in        sessionInput
	call, ret int64
	out       sessionOutput
	part      int32
	off       int64
	decided   bool
}

// nemesisDevice is a user's device: its received messages' ids, in order.
type nemesisDevice struct {
	user string
	c    *client.Client
	mu   sync.Mutex
	got  []string
	// resync is set once the device was given a resync snapshot.
	resync bool
}

func (w *nemesisWorld) dial(user, token, url string) *nemesisDevice {
	w.t.Helper()
	d := &nemesisDevice{user: user}
	cfg := client.Config{URL: url, App: w.app, User: user, Token: token, Platform: 2, DeviceName: "nemesis", LoginID: "rx-" + user,
		AutoLogin: true, AckInterval: 50 * time.Millisecond, ReconnectMin: 50 * time.Millisecond, ReconnectMax: time.Second,
		LoginTimeout: 5 * time.Second,
		Handlers: client.Handlers{
			OnMessage: func(e client.Event) {
				m := e.Entry.GetSource().GetMessage()
				if m.GetTo() != user || e.Entry.GetSource().GetActor().GetUser() == user {
					return
				}
				d.mu.Lock()
				d.got = append(d.got, m.GetClientMsgId())
				d.mu.Unlock()
			},
			OnSnapshot: func(s client.Snapshot) {
				if s.Resync {
					d.mu.Lock()
					d.resync = true
					d.mu.Unlock()
				}
			},
			OnUserDidLoginFromOtherDevice: func(k client.Kicked) { w.fail("%s's device kicked: %+v", user, k) },
			OnUserKickedByOtherDevice:     func(k client.Kicked) { w.fail("%s's device kicked: %+v", user, k) },
		}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, cfg)
	if err != nil {
		w.t.Fatalf("dial %s: %v", user, err)
	}
	d.c = c
	w.t.Cleanup(func() { c.Close() })
	return d
}

func (w *nemesisWorld) fail(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.failures = append(w.failures, fmt.Sprintf(format, args...))
}

// sender sends messages from user u's device to the others in turn, one at
// a time: a message not acknowledged is sent again with the same client
// message id until it is (or until the load stops: finish retries it).
func (w *nemesisWorld) sender(ctx context.Context, u int) {
	d := w.devices[u]
	for seq := 0; ctx.Err() == nil; seq++ {
		to := w.users[(u+1+seq%(len(w.users)-1))%len(w.users)]
		m := nemesisMsg{from: w.users[u], to: to, id: fmt.Sprintf("m-%s-%d", w.users[u], seq), seq: seq}
		if !w.sendUntil(ctx, d, &m) {
			w.mu.Lock()
			w.pending = append(w.pending, m)
			w.mu.Unlock()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (w *nemesisWorld) sendUntil(ctx context.Context, d *nemesisDevice, m *nemesisMsg) bool {
	for ctx.Err() == nil {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		res, err := d.c.Send(sctx, client.Message{ChatType: pb.ChatType_CHAT_TYPE_USER, To: m.to, ClientMsgID: m.id,
			ContentType: "text/plain", Body: []byte(m.id)})
		cancel()
		if err == nil {
			m.part, m.off = res.Partition, res.Offset
			w.mu.Lock()
			w.sent = append(w.sent, *m)
			w.mu.Unlock()
			w.acked.Add(1)
			return true
		}
		var ce *client.Error
		if errors.As(err, &ce) && ce.Code != 1009 && ce.Code != 1018 && ce.Code != 1019 && ce.Code != 1010 {
			w.fail("message %s refused: %v", m.id, err)
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// churner logs user u in on platform 1 with a new login ID each time (past
// the limit: each login beyond it evicts the earliest), and now and then
// kicks one of the user's earlier logins, through a random process.
func (w *nemesisWorld) churner(ctx context.Context, u, k int) {
	rng := rand.New(rand.NewPCG(uint64(u), uint64(k)))
	user := w.users[u]
	var mine []string
	for n := 0; ctx.Err() == nil; n++ {
		op := nemesisSessOp{user: user, op: fmt.Sprintf("c%d-%d", k, n), client: k}
		if len(mine) > 0 && rng.IntN(4) == 0 {
			op.in = sessionInput{kind: pb.Kind_KIND_KICK_DEVICE, loginID: mine[rng.IntN(len(mine))]}
		} else {
			op.in = sessionInput{kind: pb.Kind_KIND_LOGIN, loginID: fmt.Sprintf("d%d-%d", k, n), platform: 1}
			mine = append(mine, op.in.loginID)
		}
		op.call = time.Now().UnixNano()
		w.decide(ctx, &op)
		w.mu.Lock()
		w.sessOps = append(w.sessOps, op)
		w.mu.Unlock()
		if !op.decided {
			return
		}
		time.Sleep(time.Duration(20+rng.IntN(60)) * time.Millisecond)
	}
}

func (w *nemesisWorld) event(op *nemesisSessOp) *pb.Event {
	ev := &pb.Event{App: w.app, ClientOpId: op.op, Kind: op.in.kind, Actor: &pb.Actor{User: op.user}}
	if op.in.kind == pb.Kind_KIND_LOGIN {
		ev.Payload = &pb.Event_Login{Login: &pb.Login{LoginId: op.in.loginID, Platform: op.in.platform, DeviceName: "churn"}}
	} else {
		ev.Payload = &pb.Event_KickDevice{KickDevice: &pb.KickDevice{LoginId: op.in.loginID}}
	}
	return ev
}

var nemesisHTTP = &http.Client{Timeout: 5 * time.Second}

// decide submits op through random running processes until a decision
// (accepted or refused by the log) comes back, or ctx ends.
func (w *nemesisWorld) decide(ctx context.Context, op *nemesisSessOp) {
	rng := rand.New(rand.NewPCG(uint64(op.call), 1))
	for ctx.Err() == nil {
		i := rng.IntN(len(w.c.procs))
		if !w.c.running(i) {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		d, _ := client.NewREST(w.c.procs[i].base(), nemesisHTTP).Submit(sctx, w.event(op), client.Credential{Admin: clusterAdmin})
		cancel()
		if d != nil { // decided by the log: accepted, or refused in log order
			op.ret = time.Now().UnixNano()
			op.out = sessionOutput{code: d.Code, ended: endedIDs(d)}
			op.part, op.off, op.decided = d.Partition, d.Offset, true
			w.acked.Add(1)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// finish retries every unanswered operation until it is decided.
func (w *nemesisWorld) finish(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	w.mu.Lock()
	pending := w.pending
	w.pending = nil
	ops := w.sessOps
	w.mu.Unlock()
	for _, m := range pending {
		if !w.sendUntil(ctx, w.devices[slices.Index(w.users, m.from)], &m) {
			w.fail("message %s never acknowledged", m.id)
		}
	}
	for i := range ops {
		if !ops[i].decided {
			w.decide(ctx, &ops[i])
			if !ops[i].decided {
				w.fail("%s/%s never decided", ops[i].user, ops[i].op)
			}
		}
	}
	w.mu.Lock()
	w.sessOps = ops
	w.mu.Unlock()
}

func (w *nemesisWorld) messagesAcked() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.sent)
}

func (w *nemesisWorld) sessionOps() []nemesisSessOp {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sessOps
}

// checkDelivery waits until every device has every acknowledged message
// addressed to it, then checks exactly once and per-sender order.
func (w *nemesisWorld) checkDelivery() int {
	t := w.t
	w.mu.Lock()
	sent := w.sent
	anomalies := len(w.failures)
	for _, f := range w.failures {
		t.Errorf("anomaly: %s", f)
	}
	w.mu.Unlock()
	want := map[string][]nemesisMsg{}
	for _, m := range sent {
		want[m.to] = append(want[m.to], m)
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, d := range w.devices {
		for {
			d.mu.Lock()
			have := map[string]bool{}
			for _, id := range d.got {
				have[id] = true
			}
			missing := 0
			for _, m := range want[d.user] {
				if !have[m.id] {
					missing++
				}
			}
			got, resync := slices.Clone(d.got), d.resync
			d.mu.Unlock()
			if missing == 0 || time.Now().After(deadline) {
				if resync {
					// Each device reads its timeline live, far within the
					// default retention (engine.DefaultTimelineMaxEntries):
					// retention never says resync here.
					t.Errorf("anomaly: %s's device was resynced", d.user)
					anomalies++
				}
				if missing > 0 {
					t.Errorf("anomaly: %s's device misses %d of %d acknowledged messages", d.user, missing, len(want[d.user]))
					anomalies++
				}
				seen := map[string]bool{}
				last := map[string]int{}
				for _, id := range got {
					if seen[id] {
						t.Errorf("anomaly: %s's device received %s twice", d.user, id)
						anomalies++
					}
					seen[id] = true
					f := strings.Split(id, "-") // m-<from>-<seq>
					seq, _ := strconv.Atoi(f[2])
					if prev, ok := last[f[1]]; ok && seq <= prev {
						t.Errorf("anomaly: %s's device received %s after seq %d from %s", d.user, id, prev, f[1])
						anomalies++
					}
					last[f[1]] = seq
				}
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return anomalies
}

// checkLog reads the log back: a rebuild from offset 0 holds every
// acknowledged operation's decision at its acknowledged position and code,
// and each partition applied each distinct operation exactly once.
func (w *nemesisWorld) checkLog(ctx context.Context, brokers string) int {
	t := w.t
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	lg, err := kafkalog.Open(ctx, kafkalog.Options{Brokers: strings.Split(brokers, ","), Topic: w.c.topic, Partitions: clusterParts})
	if err != nil {
		t.Fatal(err)
	}
	defer lg.Close()
	// The processes still run and may still append (presence records as
	// the load's devices disconnect, the relay's last copies): fix the
	// ends once, and rebuild and read exactly that prefix.
	ends := make([]int64, clusterParts)
	for p := range ends {
		if ends[p], err = lg.End(ctx, int32(p)); err != nil {
			t.Fatal(err)
		}
	}
	rb, err := projections.Open(projections.Options{Dir: filepath.Join(t.TempDir(), "rebuild"), Partitions: lg.Partitions()})
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	if err := rb.CatchUpTo(ctx, lg, ends); err != nil {
		t.Fatal(err)
	}
	anomalies := 0
	var records int64
	for p := int32(0); p < clusterParts; p++ {
		end := ends[p]
		evs := readPartitionTo(ctx, t, lg, p, end)
		records += end
		if why := appliedOnce(rb.Checkpoint(p), end, evs); why != "" {
			t.Errorf("anomaly: partition %d: %s", p, why)
			anomalies++
		}
	}
	check := func(user, op string, part int32, off int64, code int32) {
		d, ok, err := rb.Decision(w.app, engine.UserStream(w.app, user), user, op)
		if err != nil || !ok {
			t.Errorf("anomaly: acknowledged %s/%s not in the log (%v)", user, op, err)
			anomalies++
			return
		}
		if d.Partition != part || d.Offset != off || d.Code != code {
			t.Errorf("anomaly: %s/%s acknowledged at %d/%d code %d, the log says %d/%d code %d", user, op, part, off, code, d.Partition, d.Offset, d.Code)
			anomalies++
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, m := range w.sent {
		check(m.from, m.id, m.part, m.off, 0)
	}
	for _, o := range w.sessOps {
		if o.decided {
			check(o.user, o.op, o.part, o.off, o.out.code)
		}
	}
	t.Logf("log: %d records over %d partitions; %d messages and %d session operations found at their acknowledged positions",
		records, clusterParts, len(w.sent), len(w.sessOps))
	return anomalies
}

// checkLinearizable checks each user's login and kick decisions against
// engine.ApplySession with porcupine.
func (w *nemesisWorld) checkLinearizable(pol *pb.Policy) int {
	t := w.t
	byUser := map[string][]porcupine.Operation{}
	for _, o := range w.sessionOps() {
		if !o.decided {
			continue
		}
		byUser[o.user] = append(byUser[o.user], porcupine.Operation{ClientId: o.client, Input: o.in, Call: o.call, Output: o.out, Return: o.ret})
	}
	anomalies := 0
	for user, h := range byUser {
		switch res := porcupine.CheckOperationsTimeout(sessionModel(pol), h, time.Minute); res {
		case porcupine.Ok:
		case porcupine.Unknown:
			t.Logf("%s: %d operations: porcupine timed out (not counted as an anomaly)", user, len(h))
		default:
			t.Errorf("anomaly: %s's %d login/kick decisions are not linearizable against engine.ApplySession", user, len(h))
			anomalies++
		}
	}
	return anomalies
}

package loadgen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdsync/mdsync/client"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// TraceOptions are a trace run's own settings.
type TraceOptions struct {
	// Speed divides the recorded times: 1 plays at the recorded pace, 10
	// ten times faster; 0 plays as fast as possible.
	Speed float64
	// Window bounds the operations in flight (waiting for an earlier one
	// or for their answer); default 256.
	Window int
	// Name names the report files (NAME.json, NAME.md); default "trace".
	Name string
}

// TraceReport is what a trace run adds to a scenario's report.
type TraceReport struct {
	History     string  `json:"history"`
	Speed       string  `json:"speed"` // "1x", "10x", "max"
	Lines       int     `json:"lines"`
	Invalid     int     `json:"invalid_lines"`
	Users       int     `json:"users"`
	Devices     int     `json:"devices"` // login IDs logged in
	Operations  int     `json:"operations"`
	SpanSeconds float64 `json:"recorded_span_s"`
	PlaySeconds float64 `json:"played_s"`
	// Per kind: operations in the trace, played (an answer came: accepted
	// or refused), refused by the server, failed (no answer), and skipped
	// (recorded by the gateway itself: presence).
	InTrace map[string]int64 `json:"in_trace"`
	Played  map[string]int64 `json:"played"`
	Refused map[string]int64 `json:"refused"`
	Failed  map[string]int64 `json:"failed"`
	Skipped map[string]int64 `json:"skipped"`
	// RefusedByCode counts refusals by the server's code.
	RefusedByCode map[string]int64 `json:"refused_by_code"`
	// Setup counts the registrations done before the clock started.
	Setup int64 `json:"setup_registrations"`
	// Lag is how late an operation was sent against its schedule (waiting
	// for an earlier operation or a free slot); at max speed, the time
	// from the start.
	Lag Latency `json:"schedule_lag"`
}

// tdev is one recorded device (login ID) played by an SDK client.
type tdev struct {
	p   *tracePlayer
	key traceDevice
	mu  sync.Mutex
	c   *client.Client // nil when not connected
	// since is when the current connection's dial began: a message sent
	// before it reached this device by catch-up, not live delivery.
	since  time.Time
	closed *atomic.Bool // the current connection's end, counted once
	ever   bool         // logged in at least once
	// recConn is the recorded connection (incarnation/number) the current
	// client stands for, from the device_connected after its login.
	recConn string
}

type tuser struct {
	mu    sync.Mutex
	token string
}

type tracePlayer struct {
	b     *bench
	tr    *Trace
	opt   TraceOptions
	admin client.Credential
	rest  *client.REST
	pw    string
	users map[traceUser]*tuser
	devs  map[traceDevice]*tdev
	done  []chan struct{}
	// newIDs maps a recorded message's event id to the id this server
	// gave it, for the receipts that name it.
	newIDs sync.Map
	// sent holds each message's send time, by app/user/client_op_id, for
	// the delivery latency on the devices that receive it.
	sent sync.Map
	lag  *Recorder
	// connected counts the devices (login IDs) that logged in at least once.
	connected atomic.Int64

	mu                              sync.Mutex
	played, refused, failed, byCode map[string]int64
}

// RunTrace plays a trace against the server f names (or one it starts)
// and reports as a scenario run does, with one phase: the trace.
func RunTrace(ctx context.Context, tr *Trace, to TraceOptions, f Options, logger *slog.Logger) (*Report, error) {
	if to.Window <= 0 {
		to.Window = 256
	}
	if to.Name == "" {
		to.Name = "trace"
	}
	if len(tr.Ops) == 0 {
		return nil, fmt.Errorf("trace %s: no operations (%d lines, %d refused; first: %s)", tr.Path, tr.Lines, tr.Invalid, tr.FirstInvalid)
	}
	users, ndev := tr.population()
	sc := Scenario{Name: to.Name, Users: len(users), Concurrency: to.Window}
	if len(users) > 0 {
		sc.DevicesPerUser = (ndev + len(users) - 1) / len(users)
	}
	rep := &Report{Scenario: sc, StartedAt: time.Now(), Errors: map[string]int{}}
	rep.Machine = machine()
	nofile, err := RaiseNoFile(uint64(ndev + 4*fdHeadroom))
	rep.Machine.NoFile = nofile
	if err != nil {
		logger.Warn("open-file limit", "err", err)
	}
	src, _ := NewSourceAddrs(1) // 127.0.0.1: a trace's devices connect over time, not all at once
	b := newBench(sc, logger, src, f.Quiet)

	srv, stop, err := attachServer(ctx, f, "mdsync-bench-trace-", logger)
	if err != nil {
		return nil, err
	}
	defer func() { stop() }()
	addr, pid := srv.addr, srv.pid
	b.token, rep.Server = srv.token, srv.desc
	b.wsURL, b.httpURL = "ws://"+addr+"/v1/ws", "http://"+addr

	p := &tracePlayer{b: b, tr: tr, opt: to, admin: client.Credential{Admin: b.token}, rest: client.NewREST(b.httpURL, b.hc),
		pw: "trace-pw-" + b.runID, users: map[traceUser]*tuser{}, devs: map[traceDevice]*tdev{},
		done: make([]chan struct{}, len(tr.Ops)), lag: NewRecorder(),
		played: map[string]int64{}, refused: map[string]int64{}, failed: map[string]int64{}, byCode: map[string]int64{}}
	for i := range p.done {
		p.done[i] = make(chan struct{})
	}
	for _, u := range users {
		p.users[u] = &tuser{}
	}
	trep := &TraceReport{History: tr.Path, Speed: speedName(to.Speed), Lines: tr.Lines, Invalid: tr.Invalid, Users: len(users), Devices: ndev,
		Operations: len(tr.Ops), SpanSeconds: float64(tr.SpanMs) / 1000,
		InTrace: map[string]int64{}, Skipped: map[string]int64{}}
	for _, op := range tr.Ops {
		trep.InTrace[op.Kind]++
		if op.mode == playSkip || op.mode == playPresence {
			trep.Skipped[op.Kind]++
		}
	}
	rep.Trace = trep

	sampler, closeReport, stopSampling := b.startSampling(ctx, pid, rep)
	defer stopSampling()
	finish := func(err error) (*Report, error) {
		closeReport()
		p.mu.Lock()
		trep.Played, trep.Refused, trep.Failed, trep.RefusedByCode = p.played, p.refused, p.failed, p.byCode
		p.mu.Unlock()
		return rep, err
	}

	logger.Info("trace", "history", tr.Path, "operations", len(tr.Ops), "users", len(users), "devices", ndev,
		"recorded_s", trep.SpanSeconds, "speed", trep.Speed)
	n, err := p.register(ctx)
	trep.Setup = n
	if err != nil {
		return finish(err)
	}
	settleRSS(ctx, sampler, 30*time.Second)
	before := sampler.Sample(ctx)
	rep.Connect = ConnectReport{Devices: ndev, RSSBefore: before.RSSBytes, Samples: []Sample{before}}

	total := newPhaseRec()
	cpu0, cpuErr := ReadCPUTime(pid)
	pr := p.play(ctx, total)
	if cpu1, err := ReadCPUTime(pid); cpuErr == nil && err == nil {
		pr.setServerCPU(cpu1 - cpu0)
	}
	trep.PlaySeconds = pr.Seconds
	trep.Lag = p.lag.Snapshot(false)
	rep.Phases = []PhaseReport{pr}
	rep.Total = sumPhases(rep.Phases, total)
	rep.Total.OfferedRate = pr.OfferedRate
	logger.Info("trace played", "ops_per_s", int(pr.OpsPerSec), "op_p99_ms", pr.Op.P99Ms, "delivery_p99_ms", pr.Delivery.P99Ms,
		"refused", pr.Refused, "failed", pr.Failed, "server_cpu_us_per_delivered", int(pr.ServerCPUPerDeliveredUs))

	after := sampler.Sample(ctx)
	c := &rep.Connect
	c.Samples = append(c.Samples, after)
	c.RSSAfter, c.Goroutines = after.RSSBytes, after.Goroutines
	c.Connected = int(p.connected.Load())
	c.Login = pr.Login
	c.Seconds = pr.Seconds
	if c.Seconds > 0 {
		c.PerSecond = float64(pr.Login.Count) / c.Seconds
	}
	p.closeAll()
	srv.stopServer(logger)
	return finish(ctx.Err())
}

func speedName(s float64) string {
	if s <= 0 {
		return "max"
	}
	return strconv.FormatFloat(s, 'f', -1, 64) + "x"
}

// ParseSpeed reads a --speed value: "max" (or 0), or a positive factor
// ("1", "10", "2.5x").
func ParseSpeed(s string) (float64, error) {
	if s == "max" {
		return 0, nil
	}
	v, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSuffix(s, "x"), "×"), 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("speed %q is not max or a positive factor", s)
	}
	return v, nil
}

// register creates the trace's users (a few at a time: each is a password
// hash on the server) and issues each a token; a user that exists already
// (a reused server) only gets a token. Registration is setup, as in a
// scenario, not part of the played load.
func (p *tracePlayer) register(ctx context.Context) (int64, error) {
	bar := p.b.bar(len(p.users), "register users")
	defer bar.Finish()
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	var n atomic.Int64
	for u, tu := range p.users {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done(); bar.Add(1) }()
			err := p.rest.RegisterUser(ctx, u.app, u.user, p.pw, p.admin)
			if client.CodeOf(err) == client.CodeConflict {
				err = nil
			} else if err == nil {
				n.Add(1)
			}
			if err == nil {
				err = p.issue(ctx, u, tu)
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("register %s/%s: %w", u.app, u.user, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return n.Load(), fmt.Errorf("%d of %d registrations failed; first: %w", len(errs), len(p.users), errs[0])
	}
	return n.Load(), nil
}

func (p *tracePlayer) issue(ctx context.Context, u traceUser, tu *tuser) error {
	t, err := p.rest.IssueToken(ctx, u.app, u.user, 24*time.Hour, p.admin)
	if err == nil {
		tu.mu.Lock()
		tu.token = t.Token
		tu.mu.Unlock()
	}
	return err
}

func (p *tracePlayer) user(u traceUser) *tuser {
	p.mu.Lock()
	defer p.mu.Unlock()
	tu := p.users[u]
	if tu == nil {
		tu = &tuser{}
		p.users[u] = tu
	}
	return tu
}

func (p *tracePlayer) dev(k traceDevice) *tdev {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.devs[k]
	if d == nil {
		d = &tdev{p: p, key: k}
		p.devs[k] = d
	}
	return d
}

// play runs the operations in log order, each when it is due (recorded
// time ÷ speed) and its dependencies are done, at most Window in flight.
func (p *tracePlayer) play(ctx context.Context, total *phaseRec) PhaseReport {
	r := newPhaseRec()
	p.b.cur.Store(r)
	bar := p.b.bar(len(p.tr.Ops), "play trace")
	defer bar.Finish()
	sem := make(chan struct{}, p.opt.Window)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range p.tr.Ops {
		op := &p.tr.Ops[i]
		if op.mode == playSkip || op.mode == playSetup {
			if op.mode == playSetup {
				p.count(op.Kind, nil)
			}
			close(p.done[i])
			bar.Add(1)
			continue
		}
		due := start
		if p.opt.Speed > 0 {
			due = start.Add(time.Duration(float64(op.AtMs) / p.opt.Speed * float64(time.Millisecond)))
			if w := time.Until(due); w > 0 {
				select {
				case <-time.After(w):
				case <-ctx.Done():
				}
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			close(p.done[i])
			continue
		}
		wg.Add(1)
		go func() {
			defer func() { close(p.done[i]); <-sem; wg.Done(); bar.Add(1) }()
			for _, j := range op.deps {
				select {
				case <-p.done[j]:
				case <-ctx.Done():
					return
				}
			}
			if op.mode == playPresence {
				p.presence(op.Event)
				return
			}
			p.lag.Record(time.Since(due))
			err := p.one(ctx, r, op)
			p.b.count(r, op.Kind, err)
			p.count(op.Kind, err)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	name := "trace-" + speedName(p.opt.Speed)
	pr := PhaseReport{Name: name, Seconds: elapsed.Seconds(),
		Ops: r.ok.Load(), Refused: r.refused.Load(), Failed: r.failed.Load(), Missed: r.missed.Load(),
		Delivered: r.delivered.Load(), Evictions: r.evictions.Load(), ByKind: map[string]int64{}}
	if p.opt.Speed > 0 && p.tr.SpanMs > 0 {
		// What the schedule offers: the operations sent, not the setup
		// registrations or the presence records.
		n := 0
		for _, op := range p.tr.Ops {
			if op.mode != playSkip && op.mode != playPresence && op.mode != playSetup {
				n++
			}
		}
		pr.OfferedRate = float64(n) / (float64(p.tr.SpanMs) / 1000 / p.opt.Speed)
	}
	pr.OpsPerSec = float64(pr.Ops+pr.Refused) / elapsed.Seconds()
	pr.DeliveredPerSec = float64(pr.Delivered) / elapsed.Seconds()
	r.kmu.Lock()
	for k, v := range r.byKind {
		pr.ByKind[k] = v
	}
	r.kmu.Unlock()
	pr.Op, pr.Delivery, pr.Login = r.op.Snapshot(false), r.delivery.Snapshot(false), r.login.Snapshot(false)
	total.op.Merge(r.op)
	total.delivery.Merge(r.delivery)
	total.login.Merge(r.login)
	return pr
}

// count books an operation's outcome by kind, and a refusal by code.
func (p *tracePlayer) count(kind string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ce *client.Error
	switch {
	case err == nil:
		p.played[kind]++
	case errors.As(err, &ce):
		p.played[kind]++
		p.refused[kind]++
		p.byCode[strconv.Itoa(int(ce.Code))]++
	default:
		p.failed[kind]++
	}
}

var errNoConnection = errors.New("the acting device is not connected")

// one plays one operation.
func (p *tracePlayer) one(ctx context.Context, r *phaseRec, op *TraceOp) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	ev := proto.Clone(op.Event).(*pb.Event)
	u := traceUser{ev.GetApp(), ev.GetActor().GetUser()}
	start := time.Now()
	switch op.mode {
	case playDial:
		return p.dev(traceDevice{u, ev.GetActor().GetLoginId()}).dial(ctx, r, ev.GetLogin())
	case playRegister:
		if err := p.rest.RegisterUser(ctx, u.app, u.user, p.pw, p.admin); err != nil {
			return err
		}
		r.op.Record(time.Since(start))
		return p.issue(ctx, u, p.user(u))
	case playPassword:
		if _, err := p.rest.ChangePassword(ctx, u.app, u.user, p.pw, p.admin); err != nil {
			return err
		}
		r.op.Record(time.Since(start))
		// Tokens issued before may be refused now; later logins need one.
		return p.issue(ctx, u, p.user(u))
	case playAdmin:
		if _, err := p.rest.Submit(ctx, ev, p.admin); err != nil {
			return err
		}
		r.op.Record(time.Since(start))
		if ev.Kind == pb.Kind_KIND_TOKENS_REVOKE {
			return p.issue(ctx, u, p.user(u))
		}
		return nil
	}
	d := p.dev(traceDevice{u, ev.GetActor().GetLoginId()})
	c := d.current()
	if c == nil {
		return errNoConnection
	}
	p.rewriteIDs(ev)
	if ev.Kind == pb.Kind_KIND_MESSAGE_SEND {
		p.sent.Store(sentKey(u, ev.ClientOpId), time.Now())
	}
	start = time.Now()
	var res client.Result
	var err error
	if ev.Kind == pb.Kind_KIND_LOGOUT {
		err = c.Logout(ctx)
	} else {
		res, err = c.Op(ctx, ev)
	}
	if err != nil {
		return err
	}
	r.op.Record(time.Since(start))
	if op.EventID != "" && res.EventID != "" {
		p.newIDs.Store(op.EventID, res.EventID)
	}
	if ev.Kind == pb.Kind_KIND_LOGOUT {
		d.drop()
	}
	return nil
}

// presence follows the recorded connections: a device_connected names the
// connection a login got, and that connection's device_disconnected
// closes the device's client (without a logout, as the recorded device
// went away), so connections live as long as they did in the recorded
// run. A disconnect of an earlier connection (a device that came back
// with its login ID, the old socket's end recorded late) closes nothing.
func (p *tracePlayer) presence(ev *pb.Event) {
	d := p.dev(traceDevice{traceUser{ev.GetApp(), ev.GetActor().GetUser()}, ev.GetActor().GetLoginId()})
	pr := ev.GetPresence()
	id := pr.GetIncarnation() + "/" + strconv.FormatUint(pr.GetConnection(), 10)
	d.mu.Lock()
	var end *client.Client
	switch ev.Kind {
	case pb.Kind_KIND_DEVICE_CONNECTED:
		if d.c != nil {
			d.recConn = id
		}
	case pb.Kind_KIND_DEVICE_DISCONNECTED:
		if d.c != nil && d.recConn == id {
			d.recConn, end = "", d.c
		}
	}
	d.mu.Unlock()
	if end != nil {
		d.closeIf(end)
	}
}

// closeIf drops the device's connection if it is still c.
func (d *tdev) closeIf(c *client.Client) {
	d.mu.Lock()
	same := d.c == c
	d.mu.Unlock()
	if same {
		d.drop()
	}
}

func sentKey(u traceUser, clientOpID string) string {
	return u.app + "\x00" + u.user + "\x00" + clientOpID
}

// rewriteIDs points a receipt (or a thread started from a message) at the
// id this server gave the recorded message.
func (p *tracePlayer) rewriteIDs(ev *pb.Event) {
	if rc := ev.GetReceipt(); rc != nil {
		if v, ok := p.newIDs.Load(rc.MessageId); ok {
			rc.MessageId = v.(string)
		}
	}
	if th := ev.GetThread(); th != nil && th.MessageId != "" {
		if v, ok := p.newIDs.Load(th.MessageId); ok {
			th.MessageId = v.(string)
		}
	}
}

func (d *tdev) current() *client.Client {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.c == nil || d.closed.Load() {
		return nil
	}
	return d.c
}

// dial logs the device in with its recorded login ID, platform, name and
// extension; a device still connected is closed first (a re-login with
// the same ID, as a reconnecting device does).
func (d *tdev) dial(ctx context.Context, r *phaseRec, lg *pb.Login) error {
	d.drop()
	b := d.p.b
	tu := d.p.user(d.key.traceUser)
	tu.mu.Lock()
	tok := tu.token
	tu.mu.Unlock()
	pw := ""
	if tok == "" {
		pw = d.p.pw
	}
	platform := lg.GetPlatform()
	if platform < 1 {
		platform = 1
	}
	closed := &atomic.Bool{}
	since := time.Now()
	cfg := client.Config{URL: b.wsURL, App: d.key.app, User: d.key.user, Password: pw, Token: tok,
		LoginID: d.key.loginID, Platform: platform, DeviceName: lg.GetDeviceName(), Extension: lg.GetExtension(),
		AutoLogin: lg.GetAutoLogin(), Dialer: b.src.Dialer(), Logger: slog.New(slog.DiscardHandler)}
	end := func() {
		if closed.CompareAndSwap(false, true) {
			b.open.Add(-1)
		}
	}
	cfg.Handlers = client.Handlers{
		OnEvent: func(ev client.Event) { d.onEvent(since, ev) },
		OnUserDidLoginFromOtherDevice: func(client.Kicked) {
			b.rec().evictions.Add(1)
			end()
		},
		OnUserKickedByOtherDevice: func(client.Kicked) { end() },
		OnUserRemoved:             func(client.Kicked) { end() },
		OnPasswordChanged:         func(client.Kicked) { end() },
		// A dropped connection is not an end: the SDK resumes the session
		// and a request waits for it; only a kick or a logout ends a device.
	}
	start := time.Now()
	c, err := client.Dial(ctx, cfg)
	if err != nil {
		return err
	}
	r.login.Record(time.Since(start))
	b.open.Add(1)
	d.mu.Lock()
	d.c, d.closed, d.since, d.recConn = c, closed, since, ""
	if !d.ever {
		d.ever = true
		d.p.connected.Add(1)
	}
	d.mu.Unlock()
	return nil
}

// drop closes the device's connection without logging out.
func (d *tdev) drop() {
	d.mu.Lock()
	c, closed := d.c, d.closed
	d.c = nil
	d.mu.Unlock()
	if c != nil {
		c.Close()
		if closed.CompareAndSwap(false, true) {
			d.p.b.open.Add(-1)
		}
	}
}

// onEvent times live message deliveries: sent by another device of this
// run after this connection began.
func (d *tdev) onEvent(since time.Time, ev client.Event) {
	src := ev.Entry.GetSource()
	if src.GetKind() != pb.Kind_KIND_MESSAGE_SEND || src.GetActor().GetLoginId() == d.key.loginID {
		return
	}
	v, ok := d.p.sent.Load(sentKey(traceUser{src.GetApp(), src.GetActor().GetUser()}, src.GetClientOpId()))
	if !ok {
		return
	}
	at := v.(time.Time)
	if !at.After(since) {
		return // caught up, not delivered live
	}
	recvd := ev.Received
	if recvd.IsZero() {
		recvd = time.Now()
	}
	r := d.p.b.rec()
	r.delivery.Record(recvd.Sub(at))
	r.delivered.Add(1)
}

func (p *tracePlayer) closeAll() {
	p.mu.Lock()
	devs := make([]*tdev, 0, len(p.devs))
	for _, d := range p.devs {
		devs = append(devs, d)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for _, d := range devs {
		sem <- struct{}{}
		wg.Add(1)
		go func() { defer func() { <-sem; wg.Done() }(); d.drop() }()
	}
	wg.Wait()
}

// writeMarkdown adds the trace's own tables to the report.
func (t *TraceReport) writeMarkdown(f func(string, ...any)) {
	f("Trace `%s` at %s: %d lines (%d not operations), %d operations over %.1f s recorded, played in %.1f s; %d users, %d devices (login IDs); %d users registered before the clock started. Schedule lag p50 / p99 / max %.1f / %.1f / %.1f ms.\n\n",
		t.History, t.Speed, t.Lines, t.Invalid, t.Operations, t.SpanSeconds, t.PlaySeconds, t.Users, t.Devices, t.Setup, t.Lag.P50Ms, t.Lag.P99Ms, t.Lag.MaxMs)
	f("| kind | in trace | played | refused | failed | skipped (the gateway records it) |\n| --- | --- | --- | --- | --- | --- |\n")
	kinds := make([]string, 0, len(t.InTrace))
	for k := range t.InTrace {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		f("| %s | %d | %d | %d | %d | %d |\n", k, t.InTrace[k], t.Played[k], t.Refused[k], t.Failed[k], t.Skipped[k])
	}
	if len(t.RefusedByCode) > 0 {
		f("\nRefused by code:")
		for _, c := range slices.Sorted(maps.Keys(t.RefusedByCode)) {
			f(" %s ×%d;", c, t.RefusedByCode[c])
		}
		f("\n")
	}
	f("\n")
}

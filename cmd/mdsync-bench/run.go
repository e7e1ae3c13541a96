package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mdsync/mdsync/client"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/schollz/progressbar/v3"
)

// progress is the part of a progress bar the run uses.
type progress interface {
	Add(int) error
	Finish() error
}

type noProgress struct{}

func (noProgress) Add(int) error { return nil }
func (noProgress) Finish() error { return nil }

func (b *bench) bar(max int, what string) progress {
	if b.quiet || max <= 0 {
		return noProgress{}
	}
	return progressbar.NewOptions(max, progressbar.OptionSetWriter(os.Stderr), progressbar.OptionSetDescription(what),
		progressbar.OptionShowCount(), progressbar.OptionThrottle(200*time.Millisecond), progressbar.OptionSetWidth(30),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(os.Stderr) }))
}

type runFlags struct {
	scenario, out, addr, adminToken, adminTokenFile, kafka, bin string
	serverPID, partitions                                       int
	quiet                                                       bool
	serveArgs                                                   []string
}

func runBench(args []string) error {
	var f runFlags
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&f.scenario, "scenario", "benchmarks/scenarios/smoke.json", "scenario file")
	fs.StringVar(&f.out, "out", "bench-out", "directory for NAME.json, NAME.md and the PNG plots")
	fs.StringVar(&f.addr, "addr", "", "host:port of a running mdsync serve; empty: build and start one on a temp data dir")
	fs.StringVar(&f.adminToken, "admin-token", "", "admin token of the server at --addr")
	fs.StringVar(&f.adminTokenFile, "admin-token-file", "", "file holding it (DATA/admin-token)")
	fs.IntVar(&f.serverPID, "server-pid", 0, "pid of the server at --addr, to sample its RSS (0: not sampled)")
	fs.StringVar(&f.kafka, "kafka-brokers", "", "start the server on these Kafka brokers instead of the embedded log")
	fs.StringVar(&f.bin, "mdsync-bin", "", "mdsync binary to start; empty: go build ./cmd/mdsync")
	fs.IntVar(&f.partitions, "partitions", 0, "partitions of the started server's log (0: serve's default)")
	fs.BoolVar(&f.quiet, "quiet", false, "no progress bars")
	fs.Func("serve-arg", "an extra argument for the started mdsync serve (repeat the flag for several), e.g. --serve-arg=--ws-send-queue=64", func(v string) error {
		f.serveArgs = append(f.serveArgs, v)
		return nil
	})
	cpuProfile := fs.String("cpuprofile", "", "write the benchmark process's CPU profile here (is the load generator the bottleneck?)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		pf, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	sc, err := LoadScenario(f.scenario)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	rep, err := Run(ctx, sc, f, logger)
	if rep != nil {
		rep.Command = "mdsync-bench run " + strings.Join(args, " ")
		if werr := writeOutputs(rep, f.out, true, os.Stdout); werr != nil {
			err = errors.Join(err, werr)
		}
	}
	return err
}

// Run runs a scenario and returns its report (partial when err is set
// after the population connected).
func Run(ctx context.Context, sc Scenario, f runFlags, logger *slog.Logger) (*Report, error) {
	rep := &Report{Scenario: sc, StartedAt: time.Now(), Errors: map[string]int{}}
	rep.Machine = machine()
	// Every device is a socket here and on the server; the server inherits
	// this limit when we start it.
	nofile, err := RaiseNoFile(uint64(sc.Devices() + 4*fdHeadroom))
	rep.Machine.NoFile = nofile
	if err != nil {
		logger.Warn("open-file limit", "err", err)
	}
	// Each device is a socket in this process and in the server; past the
	// limit connections fail with EMFILE halfway through, so say it now.
	if need := uint64(sc.Devices() + fdHeadroom); nofile < need {
		return nil, fmt.Errorf("open-file limit %d cannot hold %d devices plus %d spare descriptors (ulimit -Hn; raising it needs CAP_SYS_RESOURCE); use fewer devices", nofile, sc.Devices(), fdHeadroom)
	}
	src, err := NewSourceAddrs(sc.SourceAddrs)
	if err != nil {
		return nil, err
	}
	if need := sc.Devices() / portsPerAddr(); need >= sc.SourceAddrs {
		logger.Warn("source addresses may run out of ephemeral ports", "devices", sc.Devices(), "source_addrs", sc.SourceAddrs)
	}

	b := newBench(sc, logger, src, f.quiet)

	// The server.
	var srv *Server
	pid := f.serverPID
	addr := f.addr
	if addr == "" {
		tmp, err := os.MkdirTemp("", "mdsync-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		bin := f.bin
		if bin == "" {
			logger.Info("building mdsync")
			if bin, err = BuildMdsync(ctx, tmp); err != nil {
				return nil, err
			}
		}
		data := tmp + "/data"
		if err := os.Mkdir(data, 0o700); err != nil {
			return nil, err
		}
		srv, err = StartServer(ctx, ServerOptions{Bin: bin, Data: data, KafkaBrokers: f.kafka, Partitions: f.partitions, ExtraArgs: f.serveArgs, Logger: logger})
		if err != nil {
			return nil, err
		}
		defer func() {
			if srv != nil {
				srv.Stop()
			}
		}()
		addr, pid, b.token = srv.Addr, srv.PID(), srv.Token
		rep.Server = "self-started mdsync serve, embedded log"
		if f.kafka != "" {
			rep.Server = "self-started mdsync serve, Kafka at " + f.kafka
		}
		if len(f.serveArgs) > 0 {
			rep.Server += " (" + strings.Join(f.serveArgs, " ") + ")"
		}
	} else {
		b.token = f.adminToken
		if f.adminTokenFile != "" {
			t, err := os.ReadFile(f.adminTokenFile)
			if err != nil {
				return nil, err
			}
			b.token = strings.TrimSpace(string(t))
		}
		rep.Server = "mdsync serve at " + addr
	}
	b.wsURL = "ws://" + addr + "/v1/ws"
	b.httpURL = "http://" + addr
	logger.Info("server", "addr", addr, "pid", pid)

	sampler := NewSampler(pid, MetricsReader{URL: b.httpURL + "/metrics", Token: b.token, HC: b.hc}, func() int { return int(b.open.Load()) })
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	go sampler.Run(sctx, time.Second)

	runStart := time.Now()
	finish := func(err error) (*Report, error) {
		rep.Seconds = time.Since(runStart).Seconds()
		rep.Machine.Load1End = load1()
		rep.ServerSamples, _ = sampler.Report()
		b.errMu.Lock()
		for k, v := range b.errs {
			rep.Errors[k] = v
		}
		rep.ErrorFirst = b.errFirst
		b.errMu.Unlock()
		return rep, err
	}

	// Population and groups.
	b.makePopulation()
	if err := b.setPolicy(ctx); err != nil {
		return finish(fmt.Errorf("policy: %w", err))
	}
	bar := b.bar(len(b.users), "register users")
	err = b.register(ctx, bar)
	bar.Finish()
	if err != nil {
		return finish(err)
	}
	rep.Connect, err = b.connectAll(ctx, sampler)
	if err != nil {
		return finish(err)
	}
	if err := b.makeGroups(ctx); err != nil {
		return finish(fmt.Errorf("groups: %w", err))
	}
	if sc.IdleSeconds > 0 {
		logger.Info("idle", "seconds", sc.IdleSeconds)
		select {
		case <-time.After(secs(sc.IdleSeconds)):
		case <-ctx.Done():
			return finish(ctx.Err())
		}
		sm := sampler.Sample(ctx)
		rep.Connect.Samples = append(rep.Connect.Samples, sm)
		rep.Connect.RSSAfter, rep.Connect.Goroutines = sm.RSSBytes, sm.Goroutines
		if rep.Connect.Connected > 0 && sm.RSSBytes > 0 {
			rep.Connect.BytesPerDev = float64(sm.RSSBytes-rep.Connect.RSSBefore) / float64(rep.Connect.Connected)
		}
	}

	// Load.
	total := newPhaseRec()
	phases := sc.Phases()
	if len(phases) > 0 {
		secsTotal := 0
		for _, p := range phases {
			secsTotal += int(p.Duration.Seconds())
		}
		bar := b.bar(secsTotal, "load (s)")
		for _, ph := range phases {
			if ctx.Err() != nil {
				break
			}
			if ph.Overload > 0 {
				ph.Rate = ph.Overload * SaturatingRate(rep.Phases)
				if ph.Rate <= 0 {
					continue // no ramp step achieved anything
				}
			}
			cpu0, cpuErr := ReadCPUTime(pid)
			pr := b.runPhase(ctx, ph, total, bar)
			if cpu1, err := ReadCPUTime(pid); cpuErr == nil && err == nil {
				pr.setServerCPU(cpu1 - cpu0)
			}
			rep.Phases = append(rep.Phases, pr)
			logger.Info("phase", "name", pr.Name, "offered", pr.OfferedRate, "ops_per_s", int(pr.OpsPerSec),
				"op_p99_ms", pr.Op.P99Ms, "delivery_p99_ms", pr.Delivery.P99Ms, "failed", pr.Failed,
				"server_cpu_us_per_delivered", int(pr.ServerCPUPerDeliveredUs))
		}
		bar.Finish()
		rep.Total = sumPhases(rep.Phases, total)
	}

	if sc.CatchUp.Devices > 0 && ctx.Err() == nil {
		cu, err := b.catchUp(ctx, sampler)
		rep.CatchUp = cu
		if err != nil {
			return finish(fmt.Errorf("catch-up: %w", err))
		}
	}

	sampler.Sample(ctx)
	b.closeAll()
	if srv != nil {
		// The baseline runs on the machine alone.
		if err := srv.Stop(); err != nil {
			logger.Warn("server stop", "err", err)
		}
		srv = nil
	}
	if sc.Baseline && ctx.Err() == nil {
		bl, err := b.baseline(ctx)
		if err != nil {
			return finish(fmt.Errorf("baseline: %w", err))
		}
		if n := len(rep.Phases); n > 0 {
			p := rep.Phases[n-1]
			bl.Ratio = p.OpsPerSec / bl.OpsPerSec
			if p.OfferedRate > 0 {
				bl.What += fmt.Sprintf(" (the last phase was open loop at %.0f ops/s, so the ratio is a floor, not a capacity)", p.OfferedRate)
			}
		}
		rep.Baseline = bl
	}
	return finish(ctx.Err())
}

// fdHeadroom is descriptors kept for everything but the devices: the
// server's Pebble files and listener, intruder logins, HTTP clients.
const fdHeadroom = 512

func newBench(sc Scenario, logger *slog.Logger, src *SourceAddrs, quiet bool) *bench {
	b := &bench{sc: sc, log: logger, src: src, quiet: quiet,
		runID: strconv.FormatInt(time.Now().UnixNano()%(1<<40), 36),
		errs:  map[string]int{}, errFirst: map[string]string{},
		hc: &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	b.cur.Store(newPhaseRec())
	return b
}

func portsPerAddr() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		var lo, hi int
		if _, err := fmt.Sscan(string(b), &lo, &hi); err == nil && hi > lo {
			return hi - lo + 1
		}
	}
	return 28_000
}

func load1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return v
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), Load1: load1()}
	if fh, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		fh.Close()
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		m.PortRange = strings.Join(strings.Fields(string(b)), "-")
	}
	return m
}

// makePopulation names users and devices: device j on platform
// j%platforms+1.
func (b *bench) makePopulation() {
	for ui := 0; ui < b.sc.Users; ui++ {
		u := &user{name: fmt.Sprintf("u%d-%s", ui, b.runID), password: "bench-pw-" + b.runID}
		for di := 0; di < b.sc.DevicesPerUser; di++ {
			d := &device{b: b, u: u, ui: ui, di: di, platform: int32(di%b.sc.Platforms + 1), name: fmt.Sprintf("dev%d", di)}
			u.devs = append(u.devs, d)
			b.devs = append(b.devs, d)
		}
		b.users = append(b.users, u)
	}
}

// connectAll logs the whole population in, ConnectConcurrency at a time,
// sampling the server every SampleEvery connections.
func (b *bench) connectAll(ctx context.Context, s *Sampler) (ConnectReport, error) {
	cr := ConnectReport{Devices: len(b.devs)}
	// Registration hashes passwords (argon2, ~19 MiB each, several at
	// once); the Go runtime hands that memory back over seconds. The
	// before-sample waits for the server's RSS to settle, or memory per
	// device would be off by the hashing's leftovers.
	settleRSS(ctx, s, 30*time.Second)
	first := s.Sample(ctx)
	cr.RSSBefore = first.RSSBytes
	cr.Samples = append(cr.Samples, first)
	lat := NewRecorder()
	bar := b.bar(len(b.devs), "connect devices")
	sem := make(chan struct{}, b.sc.ConnectConcurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed int
	var firstErr error
	var connected atomic.Int64
	start := time.Now()
	for _, d := range b.devs {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done(); bar.Add(1) }()
			_, took, err := d.dial(ctx, "")
			if err != nil {
				mu.Lock()
				failed++
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				b.noteErr("connect: "+errClass(err), err)
				return
			}
			lat.Record(took)
			if n := connected.Add(1); b.sc.SampleEvery > 0 && n%int64(b.sc.SampleEvery) == 0 {
				sm := s.Sample(ctx)
				mu.Lock()
				cr.Samples = append(cr.Samples, sm)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	bar.Finish()
	cr.Seconds = time.Since(start).Seconds()
	cr.Connected = int(connected.Load())
	cr.PerSecond = float64(cr.Connected) / cr.Seconds
	cr.Login = lat.Snapshot(false)
	// Let the server settle (login bursts leave garbage) before the
	// after-sample that memory per device is taken from.
	time.Sleep(2 * time.Second)
	last := s.Sample(ctx)
	cr.Samples = append(cr.Samples, last)
	cr.RSSAfter, cr.Goroutines = last.RSSBytes, last.Goroutines
	if cr.Connected > 0 && last.RSSBytes > 0 {
		cr.BytesPerDev = float64(last.RSSBytes-cr.RSSBefore) / float64(cr.Connected)
	}
	cr.SlopeBytesPerDev = rssSlope(cr.Samples)
	if failed > 0 {
		return cr, fmt.Errorf("%d of %d devices failed to connect; first: %w", failed, len(b.devs), firstErr)
	}
	return cr, nil
}

// makeGroups creates the mix's groups: GroupSize random users each,
// created by the first with the others as members (at most 99 per
// create, the rest join).
func (b *bench) makeGroups(ctx context.Context) error {
	for gi := 0; gi < b.sc.Groups; gi++ {
		members := rand.Perm(len(b.users))[:b.sc.GroupSize]
		g := group{id: fmt.Sprintf("g%d-%s", gi, b.runID), members: members}
		if err := b.createGroup(ctx, g); err != nil {
			return err
		}
		b.groups = append(b.groups, g)
	}
	return nil
}

func (b *bench) createGroup(ctx context.Context, g group) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	od, oc := b.onlineDeviceOf(g.members[0])
	if oc == nil {
		return fmt.Errorf("group %s: owner has no device online", g.id)
	}
	defer od.use.RUnlock()
	var first []string
	for _, m := range g.members[1:min(len(g.members), 100)] {
		first = append(first, b.users[m].name)
	}
	if _, err := oc.c.Op(ctx, &pb.Event{Kind: pb.Kind_KIND_GROUP_CREATE, ClientOpId: b.nextID("gc"),
		Payload: &pb.Event_Group{Group: &pb.GroupOp{GroupId: g.id, Name: g.id, Users: first}}}); err != nil {
		return fmt.Errorf("create %s: %w", g.id, err)
	}
	for _, m := range g.members[min(len(g.members), 100):] {
		md, mc := b.onlineDeviceOf(m)
		if mc == nil {
			return fmt.Errorf("group %s: member has no device online", g.id)
		}
		_, err := mc.c.Op(ctx, &pb.Event{Kind: pb.Kind_KIND_GROUP_JOIN, ClientOpId: b.nextID("gj"),
			Payload: &pb.Event_Group{Group: &pb.GroupOp{GroupId: g.id}}})
		md.use.RUnlock()
		if err != nil {
			return fmt.Errorf("join %s: %w", g.id, err)
		}
	}
	return nil
}

func (b *bench) closeAll() {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for _, d := range b.devs {
		sem <- struct{}{}
		wg.Add(1)
		go func() { defer func() { <-sem; wg.Done() }(); d.drop() }()
	}
	wg.Wait()
}

// catchUp: whole users go offline; one more user sends Missed messages to
// a group of them; once the server has applied every copy (projection lag
// 0), all their devices reconnect at once and each waits for the last
// message (the marker). Timed per device and overall.
func (b *bench) catchUp(ctx context.Context, s *Sampler) (*CatchUpReport, error) {
	sc := b.sc
	nUsers := (sc.CatchUp.Devices + sc.DevicesPerUser - 1) / sc.DevicesPerUser
	senderUI := nUsers // not offline
	cu := &CatchUpReport{MissedPerDev: sc.CatchUp.Missed}
	g := group{id: "catchup-" + b.runID}
	for ui := 0; ui < nUsers; ui++ {
		g.members = append(g.members, ui)
	}
	g.members = append([]int{senderUI}, g.members...)
	if err := b.createGroup(ctx, g); err != nil {
		return cu, err
	}
	var offline []*device
	for ui := 0; ui < nUsers; ui++ {
		offline = append(offline, b.users[ui].devs...)
	}
	cu.Devices = len(offline)
	// Let the devices' acks reach the server, so each catches up exactly
	// what it missed.
	time.Sleep(2 * time.Second)
	lids := make([]string, len(offline))
	for i, d := range offline {
		d.mu.Lock()
		lids[i] = d.loginID
		d.mu.Unlock()
		d.drop()
	}
	sd, sc0 := b.onlineDeviceOf(senderUI)
	if sc0 == nil {
		return cu, errors.New("sender has no device online")
	}
	defer sd.use.RUnlock()
	marker := b.seq.Add(1)
	for _, d := range offline {
		d.startCatchUp(marker)
	}
	send := func(ctx context.Context, mk uint64) error {
		ctx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		_, err := sc0.c.Send(ctx, client.Message{ChatType: pb.ChatType_CHAT_TYPE_GROUP, To: g.id, ClientMsgID: b.nextID("cu"),
			ContentType: "application/octet-stream", Body: stamp(sc.BodyBytes, time.Now(), mk)})
		return err
	}
	bar := b.bar(sc.CatchUp.Missed, "send missed events")
	sendStart := time.Now()
	sem := make(chan struct{}, sc.Concurrency)
	var wg sync.WaitGroup
	var sendErrs atomic.Int64
	for i := 0; i < sc.CatchUp.Missed-1; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done(); bar.Add(1) }()
			if err := send(ctx, 0); err != nil {
				sendErrs.Add(1)
				b.noteErr("catch-up send: "+errClass(err), err)
			}
		}()
	}
	wg.Wait()
	if err := send(ctx, marker); err != nil { // last, so it is the end of what was missed
		return cu, fmt.Errorf("marker: %w", err)
	}
	bar.Add(1)
	bar.Finish()
	if n := sendErrs.Load(); n > 0 {
		return cu, fmt.Errorf("%d missed-event sends failed", n)
	}
	// Fan-out to the members' timelines continues after the sends are
	// decided; catch-up is measured from a settled server.
	if err := b.waitLagZero(ctx, 10*time.Minute); err != nil {
		return cu, err
	}
	cu.SendSeconds = time.Since(sendStart).Seconds()
	b.log.Info("missed events sent and applied", "messages", sc.CatchUp.Missed, "seconds", cu.SendSeconds)

	lat := NewRecorder()
	bar = b.bar(len(offline), "catch up")
	at := s.Since()
	start := time.Now()
	sem = make(chan struct{}, sc.ConnectConcurrency)
	var complete, snaps atomic.Int64
	for i, d := range offline {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
			defer cancel()
			t0 := time.Now()
			_, _, err := d.dial(cctx, lids[i])
			<-sem // the dial is done; the wait for the marker holds no slot
			if err != nil {
				b.noteErr("catch-up reconnect: "+errClass(err), err)
				return
			}
			select {
			case <-d.markerCh:
				if d.bySnapshot.Load() {
					snaps.Add(1)
				} else {
					lat.Record(time.Since(t0))
				}
				complete.Add(1)
				bar.Add(1)
			case <-cctx.Done():
				b.noteErr("catch-up: marker not received", cctx.Err())
			}
		}()
	}
	wg.Wait()
	bar.Finish()
	cu.Seconds = time.Since(start).Seconds()
	s.Sample(ctx)
	for _, d := range offline {
		d.catching.Store(false)
		cu.Events += d.caught.Load()
	}
	cu.CompleteDevs = int(complete.Load())
	cu.Snapshots = int(snaps.Load())
	cu.EventsPerSec = float64(cu.Events) / cu.Seconds
	cu.PerDevice = lat.Snapshot(false)
	cu.RSSPeakBytes = s.PeakSince(at)
	if cu.CompleteDevs != cu.Devices {
		return cu, fmt.Errorf("%d of %d devices caught up", cu.CompleteDevs, cu.Devices)
	}
	return cu, nil
}

// rssSlope is the least-squares slope of RSS against connections over the
// samples: memory per connection, free of any constant offset.
func rssSlope(samples []Sample) float64 {
	var n, sx, sy, sxx, sxy float64
	for _, sm := range samples {
		if sm.RSSBytes <= 0 {
			continue
		}
		x, y := float64(sm.Connections), float64(sm.RSSBytes)
		n++
		sx += x
		sy += y
		sxx += x * x
		sxy += x * y
	}
	den := n*sxx - sx*sx
	if n < 2 || den == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / den
}

// settleRSS waits until the server's RSS moved less than 2% over 3 s, or
// limit passed.
func settleRSS(ctx context.Context, s *Sampler, limit time.Duration) {
	if s.PID == 0 {
		return
	}
	var hist []int64
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		rss, err := ReadRSS(s.PID)
		if err != nil {
			return
		}
		hist = append(hist, rss)
		if n := len(hist); n >= 4 {
			a, b := float64(hist[n-4]), float64(rss)
			if b >= a*0.98 && b <= a*1.02 {
				return
			}
		}
		time.Sleep(time.Second)
	}
}

// waitLagZero polls mdsync_projection_lag_events, summed over
// partitions, until it is 0.
func (b *bench) waitLagZero(ctx context.Context, limit time.Duration) error {
	m := MetricsReader{URL: b.httpURL + "/metrics", Token: b.token, HC: b.hc}
	deadline := time.Now().Add(limit)
	for {
		lag, err := m.Sum(ctx, "mdsync_projection_lag_events")
		if err != nil {
			return fmt.Errorf("projection lag: %w", err)
		}
		if lag == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("projection lag still %v after %v", lag, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// baseline runs the request/answer part of the mix (messages, receipts,
// pins; no logins) as a closed loop of Concurrency workers against the
// echo server, over the same SDK, source addresses and message sizes.
func (b *bench) baseline(ctx context.Context) (*BaselineReport, error) {
	e, err := StartEchoServer(b.log)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	nDev := b.sc.BaselineDevices
	if nDev == 0 {
		nDev = min(len(b.devs), 2*b.sc.Concurrency)
	}
	eb := newBench(b.sc, b.log, b.src, true)
	eb.runID, eb.wsURL = b.runID, "ws://"+e.Addr+"/v1/ws"
	eb.sc.Mix.EvictionLogin, eb.sc.Mix.Reconnect = 0, 0
	if eb.sc.Mix.total() == 0 {
		eb.sc.Mix.UserMessage = 1
	}
	eb.groups = b.groups
	// The same users, fewer devices: one per user round robin.
	for _, u := range b.users {
		eu := &user{name: u.name, password: u.password, token: u.token}
		eb.users = append(eb.users, eu)
	}
	for i := 0; i < nDev; i++ {
		u := eb.users[i%len(eb.users)]
		d := &device{b: eb, u: u, ui: i % len(eb.users), platform: 1, name: "echo"}
		u.devs = append(u.devs, d)
		eb.devs = append(eb.devs, d)
	}
	for _, d := range eb.devs {
		if _, _, err := d.dial(ctx, ""); err != nil {
			return nil, err
		}
	}
	defer eb.closeAll()
	// Users without a device (more users than devices) cannot send group
	// messages; onlineDeviceOf skips them and the op counts as skipped.
	total := newPhaseRec()
	pr := eb.runPhase(ctx, Phase{Name: "baseline", Duration: secs(b.sc.BaselineSeconds)}, total, noProgress{})
	if pr.Ops == 0 {
		return nil, fmt.Errorf("baseline answered nothing: %v", eb.errFirst)
	}
	return &BaselineReport{
		What: "bare protocol echo server in the benchmark process (login_result/result/pong, no decision, log or fan-out): " +
			"the same SDK, connections and request mix minus logins, closed loop of the same concurrency",
		Devices: nDev, Seconds: pr.Seconds, Ops: pr.Ops, OpsPerSec: pr.OpsPerSec, Op: pr.Op,
	}, nil
}

package loadgen

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

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

// Options says which server a run loads and how it reports progress; the
// zero value builds cmd/mdsync and starts it on a temp data directory with
// the embedded log.
type Options struct {
	// Addr is host:port of a running mdsync serve; empty: build (or take
	// MdsyncBin) and start one on a temp data directory.
	Addr string
	// AdminToken, or AdminTokenFile holding it (DATA/admin-token), is the
	// admin token of the server at Addr.
	AdminToken, AdminTokenFile string
	// ServerPID is the pid of the server at Addr, to sample its RSS and
	// CPU time (0: not sampled).
	ServerPID int
	// KafkaBrokers starts the server on these brokers instead of the
	// embedded log.
	KafkaBrokers string
	// MdsyncBin is the mdsync binary to start; empty: go build ./cmd/mdsync.
	MdsyncBin string
	// Partitions of the started server's log (0: serve's default).
	Partitions int
	// Quiet draws no progress bars.
	Quiet bool
	// ServeArgs are extra arguments for the started mdsync serve.
	ServeArgs []string
}

// Run runs a scenario and returns its report (partial when err is set
// after the population connected).
func Run(ctx context.Context, sc Scenario, f Options, logger *slog.Logger) (*Report, error) {
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

	b := newBench(sc, logger, src, f.Quiet)

	// The server.
	srv, stop, err := attachServer(ctx, f, "mdsync-bench-", logger)
	if err != nil {
		return nil, err
	}
	defer func() { stop() }()
	addr, pid := srv.addr, srv.pid
	b.token, rep.Server = srv.token, srv.desc
	b.wsURL = "ws://" + addr + "/v1/ws"
	b.httpURL = "http://" + addr
	logger.Info("server", "addr", addr, "pid", pid)

	sampler, closeReport, stopSampling := b.startSampling(ctx, pid, rep)
	defer stopSampling()
	finish := func(err error) (*Report, error) {
		closeReport()
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
	srv.stopServer(logger) // the baseline, if any, runs on the machine alone
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

// startSampling starts sampling the server (pid, and its /metrics) every
// second for a run that begins now. closeReport fills what every report
// ends with: the run's duration, the load at its end, the server samples
// and the bench's errors; stop ends the sampling.
func (b *bench) startSampling(ctx context.Context, pid int, rep *Report) (sampler *Sampler, closeReport, stop func()) {
	sampler = NewSampler(pid, MetricsReader{URL: b.httpURL + "/metrics", Token: b.token, HC: b.hc}, func() int { return int(b.open.Load()) })
	sctx, cancel := context.WithCancel(ctx)
	go sampler.Run(sctx, time.Second)
	start := time.Now()
	closeReport = func() {
		rep.Seconds = time.Since(start).Seconds()
		rep.Machine.Load1End = load1()
		rep.ServerSamples, _ = sampler.Report()
		b.errMu.Lock()
		for k, v := range b.errs {
			rep.Errors[k] = v
		}
		rep.ErrorFirst = b.errFirst
		b.errMu.Unlock()
	}
	return sampler, closeReport, cancel
}

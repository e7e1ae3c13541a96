package loadgen

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// Recorder is a concurrency-safe HDR histogram of latencies in
// microseconds, 1 µs .. 10 min at 3 significant digits. Values outside the
// range are clamped and counted, never dropped, so a count stays a count.
type Recorder struct {
	mu sync.Mutex
	h  *hdr.Histogram
}

const maxLatencyMicros = int64(10 * time.Minute / time.Microsecond)

func NewRecorder() *Recorder { return &Recorder{h: hdr.New(1, maxLatencyMicros, 3)} }

func (r *Recorder) Record(d time.Duration) {
	us := d.Microseconds()
	if us < 1 {
		us = 1
	}
	if us > maxLatencyMicros {
		us = maxLatencyMicros
	}
	r.mu.Lock()
	r.h.RecordValue(us) // in range by the clamp above, so no error
	r.mu.Unlock()
}

// Snapshot summarizes the histogram and resets it when reset is set (the
// per-phase figures of the ramp).
func (r *Recorder) Snapshot(reset bool) Latency {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := summarize(r.h)
	if reset {
		r.h.Reset()
	}
	return l
}

// Merge adds another recorder's values (a phase into the run's total).
func (r *Recorder) Merge(o *Recorder) {
	o.mu.Lock()
	c := hdr.Import(o.h.Export())
	o.mu.Unlock()
	r.mu.Lock()
	r.h.Merge(c)
	r.mu.Unlock()
}

// Latency is a histogram's summary in milliseconds.
type Latency struct {
	Count  int64   `json:"count"`
	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P99Ms  float64 `json:"p99_ms"`
	P999Ms float64 `json:"p999_ms"`
	MaxMs  float64 `json:"max_ms"`
}

func summarize(h *hdr.Histogram) Latency {
	if h.TotalCount() == 0 {
		return Latency{}
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return Latency{
		Count:  h.TotalCount(),
		MeanMs: h.Mean() / 1000,
		P50Ms:  ms(h.ValueAtQuantile(50)),
		P90Ms:  ms(h.ValueAtQuantile(90)),
		P99Ms:  ms(h.ValueAtQuantile(99)),
		P999Ms: ms(h.ValueAtQuantile(99.9)),
		MaxMs:  ms(h.Max()),
	}
}

// Report is everything one run measured; it is written as JSON and as a
// Markdown table, and feeds the plots.
type Report struct {
	Scenario  Scenario  `json:"scenario"`
	Command   string    `json:"command"`
	Machine   Machine   `json:"machine"`
	Server    string    `json:"server"` // "self-started embedded", "self-started kafka", or the given address
	StartedAt time.Time `json:"started_at"`
	Seconds   float64   `json:"seconds"`

	Connect       ConnectReport     `json:"connect"`
	Phases        []PhaseReport     `json:"phases"`
	Total         PhaseReport       `json:"total"`
	CatchUp       *CatchUpReport    `json:"catchup,omitempty"`
	Baseline      *BaselineReport   `json:"baseline,omitempty"`
	Trace         *TraceReport      `json:"trace,omitempty"` // a trace run (trace_play.go)
	ServerSamples ServerReport      `json:"server_samples"`
	Errors        map[string]int    `json:"errors"`
	ErrorFirst    map[string]string `json:"error_first,omitempty"`
}

// Machine names where the figures were taken.
type Machine struct {
	CPUs      int     `json:"cpus"`
	CPUModel  string  `json:"cpu_model"`
	GoVersion string  `json:"go_version"`
	Load1     float64 `json:"load1_at_start"`
	Load1End  float64 `json:"load1_at_end"`
	NoFile    uint64  `json:"nofile_limit"`
	PortRange string  `json:"ephemeral_ports"`
}

// ConnectReport covers the population's logins.
type ConnectReport struct {
	Devices     int     `json:"devices"`
	Connected   int     `json:"connected"`
	Seconds     float64 `json:"seconds"`
	PerSecond   float64 `json:"logins_per_second"`
	Login       Latency `json:"login"`
	RSSBefore   int64   `json:"server_rss_before_bytes"`
	RSSAfter    int64   `json:"server_rss_after_bytes"`
	BytesPerDev float64 `json:"server_rss_bytes_per_device"` // (after − before) / connected
	// SlopeBytesPerDev is the least-squares slope of RSS against open
	// connections over the connect samples.
	SlopeBytesPerDev float64  `json:"server_rss_slope_bytes_per_device"`
	Goroutines       int64    `json:"server_goroutines_after"`
	Samples          []Sample `json:"samples"`
}

// Sample is one server sample: connections open at the time, RSS and
// goroutines.
type Sample struct {
	AtSeconds   float64 `json:"at_s"`
	Connections int     `json:"connections"`
	RSSBytes    int64   `json:"rss_bytes"`
	Goroutines  int64   `json:"goroutines"`
}

// PhaseReport is one ramp step or the steady phase.
type PhaseReport struct {
	Name        string  `json:"name"`
	OfferedRate float64 `json:"offered_ops_per_s"` // 0 = closed loop
	Seconds     float64 `json:"seconds"`
	Ops         int64   `json:"ops"`     // answered with code 0
	Refused     int64   `json:"refused"` // answered with a code (decided), or 1019 without Scenario.CountBusy
	// Busy: refused with 1019 before any decision (Scenario.CountBusy),
	// not resent; not in Ops, Refused, OpsPerSec or the op latency.
	Busy       int64   `json:"busy,omitempty"`
	BusyPerSec float64 `json:"busy_per_s,omitempty"`
	Failed     int64   `json:"failed"` // no answer (transport error, timeout)
	Missed     int64   `json:"missed"` // open-loop ticks with every worker busy
	// OpsPerSec is the achieved rate: ops answered with a decision
	// (Ops + Refused) per second.
	OpsPerSec       float64          `json:"ops_per_s"`
	ByKind          map[string]int64 `json:"by_kind"`
	Delivered       int64            `json:"delivered"` // live events received by another device
	DeliveredPerSec float64          `json:"delivered_per_s"`
	Evictions       int64            `json:"evictions"` // kicked frames with code 206 seen
	Op              Latency          `json:"op"`        // op sent → decision received
	Delivery        Latency          `json:"delivery"`  // message sent → received on another device
	Login           Latency          `json:"login"`     // dial + login decision (eviction logins and re-logins)
	CatchUp         Latency          `json:"catchup"`   // reconnect dial → marker received
	// CatchUpSnapshots: reconnects answered with a snapshot instead of
	// the missed events (not in the catch-up latency).
	CatchUpSnapshots int64 `json:"catchup_snapshots"`
	// ServerCPUSeconds is the server process's user+system CPU time over
	// the phase (its /proc/<pid>/stat; 0 when the pid is not known), and
	// the same per delivered event and per decided op, in µs.
	ServerCPUSeconds        float64 `json:"server_cpu_s,omitempty"`
	ServerCPUPerDeliveredUs float64 `json:"server_cpu_us_per_delivered,omitempty"`
	ServerCPUPerOpUs        float64 `json:"server_cpu_us_per_op,omitempty"`
}

// setServerCPU records the server's CPU time over the phase.
func (p *PhaseReport) setServerCPU(d time.Duration) {
	p.ServerCPUSeconds = d.Seconds()
	if p.Delivered > 0 {
		p.ServerCPUPerDeliveredUs = d.Seconds() * 1e6 / float64(p.Delivered)
	}
	if n := p.Ops + p.Refused; n > 0 {
		p.ServerCPUPerOpUs = d.Seconds() * 1e6 / float64(n)
	}
}

// SaturatingRate is the best achieved rate of the ramp steps (the open
// loop phases before the overload step): what the server sustained.
func SaturatingRate(phases []PhaseReport) float64 {
	best := 0.0
	for _, p := range phases {
		if p.OfferedRate > 0 && p.Name != OverloadPhase {
			best = max(best, p.OpsPerSec)
		}
	}
	return best
}

// CatchUpReport is the catch-up phase.
type CatchUpReport struct {
	Devices      int     `json:"devices"`
	MissedPerDev int     `json:"missed_per_device"`
	SendSeconds  float64 `json:"send_seconds"`
	Seconds      float64 `json:"seconds"` // reconnect of all → last marker
	Events       int64   `json:"events"`
	Snapshots    int     `json:"snapshots"` // devices that got a snapshot instead of the events
	EventsPerSec float64 `json:"events_per_s"`
	CompleteDevs int     `json:"complete_devices"`
	PerDevice    Latency `json:"per_device"`
	RSSPeakBytes int64   `json:"server_rss_peak_bytes"`
}

// BaselineReport is the same closed loop against the protocol echo server.
type BaselineReport struct {
	What      string  `json:"what"`
	Devices   int     `json:"devices"`
	Seconds   float64 `json:"seconds"`
	Ops       int64   `json:"ops"`
	OpsPerSec float64 `json:"ops_per_s"`
	Op        Latency `json:"op"`
	// Ratio is the steady phase's (or the last phase's) ops/s over the
	// baseline's; both ran in this process, one after the other.
	Ratio float64 `json:"ratio"`
}

// ServerReport summarizes the sampler over the whole run.
type ServerReport struct {
	PID            int      `json:"pid"`
	PeakRSSBytes   int64    `json:"peak_rss_bytes"`
	PeakGoroutines int64    `json:"peak_goroutines"`
	Samples        []Sample `json:"samples"`
}

// WriteJSON writes the report to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// WriteMarkdown writes the summary tables.
func (r *Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	f := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	f("### mdsync-bench `%s` — %s\n\n", r.Scenario.Name, r.StartedAt.UTC().Format("2006-01-02 15:04 UTC"))
	f("Command: `%s`  \nServer: %s. Machine: %d CPUs (%s), %s, load %.2f at start, %.2f at end; nofile %d; ports %s.\n\n",
		r.Command, r.Server, r.Machine.CPUs, r.Machine.CPUModel, r.Machine.GoVersion, r.Machine.Load1, r.Machine.Load1End, r.Machine.NoFile, r.Machine.PortRange)
	c := r.Connect
	f("| population | devices | connected | logins/s | login p50 / p99 ms | server RSS before → after | RSS per device (after−before)/n | slope | server goroutines |\n")
	f("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	f("| %d users × %d | %d | %d | %.0f | %.2f / %.2f | %s → %s | %.1f KiB | %.1f KiB | %d |\n\n",
		r.Scenario.Users, r.Scenario.DevicesPerUser, c.Devices, c.Connected, c.PerSecond, c.Login.P50Ms, c.Login.P99Ms,
		mib(c.RSSBefore), mib(c.RSSAfter), c.BytesPerDev/1024, c.SlopeBytesPerDev/1024, c.Goroutines)
	if r.Trace != nil {
		r.Trace.writeMarkdown(f)
	}
	if len(r.Phases) > 0 {
		f("| phase | offered ops/s | achieved ops/s | busy (1019) /s | ops | refused | failed | missed / skipped | op p50 / p99 ms | delivered events/s | delivery p50 / p99 / max ms | login p99 ms | catch-up p99 ms | evictions | server CPU cores | server CPU µs / delivered |\n")
		f("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
		for _, p := range append(append([]PhaseReport(nil), r.Phases...), r.Total) {
			offered := "closed loop"
			if p.OfferedRate > 0 {
				offered = fmt.Sprintf("%.0f", p.OfferedRate)
			}
			cores, perDelivered := "—", "—"
			if p.ServerCPUSeconds > 0 && p.Seconds > 0 {
				cores = fmt.Sprintf("%.2f", p.ServerCPUSeconds/p.Seconds)
			}
			if p.ServerCPUPerDeliveredUs > 0 {
				perDelivered = fmt.Sprintf("%.0f", p.ServerCPUPerDeliveredUs)
			}
			f("| %s | %s | %.0f | %.0f | %d | %d | %d | %d | %.2f / %.2f | %.0f | %.2f / %.2f / %.1f | %.2f | %.2f | %d | %s | %s |\n",
				p.Name, offered, p.OpsPerSec, p.BusyPerSec, p.Ops, p.Refused, p.Failed, p.Missed, p.Op.P50Ms, p.Op.P99Ms,
				p.DeliveredPerSec, p.Delivery.P50Ms, p.Delivery.P99Ms, p.Delivery.MaxMs, p.Login.P99Ms, p.CatchUp.P99Ms, p.Evictions, cores, perDelivered)
		}
		f("\n")
		for _, p := range r.Phases {
			if p.Name != OverloadPhase {
				continue
			}
			peak := SaturatingRate(r.Phases)
			if r.Scenario.CountBusy {
				f("Past saturation: the best ramp step achieved %.0f ops/s; offered %.0f ops/s (%.1f×), mdsync achieved **%.0f ops/s = %.2f of that peak**, op p99 %.0f ms (decided ops); the excess refused early: %.0f ops/s busy (%d, 1019 with retry_after_ms, not decided), %d refused otherwise, %d failed, %d ticks missed by the load generator.\n\n",
					peak, p.OfferedRate, p.OfferedRate/peak, p.OpsPerSec, p.OpsPerSec/peak, p.Op.P99Ms, p.BusyPerSec, p.Busy, p.Refused, p.Failed, p.Missed)
				continue
			}
			f("Past saturation: the best ramp step achieved %.0f ops/s; offered %.0f ops/s (%.1f×), mdsync achieved **%.0f ops/s = %.2f of that peak**, op p99 %.0f ms, %d refused (busy or otherwise), %d failed, %d ticks missed by the load generator.\n\n",
				peak, p.OfferedRate, p.OfferedRate/peak, p.OpsPerSec, p.OpsPerSec/peak, p.Op.P99Ms, p.Refused, p.Failed, p.Missed)
		}
		for _, p := range r.Phases {
			if p.Name == "steady" && p.ServerCPUPerDeliveredUs > 0 {
				f("Server CPU over the steady phase: %.1f s in %.1f s (%.2f cores), **%.0f µs per delivered event**, %.0f µs per op (the server's /proc/PID/stat utime+stime).\n\n",
					p.ServerCPUSeconds, p.Seconds, p.ServerCPUSeconds/p.Seconds, p.ServerCPUPerDeliveredUs, p.ServerCPUPerOpUs)
			}
		}
	}
	if cu := r.CatchUp; cu != nil {
		f("| catch-up | devices | missed each | complete | by snapshot | events | events/s | per device p50 / p99 / max ms | sends decided and applied | server RSS peak |\n")
		f("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
		f("| reconnect all at once | %d | %d | %d | %d | %d | %.0f | %.1f / %.1f / %.1f | %.1f s | %s |\n\n",
			cu.Devices, cu.MissedPerDev, cu.CompleteDevs, cu.Snapshots, cu.Events, cu.EventsPerSec, cu.PerDevice.P50Ms, cu.PerDevice.P99Ms, cu.PerDevice.MaxMs, cu.SendSeconds, mib(cu.RSSPeakBytes))
	}
	if bl := r.Baseline; bl != nil {
		f("Same-run baseline: %s — %.0f ops/s (p50 %.2f ms, p99 %.2f ms) over %d devices; **mdsync / baseline = %.3f**.\n\n",
			bl.What, bl.OpsPerSec, bl.Op.P50Ms, bl.Op.P99Ms, bl.Devices, bl.Ratio)
	}
	f("Server peak RSS %s, peak goroutines %d.\n", mib(r.ServerSamples.PeakRSSBytes), r.ServerSamples.PeakGoroutines)
	if len(r.Errors) > 0 {
		f("\nErrors:")
		for _, k := range slices.Sorted(maps.Keys(r.Errors)) {
			f(" %s ×%d;", k, r.Errors[k])
		}
		f("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

package loadgen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// userHZ is the unit of /proc/<pid>/stat's CPU times (USER_HZ, 100 on
// every Linux mdsync-bench runs on; sysconf(_SC_CLK_TCK) needs cgo).
const userHZ = 100

// ReadCPUTime returns the user plus system CPU time process pid has used,
// from /proc/<pid>/stat (Linux only); an error for pid 0 (not known).
func ReadCPUTime(pid int) (time.Duration, error) {
	if pid <= 0 {
		return 0, errors.New("no server pid")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b))
}

// parseStatCPU reads utime and stime (fields 14 and 15) of a stat line;
// the command name (field 2) may hold spaces and parentheses, so fields
// are counted after its last ')'.
func parseStatCPU(line string) (time.Duration, error) {
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected stat line %.80q", line)
	}
	f := strings.Fields(line[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, fmt.Errorf("unexpected stat line %.80q", line)
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("stat cpu field %q: %w", s, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// ReadRSS returns the resident set size of process pid in bytes, from the
// VmRSS line of /proc/<pid>/status (Linux only).
func ReadRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseVmRSS(f)
}

func parseVmRSS(r io.Reader) (int64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "VmRSS:") {
			continue
		}
		fields := strings.Fields(strings.TrimPrefix(line, "VmRSS:"))
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("unexpected VmRSS line %q", line)
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmRSS %q: %w", line, err)
		}
		return kb * 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no VmRSS line (kernel thread or exited process?)")
}

// families parses the Prometheus text exposition format (prometheus/common's
// parser, as Prometheus reads it).
func families(r io.Reader) (map[string]*dto.MetricFamily, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(r)
}

// valueOf is a gauge's, a counter's or an untyped sample's value.
func valueOf(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	}
	return m.GetUntyped().GetValue()
}

// parseGauge finds an unlabelled gauge (e.g. go_goroutines).
func parseGauge(r io.Reader, name string) (float64, error) {
	fams, err := families(r)
	if err != nil {
		return 0, err
	}
	for _, m := range fams[name].GetMetric() {
		if len(m.Label) == 0 {
			return valueOf(m), nil
		}
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// sumSeries adds up every series of a metric, labelled or not (e.g.
// mdsync_projection_lag_events{partition="3"}); found is false when there
// is none.
func sumSeries(r io.Reader, name string) (sum float64, found bool, err error) {
	fams, err := families(r)
	if err != nil {
		return 0, false, err
	}
	for _, m := range fams[name].GetMetric() {
		sum, found = sum+valueOf(m), true
	}
	return sum, found, nil
}

// MetricsReader reads gauges from the server's /metrics with the admin
// token.
type MetricsReader struct {
	URL   string // http://host:port/metrics
	Token string
	HC    *http.Client
}

func (m MetricsReader) Gauge(ctx context.Context, name string) (float64, error) {
	var v float64
	err := m.read(ctx, func(r io.Reader) (err error) { v, err = parseGauge(r, name); return err })
	return v, err
}

// Sum is the sum of every series of a metric (0 series: an error).
func (m MetricsReader) Sum(ctx context.Context, name string) (float64, error) {
	var v float64
	err := m.read(ctx, func(r io.Reader) error {
		sum, found, err := sumSeries(r, name)
		if err == nil && !found {
			err = fmt.Errorf("metric %s not found", name)
		}
		v = sum
		return err
	})
	return v, err
}

func (m MetricsReader) read(ctx context.Context, parse func(io.Reader) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.URL, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+m.Token)
	resp, err := m.HC.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", m.URL, resp.Status)
	}
	return parse(io.LimitReader(resp.Body, 16<<20))
}

// Sampler samples the server's RSS (when its pid is known) and goroutine
// count, periodically and on demand, and keeps the peaks.
type Sampler struct {
	PID     int // 0: the server is not ours; RSS is not sampled
	Metrics MetricsReader
	Conns   func() int // connections open now
	start   time.Time

	mu      sync.Mutex
	samples []Sample
	peakRSS int64
	peakG   int64
	lastErr error
}

func NewSampler(pid int, m MetricsReader, conns func() int) *Sampler {
	return &Sampler{PID: pid, Metrics: m, Conns: conns, start: time.Now()}
}

// Sample takes one sample now and keeps it.
func (s *Sampler) Sample(ctx context.Context) Sample {
	sm := Sample{AtSeconds: time.Since(s.start).Seconds(), Connections: s.Conns()}
	var errs []error
	if s.PID > 0 {
		rss, err := ReadRSS(s.PID)
		sm.RSSBytes = rss
		errs = append(errs, err)
	}
	if s.Metrics.URL != "" {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		g, err := s.Metrics.Gauge(ctx, "go_goroutines")
		cancel()
		sm.Goroutines = int64(g)
		errs = append(errs, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples = append(s.samples, sm)
	s.peakRSS = max(s.peakRSS, sm.RSSBytes)
	s.peakG = max(s.peakG, sm.Goroutines)
	if err := errors.Join(errs...); err != nil {
		s.lastErr = err
	}
	return sm
}

// Run samples every interval until ctx ends.
func (s *Sampler) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Sample(ctx)
		}
	}
}

// Report returns the peaks and every sample so far.
func (s *Sampler) Report() (ServerReport, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return ServerReport{PID: s.PID, PeakRSSBytes: s.peakRSS, PeakGoroutines: s.peakG,
		Samples: append([]Sample(nil), s.samples...)}, s.lastErr
}

// PeakSince is the highest RSS sampled at or after t seconds.
func (s *Sampler) PeakSince(at float64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var p int64
	for _, sm := range s.samples {
		if sm.AtSeconds >= at {
			p = max(p, sm.RSSBytes)
		}
	}
	return p
}

func (s *Sampler) Since() float64 { return time.Since(s.start).Seconds() }

package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestScenarioFilesLoad(t *testing.T) {
	files, err := filepath.Glob("../scenarios/*.json")
	if err != nil || len(files) < 4 {
		t.Fatalf("scenario files: %v %v", files, err)
	}
	for _, f := range files {
		s, err := LoadScenario(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if want := strings.TrimSuffix(filepath.Base(f), ".json"); s.Name != want {
			t.Errorf("%s: name %q, want %q (the plots are named after it)", f, s.Name, want)
		}
	}
}

func TestScenarioValidate(t *testing.T) {
	ok := defaultScenario()
	ok.Steady = Steady{Seconds: 1}
	ok.Mix = Mix{UserMessage: 50, Receipt: 15, Operation: 15, EvictionLogin: 5, Reconnect: 5}
	if err := ok.Validate(); err != nil {
		t.Fatalf("default: %v", err)
	}
	bad := map[string]func(*Scenario){
		"too many devices":         func(s *Scenario) { s.Users, s.DevicesPerUser = 100_000, 16 },
		"platform limit too low":   func(s *Scenario) { s.DevicesPerUser, s.Platforms, s.PlatformLimit = 4, 2, 1 },
		"group larger than users":  func(s *Scenario) { s.Groups, s.GroupSize = 1, 11 },
		"group messages, no group": func(s *Scenario) { s.Mix.GroupMessage = 1 },
		"load without a mix":       func(s *Scenario) { s.Mix = Mix{} },
		"ramp without seconds":     func(s *Scenario) { s.Ramp = Ramp{ToRate: 10, Steps: 2} },
		"catch-up of everyone":     func(s *Scenario) { s.CatchUp = CatchUp{Devices: 20, Missed: 1} },
		"catch-up of nothing":      func(s *Scenario) { s.CatchUp = CatchUp{Devices: 2} },
		"NaN seconds":              func(s *Scenario) { s.IdleSeconds = nan() },
		"empty app":                func(s *Scenario) { s.App = "" },
		"source addrs 0":           func(s *Scenario) { s.SourceAddrs = 0 },
		"negative weight":          func(s *Scenario) { s.Mix.Receipt = -1 },
	}
	for name, mut := range bad {
		s := ok
		mut(&s)
		if err := s.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Unknown fields are refused: a misspelt knob must not keep its default.
	p := filepath.Join(t.TempDir(), "x.json")
	os.WriteFile(p, []byte(`{"name":"x","usres":5}`), 0o644)
	if _, err := LoadScenario(p); err == nil || !strings.Contains(err.Error(), "usres") {
		t.Errorf("unknown field: %v", err)
	}
}

func nan() float64 { z := 0.0; return z / z }

func TestPhases(t *testing.T) {
	s := defaultScenario()
	s.Ramp = Ramp{FromRate: 100, ToRate: 400, Steps: 4, StepSeconds: 2}
	s.Steady = Steady{Rate: 0, Seconds: 5}
	ph := s.Phases()
	want := []float64{100, 200, 300, 400, 0}
	if len(ph) != len(want) {
		t.Fatalf("phases %v", ph)
	}
	for i, p := range ph {
		if p.Rate != want[i] {
			t.Errorf("phase %d rate %v, want %v", i, p.Rate, want[i])
		}
	}
	if ph[4].Name != "steady" || ph[4].Duration != 5*time.Second || ph[0].Duration != 2*time.Second {
		t.Errorf("phases %+v", ph)
	}
}

func TestRecorderPercentiles(t *testing.T) {
	r := NewRecorder()
	for i := 1; i <= 1000; i++ {
		r.Record(time.Duration(i) * time.Millisecond)
	}
	r.Record(time.Hour) // clamped to the range, still counted
	l := r.Snapshot(false)
	if l.Count != 1001 {
		t.Errorf("count %d", l.Count)
	}
	near := func(got, want float64) bool { return got >= want*0.99 && got <= want*1.01 }
	if !near(l.P50Ms, 500) || !near(l.P99Ms, 990) || !near(l.P90Ms, 900) {
		t.Errorf("percentiles %+v", l)
	}
	if l.MaxMs < 599_000 {
		t.Errorf("max %v: the out-of-range value was not clamped to 10 min", l.MaxMs)
	}
	total := NewRecorder()
	total.Merge(r)
	if got := r.Snapshot(true); got.Count != 1001 {
		t.Errorf("snapshot before reset %d", got.Count)
	}
	if got := r.Snapshot(false); got.Count != 0 {
		t.Errorf("after reset %d", got.Count)
	}
	if got := total.Snapshot(false); got.Count != 1001 || !near(got.P50Ms, 500) {
		t.Errorf("merged %+v", got)
	}
}

func TestParseVmRSSAndGauge(t *testing.T) {
	status := "Name:\tmdsync\nVmPeak:\t  999 kB\nVmRSS:\t   12345 kB\nThreads:\t7\n"
	if n, err := parseVmRSS(strings.NewReader(status)); err != nil || n != 12345*1024 {
		t.Errorf("VmRSS: %d %v", n, err)
	}
	if _, err := parseVmRSS(strings.NewReader("Name:\tx\n")); err == nil {
		t.Error("missing VmRSS accepted")
	}
	if n, err := ReadRSS(os.Getpid()); err != nil || n < 1<<20 {
		t.Errorf("own RSS: %d %v", n, err)
	}
	metrics := "# HELP go_goroutines_total x\ngo_goroutines_total 5\n# TYPE go_goroutines gauge\ngo_goroutines{x=\"y\"} 9\ngo_goroutines 42\n"
	if g, err := parseGauge(strings.NewReader(metrics), "go_goroutines"); err != nil || g != 42 {
		t.Errorf("gauge: %v %v", g, err)
	}
	if _, err := parseGauge(strings.NewReader("other 1\n"), "go_goroutines"); err == nil {
		t.Error("missing gauge accepted")
	}
	lag := "# TYPE mdsync_projection_lag_events gauge\nmdsync_projection_lag_events{partition=\"0\"} 3\nmdsync_projection_lag_events{partition=\"1\"} 4\nmdsync_projection_lag_events_total 100\n"
	if sum, found, err := sumSeries(strings.NewReader(lag), "mdsync_projection_lag_events"); err != nil || !found || sum != 7 {
		t.Errorf("sum: %v %v %v", sum, found, err)
	}
	if _, found, err := sumSeries(strings.NewReader("x 1\n"), "mdsync_projection_lag_events"); err != nil || found {
		t.Errorf("absent metric: %v %v", found, err)
	}
	if _, err := parseGauge(strings.NewReader("go_goroutines{ 1\n"), "go_goroutines"); err == nil {
		t.Error("a malformed exposition was read")
	}
}

func TestSamplerReadsMetricsWithToken(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		w.Write([]byte("go_goroutines 17\n"))
	}))
	defer srv.Close()
	conns := 3
	s := NewSampler(os.Getpid(), MetricsReader{URL: srv.URL + "/metrics", Token: "tok", HC: srv.Client()}, func() int { return conns })
	sm := s.Sample(context.Background())
	if sm.Goroutines != 17 || sm.RSSBytes <= 0 || sm.Connections != 3 {
		t.Errorf("sample %+v", sm)
	}
	rep, err := s.Report()
	if err != nil || rep.PeakGoroutines != 17 || len(rep.Samples) != 1 || rep.PeakRSSBytes != sm.RSSBytes {
		t.Errorf("report %+v %v", rep, err)
	}
	s.Metrics.Token = "wrong"
	s.Sample(context.Background())
	if _, err := s.Report(); err == nil {
		t.Error("a refused /metrics read is not reported")
	}
}

func TestSourceAddrsSpreadConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	seen := make(chan string, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			seen <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			c.Close()
		}
	}()
	s, err := NewSourceAddrs(3)
	if err != nil {
		t.Fatal(err)
	}
	dial := s.Dialer()
	got := map[string]int{}
	for i := 0; i < 6; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := dial(ctx, "tcp", ln.Addr().String())
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		got[<-seen]++
	}
	for _, ip := range []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"} {
		if got[ip] != 2 {
			t.Errorf("connections from %s: %d, want 2 (%v)", ip, got[ip], got)
		}
	}
	if _, err := NewSourceAddrs(0); err == nil {
		t.Error("0 addresses accepted")
	}
	if _, err := NewSourceAddrs(MaxLoopbackSources + 1); err == nil {
		t.Error("too many addresses accepted")
	}
}

func TestRaiseNoFile(t *testing.T) {
	n, err := RaiseNoFile(1024)
	if err != nil || n < 1024 {
		t.Errorf("RaiseNoFile(1024) = %d %v", n, err)
	}
}

func sampleReport() *Report {
	r := &Report{Scenario: defaultScenario(), Command: "mdsync-bench x", StartedAt: time.Unix(0, 0), Errors: map[string]int{"dial": 2}}
	r.Scenario.Name = "unit"
	for i, rate := range []float64{100, 200, 0} {
		r.Phases = append(r.Phases, PhaseReport{Name: "p", OfferedRate: rate, OpsPerSec: 100 * float64(i+1), Ops: 10,
			Op: Latency{Count: 10, P50Ms: float64(i + 1), P99Ms: float64(2 * (i + 1))}, Delivery: Latency{Count: 5, P50Ms: 3, P99Ms: 7}})
	}
	r.Total = PhaseReport{Name: "total", Ops: 30}
	for i := 0; i < 4; i++ {
		r.Connect.Samples = append(r.Connect.Samples, Sample{Connections: 1000 * i, RSSBytes: int64(50+i) << 20})
	}
	r.Baseline = &BaselineReport{What: "echo", OpsPerSec: 1000, Ratio: 0.3}
	r.CatchUp = &CatchUpReport{Devices: 2, MissedPerDev: 10, Events: 20}
	return r
}

func TestReportOutputs(t *testing.T) {
	r := sampleReport()
	dir := t.TempDir()
	if err := r.WriteJSON(filepath.Join(dir, "r.json")); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "r.json"))
	var back Report
	if err := json.Unmarshal(b, &back); err != nil || len(back.Phases) != 3 || back.Baseline.Ratio != 0.3 {
		t.Errorf("JSON round trip: %v %+v", err, back)
	}
	var md bytes.Buffer
	if err := r.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| phase |", "closed loop", "mdsync / baseline = 0.300", "dial ×2", "| catch-up |"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, md.String())
		}
	}
}

func TestWritePlots(t *testing.T) {
	dir := t.TempDir()
	files, err := WritePlots(sampleReport(), dir)
	if err != nil || len(files) != 2 {
		t.Fatalf("plots %v %v", files, err)
	}
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(fh)
		fh.Close()
		if err != nil || img.Bounds().Dx() < 100 {
			t.Errorf("%s: not a PNG of size: %v", f, err)
		}
	}
	// One phase is no curve: no latency plot.
	r := sampleReport()
	r.Phases = r.Phases[:1]
	r.Connect.Samples = nil
	if files, err := WritePlots(r, t.TempDir()); err != nil || len(files) != 0 {
		t.Errorf("single point: %v %v", files, err)
	}
}

func TestEchoServerAnswersTheProtocol(t *testing.T) {
	e, err := StartEchoServer(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+e.Addr+"/v1/ws", &websocket.DialOptions{Subprotocols: []string{"mdsync.v1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if c.Subprotocol() != "mdsync.v1" {
		t.Errorf("subprotocol %q", c.Subprotocol())
	}
	roundTrip := func(req string) map[string]any {
		if err := c.Write(ctx, websocket.MessageText, []byte(req)); err != nil {
			t.Fatal(err)
		}
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		json.Unmarshal(b, &m)
		return m
	}
	if m := roundTrip(`{"type":"login","id":"1","app":"a","user":"u","password":"p","platform":1}`); m["type"] != "login_result" || m["id"] != "1" || m["code"] != 0.0 || m["login_id"] == "" {
		t.Errorf("login: %v", m)
	}
	for i := 0; i < 3; i++ {
		if m := roundTrip(`{"type":"op","id":"x","event":{"kind":"KIND_MESSAGE_SEND"}}`); m["type"] != "result" || m["id"] != "x" || m["offset"] != float64(i+1) {
			t.Errorf("op %d: %v", i, m)
		}
	}
	if m := roundTrip(`{"type":"ping","id":"p"}`); m["type"] != "pong" {
		t.Errorf("ping: %v", m)
	}
	if e.Ops() != 3 {
		t.Errorf("ops %d", e.Ops())
	}
}

func TestRSSSlope(t *testing.T) {
	var ss []Sample
	for i := 0; i <= 4; i++ {
		ss = append(ss, Sample{Connections: 1000 * i, RSSBytes: 100<<20 + int64(i)*1000*16384})
	}
	ss = append(ss, Sample{Connections: 9999}) // no RSS: not ours, left out
	if got := rssSlope(ss); got < 16383 || got > 16385 {
		t.Errorf("slope %v, want 16384", got)
	}
	if got := rssSlope(ss[:1]); got != 0 {
		t.Errorf("one sample: slope %v", got)
	}
}

func TestParseStatCPU(t *testing.T) {
	// A command name with spaces and a ')' must not shift the fields.
	line := "4242 (my (mdsync) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 12 0 100 2000000 5000 18446744073709551615\n"
	d, err := parseStatCPU(line)
	if err != nil || d != 3250*time.Millisecond {
		t.Fatalf("parseStatCPU = %v, %v; want 3.25s (250+75 ticks)", d, err)
	}
	if _, err := parseStatCPU("garbage"); err == nil {
		t.Fatal("no error for a line without the command's ')'")
	}
	if _, err := ReadCPUTime(0); err == nil {
		t.Fatal("no error for pid 0")
	}
	self, err := ReadCPUTime(os.Getpid())
	if err != nil || self <= 0 {
		t.Fatalf("own CPU time %v, %v", self, err)
	}
}

func TestSaturatingRateAndOverloadStep(t *testing.T) {
	ph := []PhaseReport{
		{Name: "ramp-1", OfferedRate: 100, OpsPerSec: 99},
		{Name: "ramp-2", OfferedRate: 200, OpsPerSec: 180},
		{Name: "ramp-3", OfferedRate: 300, OpsPerSec: 150},
		{Name: OverloadPhase, OfferedRate: 360, OpsPerSec: 400}, // not a ramp step
		{Name: "steady", OpsPerSec: 500},                        // closed loop
	}
	if got := SaturatingRate(ph); got != 180 {
		t.Fatalf("SaturatingRate = %v, want 180", got)
	}
	sc := Scenario{Ramp: Ramp{FromRate: 100, ToRate: 300, Steps: 3, StepSeconds: 2, OverloadFactor: 2}, Steady: Steady{Seconds: 5}}
	var names []string
	for _, p := range sc.Phases() {
		names = append(names, p.Name)
	}
	if fmt.Sprint(names) != "[ramp-1 ramp-2 ramp-3 overload steady]" || sc.Phases()[3].Overload != 2 || sc.loadSeconds() != 13 {
		t.Fatalf("phases %v, overload %+v, load seconds %v", names, sc.Phases()[3], sc.loadSeconds())
	}
	p := PhaseReport{Ops: 900, Refused: 100, Delivered: 800}
	p.setServerCPU(2 * time.Second)
	if p.ServerCPUSeconds != 2 || p.ServerCPUPerDeliveredUs != 2500 || p.ServerCPUPerOpUs != 2000 {
		t.Fatalf("server CPU %+v", p)
	}
}

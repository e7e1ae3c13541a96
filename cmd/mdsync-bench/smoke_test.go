package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mdsync/mdsync/benchmarks/loadgen"
)

// buildBinaries builds this command and cmd/mdsync into dir (or takes
// mdsync from MDSYNC_BENCH_SERVE_BIN).
func buildBinaries(ctx context.Context, t *testing.T, dir string) (bench, mdsync string) {
	t.Helper()
	bench = filepath.Join(dir, "mdsync-bench")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bench, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	mdsync = os.Getenv("MDSYNC_BENCH_SERVE_BIN")
	if mdsync == "" {
		var err error
		if mdsync, err = loadgen.BuildMdsync(ctx, dir); err != nil {
			t.Fatal(err)
		}
	}
	return bench, mdsync
}

// TestSmokeScenario runs benchmarks/scenarios/smoke.json end to end
// through the built mdsync-bench binary, as a user would, against an
// `mdsync serve` it starts (built from this tree, or
// MDSYNC_BENCH_SERVE_BIN), and checks that every part of the report was
// produced with non-zero counts; then `mdsync-bench report` redraws the
// Markdown and plots from the saved JSON. It asserts that the tool works,
// never how fast: figures on a shared CI machine mean nothing.
func TestSmokeScenario(t *testing.T) {
	if testing.Short() {
		t.Skip("starts mdsync serve and runs the smoke scenario (~20 s)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	benchBin, mdsyncBin := buildBinaries(ctx, t, t.TempDir())
	scenario := "../../benchmarks/scenarios/smoke.json"
	sc, err := loadgen.LoadScenario(scenario)
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.CommandContext(ctx, benchBin, "run", "--scenario", scenario, "--out", out, "--mdsync-bin", mdsyncBin, "--quiet")
	stdout, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("mdsync-bench run: %v\n%s\n%s", err, stdout, stderr)
	}
	// The Markdown goes to the terminal too, with the files it wrote.
	if !strings.Contains(string(stdout), "mdsync / baseline =") || !strings.Contains(string(stdout), "wrote ") {
		t.Errorf("stdout lacks the report:\n%s", stdout)
	}

	// The files.
	for _, f := range []string{"smoke.json", "smoke.md", "smoke-latency.png", "smoke-connections.png"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	var back loadgen.Report
	b, _ := os.ReadFile(filepath.Join(out, "smoke.json"))
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}

	// The population connected, and the server was sampled.
	if c := back.Connect; c.Connected != sc.Devices() || c.Login.Count != int64(sc.Devices()) || c.RSSAfter <= 0 || c.Goroutines <= 0 {
		t.Errorf("connect %+v", c)
	}
	if back.ServerSamples.PeakRSSBytes <= 0 || back.ServerSamples.PeakGoroutines <= 0 || len(back.ServerSamples.Samples) < 2 {
		t.Errorf("server samples %+v", back.ServerSamples)
	}
	// Every phase did work, and the mix's parts all happened.
	if len(back.Phases) != len(sc.Phases()) {
		t.Fatalf("phases %d, want %d", len(back.Phases), len(sc.Phases()))
	}
	for _, p := range back.Phases {
		if p.Ops == 0 || p.Op.Count == 0 || p.Delivered == 0 || p.Delivery.Count == 0 {
			t.Errorf("phase %s: %+v", p.Name, p)
		}
	}
	// The step past saturation is offered twice what the ramp achieved at
	// best, and the server's CPU was read over every phase.
	var over *loadgen.PhaseReport
	for i, p := range back.Phases {
		if p.Name == loadgen.OverloadPhase {
			over = &back.Phases[i]
		}
		if p.ServerCPUSeconds <= 0 || p.ServerCPUPerOpUs <= 0 {
			t.Errorf("phase %s: no server CPU time (%v s, %v µs/op)", p.Name, p.ServerCPUSeconds, p.ServerCPUPerOpUs)
		}
	}
	if peak := loadgen.SaturatingRate(back.Phases); over == nil || peak <= 0 || over.OfferedRate != 2*peak {
		t.Errorf("overload step %+v, want offered 2 × %v", over, peak)
	}
	md, err := os.ReadFile(filepath.Join(out, sc.Name+".md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Past saturation:", "µs per delivered event", "mdsync / baseline ="} {
		if !strings.Contains(string(md), want) {
			t.Errorf("the Markdown report lacks %q", want)
		}
	}
	tot := back.Total
	for _, k := range []string{"user_message", "group_message", "receipt", "operation", "eviction_login", "reconnect"} {
		if tot.ByKind[k] == 0 {
			t.Errorf("no %s in the whole run: %v", k, tot.ByKind)
		}
	}
	if tot.Login.Count == 0 || tot.Evictions == 0 || tot.CatchUp.Count+tot.CatchUpSnapshots == 0 {
		t.Errorf("logins %d, evictions %d, catch-ups %d+%d", tot.Login.Count, tot.Evictions, tot.CatchUp.Count, tot.CatchUpSnapshots)
	}
	// Failures would mean the tool, not the server, broke: the benchmark
	// never closes a connection under its own request.
	if tot.Failed != 0 {
		t.Errorf("%d operations failed: %v", tot.Failed, back.ErrorFirst)
	}
	// Catch-up: every offline device got every missed event.
	cu := back.CatchUp
	if cu == nil || cu.CompleteDevs != cu.Devices || cu.Devices < sc.CatchUp.Devices || cu.Events < int64(cu.Devices*sc.CatchUp.Missed) {
		t.Errorf("catch-up %+v", cu)
	}
	// The same-run baseline and its ratio.
	if bl := back.Baseline; bl == nil || bl.Ops == 0 || bl.Ratio <= 0 {
		t.Errorf("baseline %+v", bl)
	}
	if !strings.HasPrefix(back.Command, "mdsync-bench run --scenario ") {
		t.Errorf("command %q", back.Command)
	}

	// report: the Markdown and plots again from the saved JSON.
	again := t.TempDir()
	if b, err := exec.CommandContext(ctx, benchBin, "report", "--out", again, filepath.Join(out, "smoke.json")).CombinedOutput(); err != nil {
		t.Fatalf("mdsync-bench report: %v\n%s", err, b)
	}
	for _, f := range []string{"smoke.md", "smoke-latency.png", "smoke-connections.png"} {
		if st, err := os.Stat(filepath.Join(again, f)); err != nil || st.Size() == 0 {
			t.Errorf("report %s: %v", f, err)
		}
	}
	// A wrong command says which there are, and exits 1.
	b, err = exec.CommandContext(ctx, benchBin, "nonsense").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(b), "unknown command \"nonsense\" (run, report, echo, trace)") {
		t.Errorf("mdsync-bench nonsense: %v %s", err, b)
	}
}

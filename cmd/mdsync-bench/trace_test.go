package main

import (
	"bufio"
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mdsync/mdsync/benchmarks/loadgen"
)

// TestTraceReplaysAnExportedRun records a history the way a team would:
// the smoke scenario against `mdsync serve --data DIR`, the server
// stopped, `mdsync export` of DIR. It then plays that history with
// `mdsync-bench trace --speed max` against a fresh server and checks that
// every operation was played and accepted, that the report has the
// scenario's figures, and that the new server's log, exported again,
// holds the same operations per kind as the recorded one. It asserts what
// was played, never how fast.
func TestTraceReplaysAnExportedRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts mdsync serve twice, runs the smoke scenario and plays it back (~40 s)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	tmp := t.TempDir()
	benchBin, mdsyncBin := buildBinaries(ctx, t, tmp)
	run := func(name string, args ...string) []byte {
		t.Helper()
		cmd := exec.CommandContext(ctx, name, args...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s\n%s", filepath.Base(name), strings.Join(args, " "), err, out, stderr.String())
		}
		return out
	}
	// stop stops a server once (Stop waits for an exit it sees only once).
	stopped := map[*loadgen.Server]bool{}
	stop := func(srv *loadgen.Server) {
		t.Helper()
		if stopped[srv] {
			return
		}
		stopped[srv] = true
		if err := srv.Stop(); err != nil {
			t.Error(err)
		}
	}
	serve := func(data string) *loadgen.Server {
		t.Helper()
		if err := os.Mkdir(data, 0o700); err != nil {
			t.Fatal(err)
		}
		// No debug listener: its default port is fixed, and shared.
		srv, err := loadgen.StartServer(ctx, loadgen.ServerOptions{Bin: mdsyncBin, Data: data, ExtraArgs: []string{"--debug-addr="}, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stop(srv) })
		return srv
	}
	at := func(srv *loadgen.Server) []string {
		return []string{"--addr", srv.Addr, "--admin-token-file", filepath.Join(srv.Data, "admin-token"), "--server-pid", strconv.Itoa(srv.PID()), "--quiet"}
	}

	// Record.
	rec := serve(filepath.Join(tmp, "recorded"))
	run(benchBin, append([]string{"run", "--scenario", "../../benchmarks/scenarios/smoke.json", "--out", filepath.Join(tmp, "smoke")}, at(rec)...)...)
	stop(rec)
	history := filepath.Join(tmp, "history.jsonl")
	run(mdsyncBin, "export", "--data", rec.Data, "--out", history)
	want := kindsIn(t, history)
	if want["message_send"] == 0 || want["login"] == 0 || want["read_receipt"] == 0 {
		t.Fatalf("the recorded run lacks messages, logins or receipts: %v", want)
	}

	// Play it back as fast as possible.
	fresh := serve(filepath.Join(tmp, "played"))
	out := filepath.Join(tmp, "trace")
	stdout := run(benchBin, append([]string{"trace", "--history", history, "--speed", "max", "--out", out}, at(fresh)...)...)
	if !strings.Contains(string(stdout), "| message_send |") {
		t.Errorf("stdout lacks the per-kind table:\n%s", stdout)
	}
	for _, f := range []string{"trace.json", "trace.md", "trace-connections.png"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	var rep loadgen.Report
	b, _ := os.ReadFile(filepath.Join(out, "trace.json"))
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	tr := rep.Trace
	if tr == nil {
		t.Fatal("no trace section in the report")
	}
	// Every operation of the history was played and accepted; presence
	// records are the gateway's and were skipped.
	for k, n := range tr.InTrace {
		if tr.Played[k]+tr.Skipped[k] != n {
			t.Errorf("%s: %d in the trace, %d played, %d skipped", k, n, tr.Played[k], tr.Skipped[k])
		}
		if strings.HasPrefix(k, "device_") != (tr.Skipped[k] == n) {
			t.Errorf("%s: %d skipped of %d", k, tr.Skipped[k], n)
		}
	}
	if len(tr.Refused) > 0 || len(tr.Failed) > 0 || len(tr.RefusedByCode) > 0 {
		t.Errorf("refused %v (codes %v), failed %v; errors %v", tr.Refused, tr.RefusedByCode, tr.Failed, rep.ErrorFirst)
	}
	if !maps.Equal(tr.InTrace, want) {
		t.Errorf("the trace read %v, the history holds %v", tr.InTrace, want)
	}
	// The scenario's figures.
	p := rep.Total
	if p.Ops == 0 || p.Op.Count == 0 || p.Delivered == 0 || p.Delivery.Count == 0 || p.Login.Count != want["login"] ||
		p.ServerCPUSeconds <= 0 || rep.ServerSamples.PeakRSSBytes <= 0 {
		t.Errorf("figures %+v, server %+v", p, rep.ServerSamples)
	}
	if c := rep.Connect; c.Devices != tr.Devices || c.Connected != tr.Devices || c.RSSAfter <= 0 {
		t.Errorf("connect %+v, want all %d devices", c, tr.Devices)
	}
	if p.ByKind["message_send"] != want["message_send"] {
		t.Errorf("message_send booked %d, want %d", p.ByKind["message_send"], want["message_send"])
	}

	// The new server's log holds what the recorded one did. Presence
	// records follow connection lifetimes, not operations: not compared.
	stop(fresh)
	again := filepath.Join(tmp, "played.jsonl")
	run(mdsyncBin, "export", "--data", fresh.Data, "--out", again)
	got := kindsIn(t, again)
	for _, m := range []map[string]int64{got, want} {
		delete(m, "device_connected")
		delete(m, "device_disconnected")
	}
	if !maps.Equal(got, want) {
		t.Errorf("the played server's log holds %v, the recorded one %v", got, want)
	}

	// The command is in the tool's usage.
	if b := run(benchBin, "help"); !strings.Contains(string(b), "\n  trace ") {
		t.Errorf("mdsync-bench help does not list trace:\n%s", b)
	}
	// A bad speed is refused before anything starts.
	cmd := exec.CommandContext(ctx, benchBin, "trace", "--history", history, "--speed", "fast")
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), `speed "fast"`) {
		t.Errorf("trace --speed fast: %v %s", err, b)
	}
}

// kindsIn counts an export's rows per op.
func kindsIn(t *testing.T, path string) map[string]int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := map[string]int64{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 8<<20)
	for sc.Scan() {
		var row struct {
			Op string `json:"op"`
		}
		if err := json.Unmarshal(sc.Bytes(), &row); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		n[row.Op]++
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

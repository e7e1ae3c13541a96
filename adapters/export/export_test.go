package export

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/mdsync/mdsync/adapters/opjson"
	"github.com/mdsync/mdsync/adapters/replay/replaytest"
	"github.com/mdsync/mdsync/engine"
	"github.com/parquet-go/parquet-go"
)

// exportString exports the whole log as JSON lines to memory.
func exportString(t *testing.T, lg engine.Log, cfg Config) string {
	t.Helper()
	var buf bytes.Buffer
	cfg.Format = "jsonl"
	if _, err := Run(context.Background(), lg, cfg, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// TestExportReplayDigest: replaying an export rebuilds the source's state
// exactly: the same digest, for the seed examples (every op kind) and a
// random history with evictions, refusals, policies and binary bodies.
func TestExportReplayDigest(t *testing.T) {
	cases := map[string]string{
		"multi_platform_eviction": replaytest.ReadExample(t, "multi_platform_eviction.jsonl"),
		"policy_lower_limit":      replaytest.ReadExample(t, "policy_lower_limit.jsonl"),
		"sync_operations":         replaytest.ReadExample(t, "sync_operations.jsonl"),
		"random":                  replaytest.RandomHistory(1, 1500),
	}
	for name, input := range cases {
		t.Run(name, func(t *testing.T) {
			src := t.TempDir()
			want := replaytest.Into(t, src, input)
			lg := replaytest.OpenLog(t, src)
			exp := exportString(t, lg, Config{Partition: -1, ToOffset: -1})
			end, _ := lg.End(context.Background(), 0)
			if n := strings.Count(exp, "\n"); int64(n) != end {
				t.Fatalf("export has %d rows, the log %d records", n, end)
			}
			got := replaytest.Into(t, t.TempDir(), exp)
			if got != want {
				t.Fatalf("digest of the replayed export %s, source %s", got, want)
			}
		})
	}
}

// cancelAfter is a log whose reads cancel ctx after n reads: an export
// stopped midway, as by a signal.
type cancelAfter struct {
	engine.Log
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(ctx context.Context, p int32, from int64, max int) ([]engine.Entry, error) {
	if c.n--; c.n < 0 {
		c.cancel()
		return nil, ctx.Err()
	}
	return c.Log.Read(ctx, p, from, min(max, 37))
}

// TestExportResume: an export stopped by --limit, by a cancelled context,
// or with uncommitted bytes left behind (a crash between writing data and
// updating the position), then resumed, equals a one-shot export: nothing
// twice, nothing missed. Both formats.
func TestExportResume(t *testing.T) {
	src := t.TempDir()
	replaytest.Into(t, src, replaytest.RandomHistory(2, 1200))
	lg := replaytest.OpenLog(t, src)
	ctx := context.Background()
	oneShot := exportString(t, lg, Config{Partition: -1, ToOffset: -1})

	t.Run("jsonl", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "events.jsonl")
		cfg := Config{Format: "jsonl", Out: out, Partition: -1, ToOffset: -1, ChunkRows: 50, Limit: 130}
		runs := 0
		for done := false; !done; runs++ {
			if runs > 50 {
				t.Fatal("export never finished")
			}
			switch runs % 3 {
			case 1: // a crash after writing rows the position does not cover
				f, _ := os.OpenFile(out, os.O_WRONLY|os.O_APPEND, 0)
				f.WriteString(`{"partition":0,"offset":999999,"op":"half a line`)
				f.Close()
			case 2: // a signal midway, after a few reads
				cctx, cancel := context.WithCancel(ctx)
				_, err := Run(cctx, &cancelAfter{Log: lg, n: 3, cancel: cancel}, cfg, nil)
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("cancelled export: %v", err)
				}
			}
			sum, err := Run(ctx, lg, cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			done = sum.Done
		}
		if runs < 5 {
			t.Fatalf("only %d runs", runs)
		}
		// Nothing new: a further run writes nothing, and cuts what a crash
		// left past the position.
		f, _ := os.OpenFile(out, os.O_WRONLY|os.O_APPEND, 0)
		f.WriteString(`{"partition":0,"offset":999999,"op":"half a line`)
		f.Close()
		if sum, err := Run(ctx, lg, cfg, nil); err != nil || sum.Rows != 0 || !sum.Done {
			t.Fatalf("run on a finished export: %+v %v", sum, err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != oneShot {
			t.Fatalf("resumed export (%d runs) differs from the one-shot one: %d vs %d bytes", runs, len(b), len(oneShot))
		}
		// A run selecting other records is refused.
		other := cfg
		other.SinceMs = 5
		if _, err := Run(ctx, lg, other, nil); engine.CodeOf(err) != engine.CodeConflict {
			t.Fatalf("resume with another selection: %v, want code %d", err, engine.CodeConflict)
		}
	})

	t.Run("parquet", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "pq")
		cfg := Config{Format: "parquet", Out: dir, Partition: -1, ToOffset: -1, ChunkRows: 40, Limit: 100}
		runs := 0
		for done := false; !done; runs++ {
			if runs > 50 {
				t.Fatal("export never finished")
			}
			switch runs % 3 {
			case 1: // a chunk renamed into place but not recorded yet
				pos := readPosition(t, filepath.Join(dir, "position.json"))
				os.WriteFile(filepath.Join(dir, partName(len(pos.Files)+1)), []byte("not committed"), 0o644)
			case 2:
				cctx, cancel := context.WithCancel(ctx)
				if _, err := Run(cctx, &cancelAfter{Log: lg, n: 2, cancel: cancel}, cfg, nil); !errors.Is(err, context.Canceled) {
					t.Fatalf("cancelled export: %v", err)
				}
			}
			sum, err := Run(ctx, lg, cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			done = sum.Done
		}
		got := readParquetDir(t, dir)
		var want []parquetRow
		for _, l := range strings.Split(strings.TrimSpace(oneShot), "\n") {
			var r opjson.Row
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				t.Fatal(err)
			}
			want = append(want, keyOf(r))
		}
		if len(got) != len(want) {
			t.Fatalf("parquet export has %d rows, the one-shot %d", len(got), len(want))
		}
		for i := range want {
			if got[i].Partition != want[i].Partition || got[i].Offset != want[i].Offset || got[i].EventID != want[i].EventID {
				t.Fatalf("row %d: %d/%d %s, want %d/%d %s", i, got[i].Partition, got[i].Offset, got[i].EventID,
					want[i].Partition, want[i].Offset, want[i].EventID)
			}
		}
	})
}

func keyOf(r opjson.Row) parquetRow {
	return parquetRow{Partition: r.Partition, Offset: r.Offset, EventID: r.EventID}
}

func readPosition(t *testing.T, path string) position {
	t.Helper()
	var pos position
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &pos); err != nil {
		t.Fatal(err)
	}
	return pos
}

// readParquetDir reads the committed files of an export directory, in order.
func readParquetDir(t *testing.T, dir string) []parquetRow {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	pos := readPosition(t, filepath.Join(dir, "position.json"))
	var listed []string
	for _, f := range files {
		if b := filepath.Base(f); b != "position.json" {
			listed = append(listed, b)
		}
	}
	if !slices.Equal(listed, pos.Files) {
		t.Fatalf("directory holds %v, the position lists %v", listed, pos.Files)
	}
	var out []parquetRow
	for _, f := range pos.Files {
		rows, err := parquet.ReadFile[parquetRow](filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rows...)
	}
	return out
}

// pythonWithPyarrow returns a python3 that imports pyarrow. Locally the
// test skips without one; under CI=true it must be there.
func pythonWithPyarrow(t *testing.T) string {
	t.Helper()
	py := os.Getenv("MDSYNC_PYTHON")
	if py == "" {
		py = "python3"
	}
	out, err := exec.Command(py, "-c", "import pyarrow; print(pyarrow.__version__)").CombinedOutput()
	if err != nil {
		if os.Getenv("CI") == "" {
			t.Skipf("no pyarrow (%s: %v); CI installs it (.ci/run)", py, err)
		}
		t.Fatalf("CI is set and %s cannot import pyarrow: %v\n%s", py, err, out)
	}
	return py
}

// TestExportParquetPyarrow: an independent reader (pyarrow) reads the
// Parquet export back with the expected rows and values.
func TestExportParquetPyarrow(t *testing.T) {
	py := pythonWithPyarrow(t)
	src := t.TempDir()
	replaytest.Into(t, src, replaytest.ReadExample(t, "multi_platform_eviction.jsonl")+replaytest.RandomHistory(3, 400))
	lg := replaytest.OpenLog(t, src)
	jsonl := exportString(t, lg, Config{Partition: -1, ToOffset: -1})
	dir := filepath.Join(t.TempDir(), "pq")
	if _, err := Run(context.Background(), lg, Config{Format: "parquet", Out: dir, Partition: -1, ToOffset: -1, ChunkRows: 150}, nil); err != nil {
		t.Fatal(err)
	}
	pos := readPosition(t, filepath.Join(dir, "position.json"))
	if len(pos.Files) < 2 {
		t.Fatalf("want several chunk files, got %v", pos.Files)
	}
	script := `
import json, sys, pyarrow.parquet as pq, pyarrow as pa
t = pa.concat_tables([pq.read_table(f) for f in sys.argv[1:]])
for r in t.to_pylist():
    if r["body"] is not None:
        r["body"] = r["body"].hex()
    print(json.dumps(r, sort_keys=True))
`
	args := []string{"-c", script}
	for _, f := range pos.Files {
		args = append(args, filepath.Join(dir, f))
	}
	out, err := exec.Command(py, args...).Output()
	if err != nil {
		t.Fatalf("pyarrow: %v", err)
	}
	type pyRow struct {
		Partition       int32    `json:"partition"`
		Offset          int64    `json:"offset"`
		EventID         string   `json:"event_id"`
		SchemaVersion   int32    `json:"schema_version"`
		Op              string   `json:"op"`
		App             string   `json:"app"`
		User            string   `json:"user"`
		ClientOpID      string   `json:"client_op_id"`
		TimeMs          int64    `json:"time_ms"`
		LoginID         *string  `json:"login_id"`
		Platform        *int32   `json:"platform"`
		DeviceName      *string  `json:"device_name"`
		Extension       *string  `json:"extension"`
		AutoLogin       *bool    `json:"auto_login"`
		PolicyAutoLogin *string  `json:"policy_auto_login"`
		PolicyVersion   *int64   `json:"policy_version"`
		ChatType        *string  `json:"chat_type"`
		To              *string  `json:"to"`
		Body            *string  `json:"body"`
		GroupID         *string  `json:"group_id"`
		Users           []string `json:"users"`
	}
	pyRows := strings.Split(strings.TrimSpace(string(out)), "\n")
	goRows := strings.Split(strings.TrimSpace(jsonl), "\n")
	if len(pyRows) != len(goRows) {
		t.Fatalf("pyarrow read %d rows, the export has %d", len(pyRows), len(goRows))
	}
	str := func(p *string) string {
		if p == nil {
			return "<null>"
		}
		return *p
	}
	logins := 0
	for i := range goRows {
		var p pyRow
		var g opjson.Row
		if err := json.Unmarshal([]byte(pyRows[i]), &p); err != nil {
			t.Fatalf("pyarrow row %d: %v: %s", i, err, pyRows[i])
		}
		if err := json.Unmarshal([]byte(goRows[i]), &g); err != nil {
			t.Fatal(err)
		}
		if p.Partition != g.Partition || p.Offset != g.Offset || p.EventID != g.EventID || p.Op != g.Op ||
			p.App != g.App || p.User != g.User || p.ClientOpID != g.ClientOpID || p.TimeMs != g.TimeMs ||
			uint32(p.SchemaVersion) != g.SchemaVersion || str(p.LoginID) != orNull(g.LoginID) {
			t.Fatalf("row %d differs:\npyarrow %s\nexport  %s", i, pyRows[i], goRows[i])
		}
		switch g.Op {
		case "login":
			logins++
			auto, _ := g.AutoLogin.(bool)
			if p.Platform == nil || *p.Platform != g.Platform || str(p.DeviceName) != g.DeviceName ||
				str(p.Extension) != orNull(g.Extension) || p.AutoLogin == nil || *p.AutoLogin != auto {
				t.Fatalf("login row %d differs:\npyarrow %s\nexport  %s", i, pyRows[i], goRows[i])
			}
		case "policy_set":
			if p.PolicyVersion == nil || uint64(*p.PolicyVersion) != g.PolicyVersion || str(p.PolicyAutoLogin) != g.AutoLogin {
				t.Fatalf("policy row %d differs:\npyarrow %s\nexport  %s", i, pyRows[i], goRows[i])
			}
		case "message_send":
			wantBody := "<null>"
			if g.Body != nil {
				wantBody = fmt.Sprintf("%x", *g.Body)
			} else if g.BodyBase64 == "/wA=" {
				wantBody = "ff00"
			}
			if str(p.Body) != wantBody || str(p.ChatType) != g.ChatType || str(p.To) != g.To {
				t.Fatalf("message row %d differs:\npyarrow %s\nexport  %s", i, pyRows[i], goRows[i])
			}
		default:
			if p.Platform != nil || p.AutoLogin != nil || p.PolicyVersion != nil {
				t.Fatalf("row %d (%s) has login or policy columns set: %s", i, g.Op, pyRows[i])
			}
		}
	}
	if logins < 50 {
		t.Fatalf("only %d logins checked", logins)
	}
}

func orNull(s string) string {
	if s == "" {
		return "<null>"
	}
	return s
}

// TestEventsDocConsumerCompiles builds the example consumer of
// docs/events.md, and checks the doc lists every export field, so neither
// rots.
func TestEventsDocConsumerCompiles(t *testing.T) {
	cmd := exec.Command("go", "build", "-o", filepath.Join(t.TempDir(), "consumer"), "./docs/examples/consumer")
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./docs/examples/consumer: %v\n%s", err, out)
	}
	b, err := os.ReadFile("../../docs/events.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range exportFieldNames() {
		if !strings.Contains(string(b), "`"+f+"`") {
			t.Errorf("docs/events.md does not list field `%s`", f)
		}
	}
}

// exportFieldNames lists the JSON and Parquet field names of an export.
func exportFieldNames() []string {
	var out []string
	for _, v := range []any{opjson.Row{}, parquetRow{}} {
		rt := reflect.TypeOf(v)
		for i := 0; i < rt.NumField(); i++ {
			for _, tag := range []string{rt.Field(i).Tag.Get("json"), rt.Field(i).Tag.Get("parquet")} {
				if name, _, _ := strings.Cut(tag, ","); name != "" && name != "-" {
					out = append(out, name)
				}
			}
		}
	}
	return out
}

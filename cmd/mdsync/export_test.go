package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/mdsync/mdsync/adapters/embedlog"
	"github.com/mdsync/mdsync/engine"
	"github.com/parquet-go/parquet-go"
)

// randomHistory is n operation lines of a few users of two apps: logins on
// three platforms (so fifth logins evict), reconnects, logouts, kicks,
// password changes, policies, messages of every chat type, receipts,
// contacts, groups, chatrooms and conversation marks. Many are refused by
// the rules; refusals are in the log too. Times are not monotonic.
func randomHistory(seed uint64, n int) string {
	r := rand.New(rand.NewPCG(seed, 7))
	apps := []string{"demo", "shop"}
	users := []string{"ann", "bob", "cat", "dan", "eve"}
	var b strings.Builder
	t := int64(1_700_000_000_000)
	line := func(m map[string]any) {
		bs, _ := json.Marshal(m)
		b.Write(bs)
		b.WriteByte('\n')
	}
	// active approximates the devices logged in, so that most operations
	// act as a live session; the rest act as ended or unknown login IDs and
	// are refused (engine.CheckActor), which the histories must cover too.
	active := map[string][]string{}
	for i := 0; i < n; i++ {
		t += int64(r.IntN(900_000)) - 100_000 // about 6 minutes a step, sometimes back
		app, u := apps[r.IntN(2)], users[r.IntN(len(users))]
		other := users[r.IntN(len(users))]
		dev := fmt.Sprintf("%s-d%d", u, r.IntN(8))
		if devs := active[app+"/"+u]; len(devs) > 0 && r.IntN(5) > 0 {
			dev = devs[r.IntN(len(devs))]
		}
		m := map[string]any{"app": app, "user": u, "time_ms": t, "client_op_id": fmt.Sprintf("op-%d", i)}
		switch k := r.IntN(100); {
		case k < 30:
			dev = fmt.Sprintf("%s-d%d", u, r.IntN(8))
			active[app+"/"+u] = append(active[app+"/"+u], dev)
			m["op"], m["login_id"], m["platform"] = "login", dev, 1+r.IntN(3)
			m["device_name"], m["extension"] = "name of "+dev, fmt.Sprintf("ext-%d", i)
			if r.IntN(4) == 0 {
				m["auto_login"] = true
			}
		case k < 36:
			m["op"], m["login_id"] = "logout", dev
		case k < 41:
			m["op"], m["login_id"] = "kick_device", dev
			if r.IntN(2) == 0 {
				m["by_login_id"] = fmt.Sprintf("%s-d%d", u, r.IntN(8))
			}
		case k < 43:
			m["op"] = []string{"kick_all_devices", "password_change", "user_remove"}[r.IntN(3)]
		case k < 45:
			m["op"], m["user"], m["admin"] = "policy_set", "admin", true
			m["default_limit"] = 1 + r.IntN(4)
			m["limits"] = map[string]int{"1": 1 + r.IntN(3)}
			if r.IntN(2) == 0 {
				m["mode"], m["auto_login"] = "single", "keep_current"
			}
			if r.IntN(3) == 0 {
				m["timeline_max_entries"] = 100 + r.IntN(100)
			}
		case k < 70:
			m["op"], m["login_id"], m["client_msg_id"] = "message_send", dev, fmt.Sprintf("m%d", i)
			switch r.IntN(4) {
			case 0, 1:
				m["chat_type"], m["to"] = "user", other
			case 2:
				m["chat_type"], m["to"] = "group", fmt.Sprintf("g%d", r.IntN(3))
			default:
				m["chat_type"], m["to"] = "chatroom", fmt.Sprintf("r%d", r.IntN(2))
			}
			if r.IntN(10) == 0 {
				m["body_base64"] = "/w" + "A=" // 0xff 0x00: not UTF-8
			} else {
				m["body"] = fmt.Sprintf("hello <%d> & \"you\"", i)
			}
		case k < 75:
			m["op"] = []string{"delivery_receipt", "read_receipt"}[r.IntN(2)]
			m["chat_type"], m["conversation_id"], m["message_id"] = "user", other, fmt.Sprintf("m%d", r.IntN(i+1))
		case k < 80:
			m["op"] = []string{"contact_request", "contact_accept", "contact_remove"}[r.IntN(3)]
			m["contact"] = other
			if other == u {
				m["contact"] = "zed"
			}
		case k < 88:
			m["op"], m["group_id"] = []string{"group_create", "group_join", "group_leave"}[r.IntN(3)], fmt.Sprintf("g%d", r.IntN(3))
		case k < 92:
			m["op"], m["room_id"] = []string{"chatroom_join", "chatroom_leave"}[r.IntN(2)], fmt.Sprintf("r%d", r.IntN(2))
		default:
			m["op"] = []string{"conversation_pin", "conversation_mark", "conversation_read"}[r.IntN(3)]
			m["chat_type"], m["conversation_id"] = "user", other
			if m["op"] == "conversation_mark" {
				m["mark"] = r.IntN(20)
			}
		}
		line(m)
	}
	return b.String()
}

// replayInto replays input into dir (kept) and returns the digest; every
// line must be valid.
func replayInto(t *testing.T, dir, input string) string {
	t.Helper()
	o, err := runReplayOn(t, replayConfig{Dir: dir, Partitions: 1, KeepGoing: true}, input)
	if err != nil {
		t.Fatalf("replay: %v\n%s", err, firstLines(o.raw, 20))
	}
	var errs []outRow
	for _, e := range o.ofType("error") {
		// An ended or unknown device acting on a group's or chatroom's
		// stream is refused before the append: a valid line, a "no".
		if !refusedByRule(engine.Errorf(engine.Code(e.Code), "%s", e.Message)) {
			errs = append(errs, e)
		}
	}
	if len(errs) > 0 {
		t.Fatalf("replay refused %d lines, first: %+v", len(errs), errs[0])
	}
	d := o.ofType("digest")
	if len(d) != 1 {
		t.Fatalf("no digest in:\n%s", firstLines(o.raw, 20))
	}
	return d[0].Digest
}

func firstLines(s string, n int) string {
	ls := strings.SplitN(s, "\n", n+1)
	return strings.Join(ls[:min(n, len(ls))], "\n")
}

func openTestLog(t *testing.T, dir string) engine.Log {
	t.Helper()
	lg, err := embedlog.Open(embedlog.Options{Dir: filepath.Join(dir, "log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lg.Close() })
	return lg
}

// exportString exports the whole log as JSON lines to memory.
func exportString(t *testing.T, lg engine.Log, cfg exportConfig) string {
	t.Helper()
	var buf bytes.Buffer
	cfg.Format = "jsonl"
	if _, err := export(context.Background(), lg, cfg, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// TestExportReplayDigest: replaying an export rebuilds the source's state
// exactly: the same digest, for the seed examples (every op kind) and a
// random history with evictions, refusals, policies and binary bodies.
func TestExportReplayDigest(t *testing.T) {
	cases := map[string]string{
		"multi_platform_eviction": readExample(t, "multi_platform_eviction.jsonl"),
		"policy_lower_limit":      readExample(t, "policy_lower_limit.jsonl"),
		"sync_operations":         readExample(t, "sync_operations.jsonl"),
		"random":                  randomHistory(1, 1500),
	}
	for name, input := range cases {
		t.Run(name, func(t *testing.T) {
			src := t.TempDir()
			want := replayInto(t, src, input)
			lg := openTestLog(t, src)
			exp := exportString(t, lg, exportConfig{Partition: -1, ToOffset: -1})
			end, _ := lg.End(context.Background(), 0)
			if n := strings.Count(exp, "\n"); int64(n) != end {
				t.Fatalf("export has %d rows, the log %d records", n, end)
			}
			got := replayInto(t, t.TempDir(), exp)
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
	replayInto(t, src, randomHistory(2, 1200))
	lg := openTestLog(t, src)
	ctx := context.Background()
	oneShot := exportString(t, lg, exportConfig{Partition: -1, ToOffset: -1})

	t.Run("jsonl", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "events.jsonl")
		cfg := exportConfig{Format: "jsonl", Out: out, Partition: -1, ToOffset: -1, ChunkRows: 50, Limit: 130}
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
				_, err := export(cctx, &cancelAfter{Log: lg, n: 3, cancel: cancel}, cfg, nil)
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("cancelled export: %v", err)
				}
			}
			sum, err := export(ctx, lg, cfg, nil)
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
		if sum, err := export(ctx, lg, cfg, nil); err != nil || sum.Rows != 0 || !sum.Done {
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
		if _, err := export(ctx, lg, other, nil); engine.CodeOf(err) != engine.CodeConflict {
			t.Fatalf("resume with another selection: %v, want code %d", err, engine.CodeConflict)
		}
	})

	t.Run("parquet", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "pq")
		cfg := exportConfig{Format: "parquet", Out: dir, Partition: -1, ToOffset: -1, ChunkRows: 40, Limit: 100}
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
				if _, err := export(cctx, &cancelAfter{Log: lg, n: 2, cancel: cancel}, cfg, nil); !errors.Is(err, context.Canceled) {
					t.Fatalf("cancelled export: %v", err)
				}
			}
			sum, err := export(ctx, lg, cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			done = sum.Done
		}
		got := readParquetDir(t, dir)
		var want []parquetRow
		for _, l := range strings.Split(strings.TrimSpace(oneShot), "\n") {
			var r exportRow
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

func keyOf(r exportRow) parquetRow {
	return parquetRow{Partition: r.Partition, Offset: r.Offset, EventID: r.EventID}
}

func readPosition(t *testing.T, path string) exportPosition {
	t.Helper()
	var pos exportPosition
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
	replayInto(t, src, readExample(t, "multi_platform_eviction.jsonl")+randomHistory(3, 400))
	lg := openTestLog(t, src)
	jsonl := exportString(t, lg, exportConfig{Partition: -1, ToOffset: -1})
	dir := filepath.Join(t.TempDir(), "pq")
	if _, err := export(context.Background(), lg, exportConfig{Format: "parquet", Out: dir, Partition: -1, ToOffset: -1, ChunkRows: 150}, nil); err != nil {
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
		var g exportRow
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
	for _, v := range []any{exportRow{}, parquetRow{}} {
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

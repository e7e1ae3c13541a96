package explain

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mdsync/mdsync/adapters/embedlog"
	"github.com/mdsync/mdsync/adapters/logsource"
	"github.com/mdsync/mdsync/adapters/replay/replaytest"
	"github.com/mdsync/mdsync/engine"
	"github.com/mdsync/mdsync/projections"
)

// TestExplainFifthLogin: a device evicted by a fifth login is explained
// with the evicting login's ID, name and extension, the policy version and
// the offset, in text and JSON, from the data directory's projections and
// from a rebuild.
func TestExplainFifthLogin(t *testing.T) {
	input := `{"op":"policy_set","default_limit":3}
{"op":"policy_set","default_limit":4}
{"op":"login","user":"alice","login_id":"a1","platform":1,"device_name":"phone1"}
{"op":"login","user":"alice","login_id":"a2","platform":1,"device_name":"phone2"}
{"op":"login","user":"bob","login_id":"b1","platform":1,"device_name":"bob's"}
{"op":"login","user":"alice","login_id":"a3","platform":1,"device_name":"phone3"}
{"op":"login","user":"alice","login_id":"a4","platform":1,"device_name":"phone4"}
{"op":"login","user":"alice","login_id":"a5","platform":1,"device_name":"phone5","extension":"hello <ext>"}
{"op":"kick_device","user":"alice","login_id":"a3","by_login_id":"a5"}
`
	dir := t.TempDir()
	replaytest.Into(t, dir, input)
	src := logsource.Source{Data: dir}
	for _, rebuild := range []bool{false, true} {
		cfg := Config{App: "demo", User: "alice", JSON: true, Rebuild: rebuild, TempDir: t.TempDir()}
		var out, warn bytes.Buffer
		if err := Run(context.Background(), src, cfg, &out, &warn); err != nil {
			t.Fatal(err)
		}
		var rows []Row
		for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			var r Row
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				t.Fatalf("%v: %s", err, l)
			}
			rows = append(rows, r)
		}
		// 5 logins, the eviction of a1 and the kick of a3.
		var kinds []string
		for _, r := range rows {
			kinds = append(kinds, r.Event+":"+r.LoginID)
		}
		want := "login:a1 login:a2 login:a3 login:a4 login:a5 ended:a1 ended:a3"
		if strings.Join(kinds, " ") != want {
			t.Fatalf("rows %v, want %s", kinds, want)
		}
		ev := rows[5]
		if ev.Code != 206 || ev.Reason != "REASON_LOGIN_OTHER_DEVICE" || ev.ByLoginID != "a5" || ev.ByDeviceName != "phone5" ||
			ev.ByExtension != "hello <ext>" || ev.PolicyVersion != 2 || ev.Partition != 0 || ev.Offset != 7 ||
			ev.LoginOffset == nil || *ev.LoginOffset != 2 {
			t.Fatalf("eviction row %+v", ev)
		}
		if l5 := rows[4]; l5.Offset != 7 || l5.PolicyVersion != 2 || !l5.Active || l5.Extension != "hello <ext>" {
			t.Fatalf("login row %+v", l5)
		}
		if k := rows[6]; k.Code != 217 || k.Reason != "REASON_KICKED" || k.Offset != 8 {
			t.Fatalf("kick row %+v", k)
		}

		cfg.JSON, cfg.Device = false, "a1"
		out.Reset()
		if err := Run(context.Background(), src, cfg, &out, &warn); err != nil {
			t.Fatal(err)
		}
		text := out.String()
		lines := strings.Split(strings.TrimSpace(text), "\n")
		if len(lines) != 2 {
			t.Fatalf("--device a1: %q", text)
		}
		for _, s := range []string{"0/7 ", "ended", "a1", "206 REASON_LOGIN_OTHER_DEVICE", `by the login of a5 ("phone5", extension "hello <ext>")`, "policy v2"} {
			if !strings.Contains(lines[1], s) {
				t.Fatalf("text %q lacks %q", lines[1], s)
			}
		}
	}
	var out bytes.Buffer
	if err := Run(context.Background(), src, Config{App: "demo"}, &out, &out); err == nil {
		t.Fatal("explain without --user worked")
	}
}

// TestExplainWhileServed: explain on a data directory whose log and
// projections another holder has open (as a running server does) reads
// them from snapshots, prints what it prints on a free directory, and adds
// nothing to it nor stops the holder.
func TestExplainWhileServed(t *testing.T) {
	input := `{"op":"login","user":"alice","login_id":"a1","platform":1,"device_name":"phone1"}
{"op":"policy_set","default_limit":1}
{"op":"login","user":"alice","login_id":"a2","platform":1,"device_name":"phone2","extension":"x"}
`
	dir := t.TempDir()
	replaytest.Into(t, dir, input)
	ctx := context.Background()
	explainOf := func(rebuild bool) string {
		t.Helper()
		var out, warn bytes.Buffer
		cfg := Config{App: "demo", User: "alice", JSON: true, Rebuild: rebuild, TempDir: t.TempDir()}
		if err := Run(ctx, logsource.Source{Data: dir}, cfg, &out, &warn); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	free := explainOf(false)
	if !strings.Contains(free, `"event":"ended","app":"demo","user":"alice","login_id":"a1"`) {
		t.Fatalf("free directory: %s", free)
	}

	// Hold the log and the projections as serve does.
	lg, err := embedlog.Open(embedlog.Options{Dir: filepath.Join(dir, "log")})
	if err != nil {
		t.Fatal(err)
	}
	defer lg.Close()
	st, err := projections.Open(projections.Options{Dir: filepath.Join(dir, "proj"), Partitions: lg.Partitions()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if !logsource.Held(filepath.Join(dir, "log")) || !logsource.Held(filepath.Join(dir, "proj")) {
		t.Fatal("the directories are not seen as held")
	}
	files := func() string {
		var names []string
		for _, sub := range []string{"log", "proj"} {
			ents, err := os.ReadDir(filepath.Join(dir, sub))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				names = append(names, sub+"/"+e.Name())
			}
		}
		return strings.Join(names, " ")
	}
	before := files()
	for _, rebuild := range []bool{false, true} {
		if got := explainOf(rebuild); got != free {
			t.Fatalf("held, rebuild %v:\n%s\nwant\n%s", rebuild, got, free)
		}
	}
	// (The holder itself may remove its obsolete files meanwhile.)
	for _, f := range strings.Fields(files()) {
		if !slices.Contains(strings.Fields(before), f) {
			t.Fatalf("explain added %s to the held directories (before: %s)", f, before)
		}
	}
	// The holder is not disturbed: it still appends.
	if _, err := lg.Append(ctx, []engine.Record{{Partition: 0, Key: []byte("k"), Value: []byte("v")}}); err != nil {
		t.Fatalf("append after explain: %v", err)
	}
}

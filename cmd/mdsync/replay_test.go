package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

const examplesDir = "../../docs/examples"

// outRow is the union of every output row type, for assertions.
type outRow struct {
	Type            string     `json:"type"`
	Line            int        `json:"line"`
	Op              string     `json:"op"`
	User            string     `json:"user"`
	Code            int32      `json:"code"`
	Message         string     `json:"message"`
	Offset          int64      `json:"offset"`
	LoginID         string     `json:"login_id"`
	Reconnect       bool       `json:"reconnect"`
	Ended           []endedRow `json:"ended"`
	DeviceName      string     `json:"device_name"`
	Extension       string     `json:"extension"`
	Platform        int32      `json:"platform"`
	LoginOffset     int64      `json:"login_offset"`
	Digest          string     `json:"digest"`
	At              *int64     `json:"at"`
	Live            string     `json:"live"`
	Rebuild         string     `json:"rebuild"`
	Equal           bool       `json:"equal"`
	Dropped         bool       `json:"dropped"`
	WhatIfCode      int32      `json:"whatif_code"`
	WhatIfEnded     []endedRow `json:"whatif_ended"`
	Lines           int        `json:"lines"`
	Evictions       int        `json:"evictions"`
	WhatIfEvictions int        `json:"whatif_evictions"`
}

type output struct {
	raw  string
	rows []outRow
}

func (o output) ofType(typ string) []outRow {
	var out []outRow
	for _, r := range o.rows {
		if r.Type == typ {
			out = append(out, r)
		}
	}
	return out
}

// line returns the decision or error row of input line n.
func (o output) line(t *testing.T, n int) outRow {
	t.Helper()
	for _, r := range o.rows {
		if (r.Type == "decision" || r.Type == "error") && r.Line == n {
			return r
		}
	}
	t.Fatalf("no row for line %d in:\n%s", n, o.raw)
	return outRow{}
}

// devices lists "user/login_id" of the device rows, in output order.
func (o output) devices() []string {
	var out []string
	for _, r := range o.ofType("device") {
		out = append(out, r.User+"/"+r.LoginID)
	}
	return out
}

func runReplayOn(t *testing.T, cfg replayConfig, input string) (output, error) {
	t.Helper()
	if cfg.TempDir == "" {
		cfg.TempDir = t.TempDir()
	}
	if cfg.At == 0 {
		cfg.At = -1 // tests set At only through atOffset
	}
	var buf bytes.Buffer
	err := replay(context.Background(), cfg, strings.NewReader(input), &buf)
	o := output{raw: buf.String()}
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		var r outRow
		if jerr := json.Unmarshal([]byte(l), &r); jerr != nil {
			t.Fatalf("output line %q is not JSON: %v", l, jerr)
		}
		o.rows = append(o.rows, r)
	}
	return o, err
}

func atOffset(n int64) int64 { return n }

func readExample(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(examplesDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ended summarises a row's ended sessions as "login_id:code:reason".
func ended(es []endedRow) []string {
	out := []string{}
	for _, e := range es {
		out = append(out, e.LoginID+":"+itoa(e.Code)+":"+e.Reason)
	}
	return out
}

func itoa(c int32) string { b, _ := json.Marshal(c); return string(b) }

func wantStrings(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s = %q, want %q", what, got, want)
	}
}

// TestReplayExamples replays every docs/examples file with --verify and
// checks the seed rule it documents (the outcomes docs/operations.md states).
func TestReplayExamples(t *testing.T) {
	checks := map[string]func(t *testing.T, o output){
		"multi_platform_eviction.jsonl": func(t *testing.T, o output) {
			for n := 1; n <= 5; n++ {
				wantStrings(t, "ended by line "+itoa(int32(n)), ended(o.line(t, n).Ended), []string{})
			}
			r := o.line(t, 6)
			wantStrings(t, "ended by line 6", ended(r.Ended), []string{"a1:206:login_other_device"})
			if e := r.Ended[0]; e.ByLoginID != "a5" || e.ByDeviceName != "phone5" || e.ByExtension != "hello" || e.Platform != 1 {
				t.Errorf("206 carries %+v, want by a5 phone5 hello on platform 1", e)
			}
			wantStrings(t, "devices", o.devices(), []string{"alice/b1", "alice/a2", "alice/a3", "alice/a4", "alice/a5"})
		},
		"same_platform_only.jsonl": func(t *testing.T, o output) {
			for n := 1; n <= 6; n++ {
				wantStrings(t, "ended by line "+itoa(int32(n)), ended(o.line(t, n).Ended), []string{})
			}
			r := o.line(t, 7)
			wantStrings(t, "ended by line 7", ended(r.Ended), []string{"and1:206:login_other_device"})
			if r.Ended[0].ByExtension != "from-oneplus" {
				t.Errorf("by_extension = %q", r.Ended[0].ByExtension)
			}
			wantStrings(t, "devices", o.devices(), []string{"alice/ios1", "alice/ios2", "alice/web1", "alice/and2", "alice/and3"})
		},
		"single_platform.jsonl": func(t *testing.T, o output) {
			r := o.line(t, 3)
			wantStrings(t, "ended by line 3", ended(r.Ended), []string{"d1:206:login_other_device"})
			if e := r.Ended[0]; e.Platform != 1 || e.ByDeviceName != "android" || e.ByExtension != "x" {
				t.Errorf("cross-platform kick carries %+v", e)
			}
			wantStrings(t, "ended by line 4", ended(o.line(t, 4).Ended), []string{"d2:206:login_other_device"})
			wantStrings(t, "devices", o.devices(), []string{"alice/d3"})
		},
		"auto_login_kick_oldest.jsonl": func(t *testing.T, o output) {
			r := o.line(t, 4)
			if r.Code != 0 {
				t.Errorf("auto-login code = %d, want accepted", r.Code)
			}
			wantStrings(t, "ended by line 4", ended(r.Ended), []string{"d1:206:login_other_device"})
			if r.Ended[0].ByDeviceName != "auto-phone" {
				t.Errorf("by_device_name = %q", r.Ended[0].ByDeviceName)
			}
			wantStrings(t, "devices", o.devices(), []string{"alice/d2", "alice/d3"})
		},
		"auto_login_keep_current.jsonl": func(t *testing.T, o output) {
			r := o.line(t, 4)
			if r.Code != int32(engine.CodeTooManyDevices) || len(r.Ended) != 0 {
				t.Errorf("auto-login = %d ended %v, want 214 and nobody ended", r.Code, ended(r.Ended))
			}
			wantStrings(t, "ended by manual line 5", ended(o.line(t, 5).Ended), []string{"d1:206:login_other_device"})
			wantStrings(t, "devices", o.devices(), []string{"alice/d2", "alice/d4"})
		},
		"reconnect.jsonl": func(t *testing.T, o output) {
			r := o.line(t, 4)
			if r.Code != 0 || !r.Reconnect || len(r.Ended) != 0 {
				t.Errorf("reconnect = code %d reconnect %v ended %v", r.Code, r.Reconnect, ended(r.Ended))
			}
			if c := o.line(t, 5).Code; c != int32(engine.CodeConflict) {
				t.Errorf("same login ID on another platform = %d, want 1006", c)
			}
			wantStrings(t, "devices", o.devices(), []string{"alice/d1", "alice/d2"})
			if d := o.ofType("device")[0]; d.DeviceName != "renamed" || d.Extension != "new" || d.LoginOffset != 1 {
				t.Errorf("reconnected device = %+v, want renamed, new, keeping login offset 1", d)
			}
		},
		"kick_device.jsonl": func(t *testing.T, o output) {
			wantStrings(t, "ended by line 4", ended(o.line(t, 4).Ended), []string{"d2:217:kicked"})
			if c := o.line(t, 5).Code; c != int32(engine.CodeNotFound) {
				t.Errorf("kick of a device not logged in = %d, want 1005", c)
			}
			wantStrings(t, "devices", o.devices(), []string{"alice/d1", "alice/d3"})
		},
		"kick_all_devices.jsonl": func(t *testing.T, o output) {
			wantStrings(t, "ended by line 4", ended(o.line(t, 4).Ended), []string{"d1:217:kicked", "d2:217:kicked"})
			wantStrings(t, "devices", o.devices(), []string{"bob/b1"})
		},
		"password_change.jsonl": func(t *testing.T, o output) {
			wantStrings(t, "ended by line 3", ended(o.line(t, 3).Ended), []string{"d1:216:password_changed", "d2:216:password_changed"})
			wantStrings(t, "devices", o.devices(), []string{"alice/d3"})
		},
		"user_remove.jsonl": func(t *testing.T, o output) {
			wantStrings(t, "ended by line 4", ended(o.line(t, 4).Ended), []string{"d1:207:user_removed", "d2:207:user_removed"})
			wantStrings(t, "devices", o.devices(), []string{"bob/b1"})
		},
		"policy_lower_limit.jsonl": func(t *testing.T, o output) {
			wantStrings(t, "ended by line 6", ended(o.line(t, 6).Ended), []string{"a1:217:policy_limit", "a2:217:policy_limit"})
			wantStrings(t, "devices", o.devices(), []string{"alice/a3", "alice/a4", "bob/b1"})
		},
		"self_ids.jsonl": func(t *testing.T, o output) {
			if c := o.line(t, 4).Code; c != 0 {
				t.Errorf("message to an own device = %d", c)
			}
			wantStrings(t, "ended by logout", ended(o.line(t, 5).Ended), []string{"web:0:logout"})
			wantStrings(t, "devices", o.devices(), []string{"alice/phone", "alice/desktop"})
		},
		"sync_operations.jsonl": func(t *testing.T, o output) {
			for _, r := range o.ofType("decision") {
				if r.Code != 0 {
					t.Errorf("line %d %s = %d %s", r.Line, r.Op, r.Code, r.Message)
				}
			}
			wantStrings(t, "devices", o.devices(), []string{"alice/a-phone", "alice/a-web"})
		},
	}
	files, err := filepath.Glob(filepath.Join(examplesDir, "*.jsonl"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			check, ok := checks[name]
			if !ok {
				t.Fatalf("%s has no check in this test", name)
			}
			o, err := runReplayOn(t, replayConfig{Verify: true}, readExample(t, name))
			if err != nil {
				t.Fatalf("replay: %v\n%s", err, o.raw)
			}
			if errs := o.ofType("error"); len(errs) > 0 {
				t.Fatalf("example has invalid lines: %+v", errs)
			}
			if v := o.ofType("verify"); len(v) != 1 || !v[0].Equal || v[0].Live == "" {
				t.Errorf("verify = %+v, want one equal", v)
			}
			check(t, o)
		})
	}
	for name := range checks {
		if !slices.Contains(files, filepath.Join(examplesDir, name)) {
			t.Errorf("check for missing example %s", name)
		}
	}
}

// TestExamplesCoverEveryKind: every kind can be written as a line and is
// replayed by at least one example.
func TestExamplesCoverEveryKind(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(examplesDir, "*.jsonl"))
	seen := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines, err := readOps(bytes.NewReader(b), "demo")
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range lines {
			if l.err != nil {
				t.Errorf("%s line %d: %v", f, l.n, l.err)
				continue
			}
			seen[l.op] = true
		}
	}
	for _, k := range engine.Kinds() {
		if k.Category == engine.CatDerived {
			if l := parseOp(1, []byte(`{"op":"`+k.Name+`","user":"u"}`), "demo"); engine.CodeOf(l.err) != engine.CodeForbidden {
				t.Errorf("derived op %s: err = %v, want 1008", k.Name, l.err)
			}
			continue
		}
		if shapeOf(k.Kind) == "" {
			t.Errorf("kind %s has no JSON shape", k.Name)
		}
		if !seen[k.Name] {
			t.Errorf("no example replays %s", k.Name)
		}
	}
}

// TestOperationsDocCoversSchema keeps docs/operations.md in step with the
// parser: every op, every field and every example is documented.
func TestOperationsDocCoversSchema(t *testing.T) {
	b, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, k := range engine.Kinds() {
		if !strings.Contains(doc, "`"+k.Name+"`") {
			t.Errorf("docs/operations.md does not mention op `%s`", k.Name)
		}
	}
	fields := slices.Clone(commonFields)
	for _, fs := range shapeFields {
		fields = append(fields, fs...)
	}
	for _, f := range fields {
		if !strings.Contains(doc, "`"+f+"`") {
			t.Errorf("docs/operations.md does not mention field `%s`", f)
		}
	}
	files, _ := filepath.Glob(filepath.Join(examplesDir, "*.jsonl"))
	for _, f := range files {
		if !strings.Contains(doc, filepath.Base(f)) {
			t.Errorf("docs/operations.md does not describe %s", filepath.Base(f))
		}
	}
}

func TestReplayAt(t *testing.T) {
	in := readExample(t, "policy_lower_limit.jsonl")
	o, err := runReplayOn(t, replayConfig{At: atOffset(2)}, in)
	if err != nil {
		t.Fatal(err)
	}
	wantStrings(t, "devices at 2", o.devices(), []string{"alice/a1", "alice/a2", "alice/a3"})
	d := o.ofType("digest")
	if len(d) != 1 || d[0].At == nil || *d[0].At != 2 {
		t.Errorf("digest row = %+v, want at=2", d)
	}
	// Decisions are still those of the whole replay.
	if n := len(o.ofType("decision")); n != 6 {
		t.Errorf("%d decisions, want 6", n)
	}

	o, err = runReplayOn(t, replayConfig{At: atOffset(4)}, in)
	if err != nil {
		t.Fatal(err)
	}
	wantStrings(t, "devices at 4", o.devices(), []string{"alice/a1", "alice/a2", "alice/a3", "alice/a4", "bob/b1"})

	// At or past the last offset: the final table and the final digest.
	final, err := runReplayOn(t, replayConfig{}, in)
	if err != nil {
		t.Fatal(err)
	}
	o, err = runReplayOn(t, replayConfig{At: atOffset(99)}, in)
	if err != nil {
		t.Fatal(err)
	}
	wantStrings(t, "devices at 99", o.devices(), final.devices())
	if o.ofType("digest")[0].Digest != final.ofType("digest")[0].Digest {
		t.Error("digest at the end differs from the final digest")
	}
}

func TestReplayWhatIf(t *testing.T) {
	pol, err := parsePolicyFile([]byte(`{"default_limit":1}`), "demo")
	if err != nil {
		t.Fatal(err)
	}
	o, err := runReplayOn(t, replayConfig{Policy: pol}, readExample(t, "same_platform_only.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	rows := o.ofType("whatif")
	var lines []int
	for _, r := range rows {
		lines = append(lines, r.Line)
	}
	if !slices.Equal(lines, []int{1, 3, 6, 7}) {
		t.Fatalf("what-if lines = %v, want [1 3 6 7]:\n%s", lines, o.raw)
	}
	if !rows[0].Dropped {
		t.Error("the input's policy_set line is not reported as dropped")
	}
	wantStrings(t, "line 3 what-if", ended(rows[1].WhatIfEnded), []string{"ios1:206:login_other_device"})
	wantStrings(t, "line 7 original", ended(rows[3].Ended), []string{"and1:206:login_other_device"})
	wantStrings(t, "line 7 what-if", ended(rows[3].WhatIfEnded), []string{"and2:206:login_other_device"})
	s := o.ofType("whatif_summary")
	if len(s) != 1 || s[0].Evictions != 1 || s[0].WhatIfEvictions != 3 || s[0].Lines != 4 {
		t.Errorf("summary = %+v, want 1 -> 3 evictions on 4 lines", s)
	}
	// The main output is still the original run.
	wantStrings(t, "devices", o.devices(), []string{"alice/ios1", "alice/ios2", "alice/web1", "alice/and2", "alice/and3"})

	// keep_current turns the default auto-login eviction into a 214.
	pol, err = parsePolicyFile([]byte(`{"op":"policy_set","app":"demo","default_limit":2,"auto_login":"keep_current"}`), "demo")
	if err != nil {
		t.Fatal(err)
	}
	o, err = runReplayOn(t, replayConfig{Policy: pol}, readExample(t, "auto_login_kick_oldest.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var r4 *outRow
	for _, r := range o.ofType("whatif") {
		if r.Line == 4 {
			r4 = &r
		}
	}
	if r4 == nil || r4.Code != 0 || r4.WhatIfCode != int32(engine.CodeTooManyDevices) || len(r4.WhatIfEnded) != 0 {
		t.Errorf("auto-login what-if = %+v, want 0 -> 214 with nobody ended", r4)
	}

	for _, bad := range []string{`{"mode":"both"}`, `{"op":"login"}`, `{"default_limit":0}`, `[]`, `{"limits":{"x":1}}`} {
		if _, err := parsePolicyFile([]byte(bad), "demo"); err == nil {
			t.Errorf("policy %s accepted", bad)
		}
	}
}

var badInput = `{"op":"login","user":"alice","login_id":"a1","platform":1}

{"op":"login","user":"alice","login_id":"a2","platform":0}
{"op":"nope","user":"alice"}
{"op":"login","user":"alice","login_id":"a3","platform":1,"group_id":"g"}
{"op":"login","user":"alice","login_id":"a4","platform":1,"colour":"red"}
not json
{"op":"logout","user":"alice"}
{"op":"login","user":"alice","login_id":"a5","platform":1,"device_name":"` + strings.Repeat("n", engine.MaxDeviceNameBytes+1) + `"}
{"op":"login","user":"alice","login_id":"a6","platform":1}
{"op":"kick_device","user":"alice","login_id":"a1"} {"op":"logout"}
{"op":"kick_device","user":"alice","login_id":"a6","client_op_id":"line-1"}
`

func TestReplayBadLines(t *testing.T) {
	o, err := runReplayOn(t, replayConfig{KeepGoing: true, Verify: true}, badInput)
	if !errors.Is(err, errInvalidLines) {
		t.Fatalf("err = %v, want errInvalidLines", err)
	}
	want := map[int]engine.Code{
		3:  engine.CodeInvalidArgument, // platform 0
		4:  engine.CodeUnknownKind,
		5:  engine.CodeInvalidArgument, // field of another op
		6:  engine.CodeInvalidArgument, // unknown field
		7:  engine.CodeInvalidArgument, // not JSON
		8:  engine.CodeMissingField,    // logout without its device
		9:  engine.CodeTooLarge,        // device name over its limit
		11: engine.CodeInvalidArgument, // trailing data
		12: engine.CodeConflict,        // client_op_id of line 1 re-used for another op
	}
	errs := o.ofType("error")
	if len(errs) != len(want) {
		t.Errorf("%d error rows, want %d:\n%s", len(errs), len(want), o.raw)
	}
	for n, code := range want {
		r := o.line(t, n)
		if r.Type != "error" || r.Code != int32(code) || r.Message == "" {
			t.Errorf("line %d = %s %d %q, want error %d", n, r.Type, r.Code, r.Message, code)
		}
	}
	if r := o.line(t, 6); !strings.Contains(r.Message, `"colour"`) {
		t.Errorf("unknown field message %q does not name the field", r.Message)
	}
	// Valid lines still applied, at consecutive offsets: refused lines
	// appended nothing.
	if r := o.line(t, 10); r.Type != "decision" || r.Offset != 1 {
		t.Errorf("line 10 = %+v, want a decision at offset 1", r)
	}
	wantStrings(t, "devices", o.devices(), []string{"alice/a1", "alice/a6"})
	if v := o.ofType("verify"); len(v) != 1 || !v[0].Equal {
		t.Errorf("verify = %+v", v)
	}

	// --keep-going=false stops at the first invalid line.
	o, err = runReplayOn(t, replayConfig{KeepGoing: false}, badInput)
	if !errors.Is(err, errInvalidLines) {
		t.Fatalf("err = %v, want errInvalidLines", err)
	}
	if n := len(o.ofType("error")); n != 1 || o.line(t, 3).Type != "error" {
		t.Errorf("stopping run printed %d errors:\n%s", n, o.raw)
	}
	if len(o.ofType("device")) != 0 || len(o.ofType("decision")) != 1 {
		t.Errorf("stopping run went on:\n%s", o.raw)
	}
}

// TestReplayDeterministic: the output, digests included, depends only on
// the input (event times come from the line numbers, not the clock).
func TestReplayDeterministic(t *testing.T) {
	in := readExample(t, "auto_login_keep_current.jsonl") + `{"op":"login","user":"bob","login_id":"b1","platform":7,"time_ms":123456}` + "\n"
	a, err := runReplayOn(t, replayConfig{}, in)
	if err != nil {
		t.Fatal(err)
	}
	b, err := runReplayOn(t, replayConfig{}, in)
	if err != nil {
		t.Fatal(err)
	}
	if a.raw != b.raw {
		t.Errorf("two replays differ:\n%s\n---\n%s", a.raw, b.raw)
	}
	if !strings.Contains(a.raw, `"login_time_ms":123456`) || !strings.Contains(a.raw, `"login_time_ms":3000`) {
		t.Errorf("event times are not from time_ms / line number:\n%s", a.raw)
	}
}

// TestReplayPartitions: with several partitions the decisions and device
// table are the same as with one (offsets are per partition then).
func TestReplayPartitions(t *testing.T) {
	in := readExample(t, "policy_lower_limit.jsonl") + readExample(t, "multi_platform_eviction.jsonl")
	in = strings.ReplaceAll(in, `"user":"alice"`, `"user":"carol"`) + readExample(t, "kick_device.jsonl")
	one, err := runReplayOn(t, replayConfig{Partitions: 1}, in)
	if err != nil {
		t.Fatal(err)
	}
	four, err := runReplayOn(t, replayConfig{Partitions: 4, Verify: true}, in)
	if err != nil {
		t.Fatal(err)
	}
	wantStrings(t, "devices with 4 partitions", four.devices(), one.devices())
	for i, r := range one.ofType("decision") {
		f := four.ofType("decision")[i]
		if !slices.Equal(ended(r.Ended), ended(f.Ended)) || r.Code != f.Code {
			t.Errorf("line %d: 1 partition %v, 4 partitions %v", r.Line, ended(r.Ended), ended(f.Ended))
		}
	}
	if v := four.ofType("verify"); len(v) != 1 || !v[0].Equal {
		t.Errorf("verify with 4 partitions = %+v", v)
	}
}

func TestReplayDataDirMustBeFresh(t *testing.T) {
	dir := t.TempDir()
	in := readExample(t, "kick_device.jsonl")
	if _, err := runReplayOn(t, replayConfig{Dir: dir}, in); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "log")); err != nil {
		t.Errorf("--data did not keep the log: %v", err)
	}
	if _, err := runReplayOn(t, replayConfig{Dir: dir}, in); err == nil || !strings.Contains(err.Error(), "fresh") {
		t.Errorf("replay into a used directory: err = %v", err)
	}
}

// TestParseOpMapping checks the JSON-to-event mapping of the fields whose
// meaning depends on the op.
func TestParseOpMapping(t *testing.T) {
	l := parseOp(7, []byte(`{"op":"kick_device","app":"a","user":"u","login_id":"target","by_login_id":"me"}`), "demo")
	if l.err != nil || l.ev.Actor.LoginId != "me" || l.ev.GetKickDevice().GetLoginId() != "target" || l.ev.ClientOpId != "line-7" || l.timeMs != 7000 {
		t.Errorf("kick_device = %v %v", l.ev, l.err)
	}
	l = parseOp(1, []byte(`{"op":"policy_set","limits":{"10":3,"2":1},"auto_login":"keep_current"}`), "demo")
	ps := l.ev.GetPolicySet()
	if l.err != nil || l.ev.App != "demo" || l.ev.Actor.User != "admin" || !l.ev.Actor.Admin ||
		len(ps.Limits) != 2 || ps.Limits[0].Platform != 2 || ps.DefaultLimit != engine.DefaultPlatformLimit ||
		ps.AutoLogin != pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KEEP_CURRENT {
		t.Errorf("policy_set = %v %v", l.ev, l.err)
	}
	l = parseOp(1, []byte(`{"op":"group_member_attributes_changed","user":"u","group_id":"g","attributes":{"z":"1","a":"2"}}`), "demo")
	if l.err != nil || l.ev.GetGroup().Attributes[0].Key != "a" {
		t.Errorf("attributes not sorted: %v %v", l.ev, l.err)
	}
	l = parseOp(1, []byte(`{"op":"message_send","user":"u","chat_type":4,"to":"t","group_id":"g","client_msg_id":"m"}`), "demo")
	if l.err != nil || l.ev.GetMessage().ChatType != pb.ChatType_CHAT_TYPE_THREAD {
		t.Errorf("numeric chat_type: %v %v", l.ev, l.err)
	}
	for _, bad := range []string{
		`{"op":"message_send","user":"u","chat_type":"dm"}`,
		`{"op":"login","user":"u","auto_login":"yes"}`,
		`{"op":"policy_set","auto_login":true}`,
		`{"op":"login","user":"u","time_ms":-1}`,
		`{"user":"u"}`,
	} {
		if l := parseOp(1, []byte(bad), "demo"); l.err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

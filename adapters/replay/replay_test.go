package replay_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mdsync/mdsync/adapters/opjson"
	"github.com/mdsync/mdsync/adapters/replay"
	"github.com/mdsync/mdsync/adapters/replay/replaytest"
	"github.com/mdsync/mdsync/engine"
)

func atOffset(n int64) int64 { return n }

// ended summarises a row's ended sessions as "login_id:code:reason".
func ended(es []replay.EndedRow) []string {
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
	checks := map[string]func(t *testing.T, o replaytest.Output){
		"multi_platform_eviction.jsonl": func(t *testing.T, o replaytest.Output) {
			for n := 1; n <= 5; n++ {
				wantStrings(t, "ended by line "+itoa(int32(n)), ended(o.Line(t, n).Ended), []string{})
			}
			r := o.Line(t, 6)
			wantStrings(t, "ended by line 6", ended(r.Ended), []string{"a1:206:REASON_LOGIN_OTHER_DEVICE"})
			if e := r.Ended[0]; e.ByLoginID != "a5" || e.ByDeviceName != "phone5" || e.ByExtension != "hello" || e.Platform != 1 {
				t.Errorf("206 carries %+v, want by a5 phone5 hello on platform 1", e)
			}
			wantStrings(t, "devices", o.Devices(), []string{"alice/b1", "alice/a2", "alice/a3", "alice/a4", "alice/a5"})
		},
		"same_platform_only.jsonl": func(t *testing.T, o replaytest.Output) {
			for n := 1; n <= 6; n++ {
				wantStrings(t, "ended by line "+itoa(int32(n)), ended(o.Line(t, n).Ended), []string{})
			}
			r := o.Line(t, 7)
			wantStrings(t, "ended by line 7", ended(r.Ended), []string{"and1:206:REASON_LOGIN_OTHER_DEVICE"})
			if r.Ended[0].ByExtension != "from-oneplus" {
				t.Errorf("by_extension = %q", r.Ended[0].ByExtension)
			}
			wantStrings(t, "devices", o.Devices(), []string{"alice/ios1", "alice/ios2", "alice/web1", "alice/and2", "alice/and3"})
		},
		"single_platform.jsonl": func(t *testing.T, o replaytest.Output) {
			r := o.Line(t, 3)
			wantStrings(t, "ended by line 3", ended(r.Ended), []string{"d1:206:REASON_LOGIN_OTHER_DEVICE"})
			if e := r.Ended[0]; e.Platform != 1 || e.ByDeviceName != "android" || e.ByExtension != "x" {
				t.Errorf("cross-platform kick carries %+v", e)
			}
			wantStrings(t, "ended by line 4", ended(o.Line(t, 4).Ended), []string{"d2:206:REASON_LOGIN_OTHER_DEVICE"})
			wantStrings(t, "devices", o.Devices(), []string{"alice/d3"})
		},
		"auto_login_kick_oldest.jsonl": func(t *testing.T, o replaytest.Output) {
			r := o.Line(t, 4)
			if r.Code != 0 {
				t.Errorf("auto-login code = %d, want accepted", r.Code)
			}
			wantStrings(t, "ended by line 4", ended(r.Ended), []string{"d1:206:REASON_LOGIN_OTHER_DEVICE"})
			if r.Ended[0].ByDeviceName != "auto-phone" {
				t.Errorf("by_device_name = %q", r.Ended[0].ByDeviceName)
			}
			wantStrings(t, "devices", o.Devices(), []string{"alice/d2", "alice/d3"})
		},
		"auto_login_keep_current.jsonl": func(t *testing.T, o replaytest.Output) {
			r := o.Line(t, 4)
			if r.Code != int32(engine.CodeTooManyDevices) || len(r.Ended) != 0 {
				t.Errorf("auto-login = %d ended %v, want 214 and nobody ended", r.Code, ended(r.Ended))
			}
			wantStrings(t, "ended by manual line 5", ended(o.Line(t, 5).Ended), []string{"d1:206:REASON_LOGIN_OTHER_DEVICE"})
			wantStrings(t, "devices", o.Devices(), []string{"alice/d2", "alice/d4"})
		},
		"reconnect.jsonl": func(t *testing.T, o replaytest.Output) {
			r := o.Line(t, 4)
			if r.Code != 0 || !r.Reconnect || len(r.Ended) != 0 {
				t.Errorf("reconnect = code %d reconnect %v ended %v", r.Code, r.Reconnect, ended(r.Ended))
			}
			if c := o.Line(t, 5).Code; c != int32(engine.CodeConflict) {
				t.Errorf("same login ID on another platform = %d, want 1006", c)
			}
			wantStrings(t, "devices", o.Devices(), []string{"alice/d1", "alice/d2"})
			if d := o.OfType("device")[0]; d.DeviceName != "renamed" || d.Extension != "new" || d.LoginOffset != 1 {
				t.Errorf("reconnected device = %+v, want renamed, new, keeping login offset 1", d)
			}
		},
		"kick_device.jsonl": func(t *testing.T, o replaytest.Output) {
			wantStrings(t, "ended by line 4", ended(o.Line(t, 4).Ended), []string{"d2:217:REASON_KICKED"})
			if c := o.Line(t, 5).Code; c != int32(engine.CodeNotFound) {
				t.Errorf("kick of a device not logged in = %d, want 1005", c)
			}
			wantStrings(t, "devices", o.Devices(), []string{"alice/d1", "alice/d3"})
		},
		"kick_all_devices.jsonl": func(t *testing.T, o replaytest.Output) {
			wantStrings(t, "ended by line 4", ended(o.Line(t, 4).Ended), []string{"d1:217:REASON_KICKED", "d2:217:REASON_KICKED"})
			wantStrings(t, "devices", o.Devices(), []string{"bob/b1"})
		},
		"password_change.jsonl": func(t *testing.T, o replaytest.Output) {
			wantStrings(t, "ended by line 3", ended(o.Line(t, 3).Ended), []string{"d1:216:REASON_PASSWORD_CHANGED", "d2:216:REASON_PASSWORD_CHANGED"})
			wantStrings(t, "devices", o.Devices(), []string{"alice/d3"})
		},
		"user_remove.jsonl": func(t *testing.T, o replaytest.Output) {
			wantStrings(t, "ended by line 4", ended(o.Line(t, 4).Ended), []string{"d1:207:REASON_USER_REMOVED", "d2:207:REASON_USER_REMOVED"})
			wantStrings(t, "devices", o.Devices(), []string{"bob/b1"})
		},
		"policy_lower_limit.jsonl": func(t *testing.T, o replaytest.Output) {
			wantStrings(t, "ended by line 6", ended(o.Line(t, 6).Ended), []string{"a1:217:REASON_POLICY_LIMIT", "a2:217:REASON_POLICY_LIMIT"})
			wantStrings(t, "devices", o.Devices(), []string{"alice/a3", "alice/a4", "bob/b1"})
		},
		"self_ids.jsonl": func(t *testing.T, o replaytest.Output) {
			if c := o.Line(t, 4).Code; c != 0 {
				t.Errorf("message to an own device = %d", c)
			}
			wantStrings(t, "ended by logout", ended(o.Line(t, 5).Ended), []string{"web:0:REASON_LOGOUT"})
			wantStrings(t, "devices", o.Devices(), []string{"alice/phone", "alice/desktop"})
		},
		"presence.jsonl": func(t *testing.T, o replaytest.Output) {
			for _, n := range []int{2, 3} {
				if c := o.Line(t, n).Code; c != 0 {
					t.Errorf("presence line %d = %d", n, c)
				}
			}
			if c := o.Line(t, 4).Code; c != int32(engine.CodeNotFound) {
				t.Errorf("presence of a login ID without a session = %d, want 1005", c)
			}
			wantStrings(t, "devices", o.Devices(), []string{"alice/d1"})
		},
		"sync_operations.jsonl": func(t *testing.T, o replaytest.Output) {
			for _, r := range o.OfType("decision") {
				if r.Code != 0 {
					t.Errorf("line %d %s = %d %s", r.Line, r.Op, r.Code, r.Message)
				}
			}
			wantStrings(t, "devices", o.Devices(), []string{"alice/a-phone", "alice/a-web"})
		},
	}
	files, err := filepath.Glob(filepath.Join(replaytest.ExamplesDir, "*.jsonl"))
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
			o, err := replaytest.Run(t, replay.Config{Verify: true}, replaytest.ReadExample(t, name))
			if err != nil {
				t.Fatalf("replay: %v\n%s", err, o.Raw)
			}
			if errs := o.OfType("error"); len(errs) > 0 {
				t.Fatalf("example has invalid lines: %+v", errs)
			}
			if v := o.OfType("verify"); len(v) != 1 || !v[0].Equal || v[0].Live == "" {
				t.Errorf("verify = %+v, want one equal", v)
			}
			check(t, o)
		})
	}
	for name := range checks {
		if !slices.Contains(files, filepath.Join(replaytest.ExamplesDir, name)) {
			t.Errorf("check for missing example %s", name)
		}
	}
}

// TestExamplesCoverEveryKind: every kind can be written as a line and is
// replayed by at least one example.
func TestExamplesCoverEveryKind(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(replaytest.ExamplesDir, "*.jsonl"))
	seen := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines, err := opjson.ReadLines(bytes.NewReader(b), "demo")
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range lines {
			if l.Err != nil {
				t.Errorf("%s line %d: %v", f, l.N, l.Err)
				continue
			}
			seen[l.Op] = true
		}
	}
	for _, k := range engine.Kinds() {
		if k.Category == engine.CatDerived {
			if l := opjson.Decode(1, []byte(`{"op":"`+k.Name+`","user":"u"}`), "demo"); engine.CodeOf(l.Err) != engine.CodeForbidden {
				t.Errorf("derived op %s: err = %v, want 1008", k.Name, l.Err)
			}
			continue
		}
		if _, ok := opjson.PayloadFields[k.Payload()]; !ok {
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
	fields := slices.Clone(opjson.CommonFields)
	for _, fs := range opjson.PayloadFields {
		fields = append(fields, fs...)
	}
	for _, f := range fields {
		if !strings.Contains(doc, "`"+f+"`") {
			t.Errorf("docs/operations.md does not mention field `%s`", f)
		}
	}
	files, _ := filepath.Glob(filepath.Join(replaytest.ExamplesDir, "*.jsonl"))
	for _, f := range files {
		if !strings.Contains(doc, filepath.Base(f)) {
			t.Errorf("docs/operations.md does not describe %s", filepath.Base(f))
		}
	}
}

func TestReplayAt(t *testing.T) {
	in := replaytest.ReadExample(t, "policy_lower_limit.jsonl")
	o, err := replaytest.Run(t, replay.Config{At: atOffset(2)}, in)
	if err != nil {
		t.Fatal(err)
	}
	wantStrings(t, "devices at 2", o.Devices(), []string{"alice/a1", "alice/a2", "alice/a3"})
	d := o.OfType("digest")
	if len(d) != 1 || d[0].At == nil || *d[0].At != 2 {
		t.Errorf("digest row = %+v, want at=2", d)
	}
	// Decisions are still those of the whole replay.
	if n := len(o.OfType("decision")); n != 6 {
		t.Errorf("%d decisions, want 6", n)
	}

	o, err = replaytest.Run(t, replay.Config{At: atOffset(4)}, in)
	if err != nil {
		t.Fatal(err)
	}
	wantStrings(t, "devices at 4", o.Devices(), []string{"alice/a1", "alice/a2", "alice/a3", "alice/a4", "bob/b1"})

	// At or past the last offset: the final table and the final digest.
	final, err := replaytest.Run(t, replay.Config{}, in)
	if err != nil {
		t.Fatal(err)
	}
	o, err = replaytest.Run(t, replay.Config{At: atOffset(99)}, in)
	if err != nil {
		t.Fatal(err)
	}
	wantStrings(t, "devices at 99", o.Devices(), final.Devices())
	if o.OfType("digest")[0].Digest != final.OfType("digest")[0].Digest {
		t.Error("digest at the end differs from the final digest")
	}
}

func TestReplayWhatIf(t *testing.T) {
	pol, err := replay.ParsePolicy([]byte(`{"default_limit":1}`), "demo")
	if err != nil {
		t.Fatal(err)
	}
	o, err := replaytest.Run(t, replay.Config{Policy: pol}, replaytest.ReadExample(t, "same_platform_only.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	rows := o.OfType("whatif")
	var lines []int
	for _, r := range rows {
		lines = append(lines, r.Line)
	}
	if !slices.Equal(lines, []int{1, 3, 6, 7}) {
		t.Fatalf("what-if lines = %v, want [1 3 6 7]:\n%s", lines, o.Raw)
	}
	if !rows[0].Dropped {
		t.Error("the input's policy_set line is not reported as dropped")
	}
	wantStrings(t, "line 3 what-if", ended(rows[1].WhatIfEnded), []string{"ios1:206:REASON_LOGIN_OTHER_DEVICE"})
	wantStrings(t, "line 7 original", ended(rows[3].Ended), []string{"and1:206:REASON_LOGIN_OTHER_DEVICE"})
	wantStrings(t, "line 7 what-if", ended(rows[3].WhatIfEnded), []string{"and2:206:REASON_LOGIN_OTHER_DEVICE"})
	s := o.OfType("whatif_summary")
	if len(s) != 1 || s[0].Evictions != 1 || s[0].WhatIfEvictions != 3 || s[0].Lines != 4 {
		t.Errorf("summary = %+v, want 1 -> 3 evictions on 4 lines", s)
	}
	// The main output is still the original run.
	wantStrings(t, "devices", o.Devices(), []string{"alice/ios1", "alice/ios2", "alice/web1", "alice/and2", "alice/and3"})

	// keep_current turns the default auto-login eviction into a 214.
	pol, err = replay.ParsePolicy([]byte(`{"op":"policy_set","app":"demo","default_limit":2,"auto_login":"keep_current"}`), "demo")
	if err != nil {
		t.Fatal(err)
	}
	o, err = replaytest.Run(t, replay.Config{Policy: pol}, replaytest.ReadExample(t, "auto_login_kick_oldest.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var r4 *replaytest.Row
	for _, r := range o.OfType("whatif") {
		if r.Line == 4 {
			r4 = &r
		}
	}
	if r4 == nil || r4.Code != 0 || r4.WhatIfCode != int32(engine.CodeTooManyDevices) || len(r4.WhatIfEnded) != 0 {
		t.Errorf("auto-login what-if = %+v, want 0 -> 214 with nobody ended", r4)
	}

	for _, bad := range []string{`{"mode":"both"}`, `{"op":"login"}`, `{"default_limit":0}`, `[]`, `{"limits":{"x":1}}`} {
		if _, err := replay.ParsePolicy([]byte(bad), "demo"); err == nil {
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
	o, err := replaytest.Run(t, replay.Config{KeepGoing: true, Verify: true}, badInput)
	if !errors.Is(err, replay.ErrInvalidLines) {
		t.Fatalf("err = %v, want replay.ErrInvalidLines", err)
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
	errs := o.OfType("error")
	if len(errs) != len(want) {
		t.Errorf("%d error rows, want %d:\n%s", len(errs), len(want), o.Raw)
	}
	for n, code := range want {
		r := o.Line(t, n)
		if r.Type != "error" || r.Code != int32(code) || r.Message == "" {
			t.Errorf("line %d = %s %d %q, want error %d", n, r.Type, r.Code, r.Message, code)
		}
	}
	if r := o.Line(t, 6); !strings.Contains(r.Message, `"colour"`) {
		t.Errorf("unknown field message %q does not name the field", r.Message)
	}
	// Valid lines still applied, at consecutive offsets: refused lines
	// appended nothing.
	if r := o.Line(t, 10); r.Type != "decision" || r.Offset != 1 {
		t.Errorf("line 10 = %+v, want a decision at offset 1", r)
	}
	wantStrings(t, "devices", o.Devices(), []string{"alice/a1", "alice/a6"})
	if v := o.OfType("verify"); len(v) != 1 || !v[0].Equal {
		t.Errorf("verify = %+v", v)
	}

	// --keep-going=false stops at the first invalid line.
	o, err = replaytest.Run(t, replay.Config{KeepGoing: false}, badInput)
	if !errors.Is(err, replay.ErrInvalidLines) {
		t.Fatalf("err = %v, want replay.ErrInvalidLines", err)
	}
	if n := len(o.OfType("error")); n != 1 || o.Line(t, 3).Type != "error" {
		t.Errorf("stopping run printed %d errors:\n%s", n, o.Raw)
	}
	if len(o.OfType("device")) != 0 || len(o.OfType("decision")) != 1 {
		t.Errorf("stopping run went on:\n%s", o.Raw)
	}
}

// TestReplayDeterministic: the output, digests included, depends only on
// the input (event times come from the line numbers, not the clock).
func TestReplayDeterministic(t *testing.T) {
	in := replaytest.ReadExample(t, "auto_login_keep_current.jsonl") + `{"op":"login","user":"bob","login_id":"b1","platform":7,"time_ms":123456}` + "\n"
	a, err := replaytest.Run(t, replay.Config{}, in)
	if err != nil {
		t.Fatal(err)
	}
	b, err := replaytest.Run(t, replay.Config{}, in)
	if err != nil {
		t.Fatal(err)
	}
	if a.Raw != b.Raw {
		t.Errorf("two replays differ:\n%s\n---\n%s", a.Raw, b.Raw)
	}
	if !strings.Contains(a.Raw, `"login_time_ms":123456`) || !strings.Contains(a.Raw, `"login_time_ms":3000`) {
		t.Errorf("event times are not from time_ms / line number:\n%s", a.Raw)
	}
}

// TestReplayPartitions: with several partitions the decisions and device
// table are the same as with one (offsets are per partition then).
func TestReplayPartitions(t *testing.T) {
	in := replaytest.ReadExample(t, "policy_lower_limit.jsonl") + replaytest.ReadExample(t, "multi_platform_eviction.jsonl")
	in = strings.ReplaceAll(in, `"user":"alice"`, `"user":"carol"`) + replaytest.ReadExample(t, "kick_device.jsonl")
	one, err := replaytest.Run(t, replay.Config{Partitions: 1}, in)
	if err != nil {
		t.Fatal(err)
	}
	four, err := replaytest.Run(t, replay.Config{Partitions: 4, Verify: true}, in)
	if err != nil {
		t.Fatal(err)
	}
	wantStrings(t, "devices with 4 partitions", four.Devices(), one.Devices())
	for i, r := range one.OfType("decision") {
		f := four.OfType("decision")[i]
		if !slices.Equal(ended(r.Ended), ended(f.Ended)) || r.Code != f.Code {
			t.Errorf("line %d: 1 partition %v, 4 partitions %v", r.Line, ended(r.Ended), ended(f.Ended))
		}
	}
	if v := four.OfType("verify"); len(v) != 1 || !v[0].Equal {
		t.Errorf("verify with 4 partitions = %+v", v)
	}
}

func TestReplayDataDirMustBeFresh(t *testing.T) {
	dir := t.TempDir()
	in := replaytest.ReadExample(t, "kick_device.jsonl")
	if _, err := replaytest.Run(t, replay.Config{Dir: dir}, in); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "log")); err != nil {
		t.Errorf("--data did not keep the log: %v", err)
	}
	if _, err := replaytest.Run(t, replay.Config{Dir: dir}, in); err == nil || !strings.Contains(err.Error(), "fresh") {
		t.Errorf("replay into a used directory: err = %v", err)
	}
}

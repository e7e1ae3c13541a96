// Package replaytest holds test helpers for the packages that build on
// replay (replay, export, explain): running a replay and reading its output
// rows, and generating a random history.
package replaytest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mdsync/mdsync/adapters/embedlog"
	"github.com/mdsync/mdsync/adapters/replay"
	"github.com/mdsync/mdsync/engine"
)

// ExamplesDir is docs/examples seen from a package under adapters/.
const ExamplesDir = "../../docs/examples"

// ReadExample returns the docs/examples file name.
func ReadExample(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ExamplesDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Row is the union of every Output row type, for assertions.
type Row struct {
	Type            string            `json:"type"`
	Line            int               `json:"line"`
	Op              string            `json:"op"`
	User            string            `json:"user"`
	Code            int32             `json:"code"`
	Message         string            `json:"message"`
	Offset          int64             `json:"offset"`
	LoginID         string            `json:"login_id"`
	Reconnect       bool              `json:"reconnect"`
	Ended           []replay.EndedRow `json:"ended"`
	DeviceName      string            `json:"device_name"`
	Extension       string            `json:"extension"`
	Platform        int32             `json:"platform"`
	LoginOffset     int64             `json:"login_offset"`
	Digest          string            `json:"digest"`
	At              *int64            `json:"at"`
	Live            string            `json:"live"`
	Rebuild         string            `json:"rebuild"`
	Equal           bool              `json:"equal"`
	Dropped         bool              `json:"dropped"`
	WhatIfCode      int32             `json:"whatif_code"`
	WhatIfEnded     []replay.EndedRow `json:"whatif_ended"`
	Lines           int               `json:"lines"`
	Evictions       int               `json:"evictions"`
	WhatIfEvictions int               `json:"whatif_evictions"`
}

// Output is a replay's output: the raw text and its rows.
type Output struct {
	Raw  string
	Rows []Row
}

// OfType returns the rows of one type ("decision", "device"...).
func (o Output) OfType(typ string) []Row {
	var out []Row
	for _, r := range o.Rows {
		if r.Type == typ {
			out = append(out, r)
		}
	}
	return out
}

// Line returns the decision or error row of input line n.
func (o Output) Line(t testing.TB, n int) Row {
	t.Helper()
	for _, r := range o.Rows {
		if (r.Type == "decision" || r.Type == "error") && r.Line == n {
			return r
		}
	}
	t.Fatalf("no row for line %d in:\n%s", n, o.Raw)
	return Row{}
}

// Devices lists "user/login_id" of the device rows, in output order.
func (o Output) Devices() []string {
	var out []string
	for _, r := range o.OfType("device") {
		out = append(out, r.User+"/"+r.LoginID)
	}
	return out
}

// Run replays input under cfg (TempDir defaults to the test's; At 0 means
// off, so tests set At only through an offset helper) and parses the rows.
func Run(t testing.TB, cfg replay.Config, input string) (Output, error) {
	t.Helper()
	if cfg.TempDir == "" {
		cfg.TempDir = t.TempDir()
	}
	if cfg.At == 0 {
		cfg.At = -1 // tests set At only through atOffset
	}
	var buf bytes.Buffer
	err := replay.Run(context.Background(), cfg, strings.NewReader(input), &buf)
	o := Output{Raw: buf.String()}
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		var r Row
		if jerr := json.Unmarshal([]byte(l), &r); jerr != nil {
			t.Fatalf("output line %q is not JSON: %v", l, jerr)
		}
		o.Rows = append(o.Rows, r)
	}
	return o, err
}

// RandomHistory is n operation lines of a few users of two apps: logins on
// three platforms (so fifth logins evict), reconnects, logouts, kicks,
// password changes, policies, messages of every chat type, receipts,
// contacts, groups, chatrooms and conversation marks. Many are refused by
// the rules; refusals are in the log too. Times are not monotonic.
func RandomHistory(seed uint64, n int) string {
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
			m["op"] = []string{"kick_all_devices", "password_change", "user_remove", "user_register", "tokens_revoke"}[r.IntN(5)]
			if m["op"] == "password_change" || m["op"] == "user_register" {
				// A hash as the receiving process computes it; an export
				// writes it as [redacted].
				m["password_hash"] = fmt.Sprintf("$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$%s%d", u, i)
			}
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

// Into replays input into dir (kept) and returns the digest; every
// line must be valid.
func Into(t testing.TB, dir, input string) string {
	t.Helper()
	o, err := Run(t, replay.Config{Dir: dir, Partitions: 1, KeepGoing: true}, input)
	if err != nil {
		t.Fatalf("replay: %v\n%s", err, FirstLines(o.Raw, 20))
	}
	var errs []Row
	for _, e := range o.OfType("error") {
		// An ended or unknown device acting on a group's or chatroom's
		// stream is refused before the append: a valid line, a "no".
		if !replay.RefusedByRule(engine.Errorf(engine.Code(e.Code), "%s", e.Message)) {
			errs = append(errs, e)
		}
	}
	if len(errs) > 0 {
		t.Fatalf("replay refused %d lines, first: %+v", len(errs), errs[0])
	}
	d := o.OfType("digest")
	if len(d) != 1 {
		t.Fatalf("no digest in:\n%s", FirstLines(o.Raw, 20))
	}
	return d[0].Digest
}

// FirstLines is the first n lines of s.
func FirstLines(s string, n int) string {
	ls := strings.SplitN(s, "\n", n+1)
	return strings.Join(ls[:min(n, len(ls))], "\n")
}

// OpenLog opens the embedded log of data directory dir, closed by the test.
func OpenLog(t testing.TB, dir string) engine.Log {
	t.Helper()
	lg, err := embedlog.Open(embedlog.Options{Dir: filepath.Join(dir, "log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lg.Close() })
	return lg
}

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mdsync/mdsync/adapters/replay"
	"github.com/mdsync/mdsync/adapters/replay/replaytest"
)

// rowsOfType parses replay's JSON lines and returns those of one type.
func rowsOfType(t *testing.T, out, typ string) []map[string]any {
	t.Helper()
	var rows []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("%v: %q", err, l)
		}
		if r["type"] == typ {
			rows = append(rows, r)
		}
	}
	return rows
}

// shopWithAlice sets app shop's policy to 4 devices per platform and adds
// alice through the admin CLI of the built binary (cred: how it finds the
// admin token), and returns a token of alice's.
func shopWithAlice(t *testing.T, bin, base string, cred ...string) string {
	t.Helper()
	cli := func(args ...string) string {
		t.Helper()
		out, errOut, code := runBin(t, bin, append(append(args, "--server", base), cred...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		return out
	}
	cli("policy", "set", "--app", "shop", "--default-limit", "4")
	cli("users", "add", "--app", "shop", "--user", "alice", "--password", "password-alice")
	return strings.TrimSpace(strings.Split(cli("users", "token", "--app", "shop", "--user", "alice"), "\n")[0])
}

// TestBinaryReplayAndExplainWhileServing: on the data directory of a
// running `mdsync serve` binary, `mdsync explain` tells the fifth-login
// eviction and `mdsync replay --from-data DIR --policy FILE` replays the
// production history under a stricter policy, without disturbing the
// server: it goes on evicting, and shuts down cleanly.
func TestBinaryReplayAndExplainWhileServing(t *testing.T) {
	bin := buildBinary(t)
	data := t.TempDir()
	srv := startServeLogged(t, bin, "--data", data, "--partitions", "2")
	base := "http://" + srv.addr
	tok := shopWithAlice(t, bin, base, "--admin-token", "tok")
	s := e2eServer{base: base, ws: "ws://" + srv.addr + "/v1/ws"}
	var phones []*device
	for i := 1; i <= 5; i++ {
		phones = append(phones, s.mustDial(t, "shop", "alice", tok, 1, fmt.Sprintf("Phone %d", i), "", fmt.Sprintf("phone%d", i), nil))
	}
	if k := phones[0].waitKicked(t, "phone1"); k.Code != 206 || k.ByLoginID != "phone5" {
		t.Fatalf("kick %+v", k)
	}

	out, errOut, code := runBin(t, bin, "explain", "--data", data, "--app", "shop", "--user", "alice")
	if code != 0 || !strings.Contains(out, "206 REASON_LOGIN_OTHER_DEVICE by the login of phone5") || strings.Count(out, "  login     ") != 5 {
		t.Fatalf("explain while serving: exit %d\n%s\n%s", code, out, errOut)
	}

	// What-if: one device per platform would have evicted at every login.
	strict := filepath.Join(t.TempDir(), "strict.json")
	if err := os.WriteFile(strict, []byte(`{"default_limit":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = runBin(t, bin, "replay", "--from-data", data, "--app", "shop", "--policy", strict)
	if code != 0 {
		t.Fatalf("replay while serving: exit %d\n%s\n%s", code, out, errOut)
	}
	src := rowsOfType(t, out, "source")
	logins := 0
	for _, d := range rowsOfType(t, out, "decision") {
		if d["op"] == "login" && d["from"] != nil {
			logins++
		}
	}
	sum := rowsOfType(t, out, "whatif_summary")
	if len(src) != 1 || src[0]["partitions"] != float64(2) || logins != 5 || len(sum) != 1 ||
		sum[0]["evictions"] != float64(1) || sum[0]["whatif_evictions"] != float64(4) {
		t.Fatalf("replay of the served log: source %v, %d logins, summary %v\n%s", src, logins, sum, out)
	}

	// The server was not disturbed: a sixth login evicts the oldest.
	s.mustDial(t, "shop", "alice", tok, 1, "Phone 6", "", "phone6", nil)
	if k := phones[1].waitKicked(t, "phone2"); k.Code != 206 || k.ByLoginID != "phone6" {
		t.Fatalf("kick after the tools ran %+v", k)
	}
	for _, d := range phones {
		d.c.Close()
	}
	srv.stop(t)
}

// TestBinaryReplayKafka: `mdsync replay --kafka-brokers B --topic T
// --policy FILE` replays a history from a Kafka topic (kfake), and
// --from-offset starts later.
func TestBinaryReplayKafka(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	input := replaytest.ReadExample(t, "same_platform_only.jsonl")
	replaytest.Into(t, dir, input)
	brokers, topic := replaytest.ToKafka(t, replaytest.OpenLog(t, dir))
	strict := filepath.Join(t.TempDir(), "strict.json")
	if err := os.WriteFile(strict, []byte(`{"default_limit":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runBin(t, bin, "replay", "--kafka-brokers", brokers, "--topic", topic, "--policy", strict)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	// The same what-if as on the JSON lines (TestReplayWhatIf).
	want, err := replaytest.Run(t, replay.Config{Policy: mustPolicy(t, `{"default_limit":1}`)}, input)
	if err != nil {
		t.Fatal(err)
	}
	got := rowsOfType(t, out, "whatif_summary")
	w := want.OfType("whatif_summary")
	if len(got) != 1 || len(w) != 1 || got[0]["evictions"] != float64(w[0].Evictions) || got[0]["whatif_evictions"] != float64(w[0].WhatIfEvictions) {
		t.Fatalf("what-if from Kafka %v, from the JSON lines %+v", got, w)
	}
	all := len(rowsOfType(t, out, "decision"))
	out, errOut, code = runBin(t, bin, "replay", "--kafka-brokers", brokers, "--topic", topic, "--from-offset", "3")
	if n := len(rowsOfType(t, out, "decision")); code != 0 || n != all-3 {
		t.Fatalf("--from-offset 3: exit %d, %d decisions of %d\n%s", code, n, all, errOut)
	}
	// One input only; a missing topic is a clear error.
	if _, errOut, code := runBin(t, bin, "replay", "--kafka-brokers", brokers, "--topic", topic, "file.jsonl"); code == 0 || !strings.Contains(errOut, "give one input") {
		t.Errorf("a file and a topic: exit %d: %s", code, errOut)
	}
	if _, errOut, code := runBin(t, bin, "replay", "--kafka-brokers", brokers, "--topic", "nope"); code == 0 || !strings.Contains(errOut, `no topic "nope"`) {
		t.Errorf("missing topic: exit %d: %s", code, errOut)
	}
}

func mustPolicy(t *testing.T, js string) *replay.Policy {
	t.Helper()
	p, err := replay.ParsePolicy([]byte(js), "demo")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mdsync/mdsync/adapters/explain"
)

// buildBinary builds cmd/mdsync into a temporary directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := filepath.Join(t.TempDir(), "mdsync")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// runBin runs the binary and returns its stdout, stderr and exit status.
func runBin(t *testing.T, bin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = append(os.Environ(), "MDSYNC_CONFIG=")
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errb.String(), 0
	case errors.As(err, &ee):
		return out.String(), errb.String(), ee.ExitCode()
	}
	t.Fatalf("%v: %v", args, err)
	return "", "", -1
}

// TestBinaryHelp: `mdsync --help` lists every command of the table and
// exits 0; `mdsync CMD --help` prints CMD's usage on stdout and exits 0 for
// every command of the table (and every admin subcommand); an unknown
// command exits 2.
func TestBinaryHelp(t *testing.T) {
	bin := buildBinary(t)
	out, errOut, code := runBin(t, bin, "--help")
	if code != 0 || errOut != "" {
		t.Fatalf("--help: exit %d, stderr %q", code, errOut)
	}
	for _, c := range commands {
		if !strings.Contains(out, "\n  "+c.name+" ") {
			t.Errorf("--help does not list %s:\n%s", c.name, out)
		}
	}
	if o, _, code := runBin(t, bin, "help"); code != 0 || o != out {
		t.Errorf("help: exit %d, output differs from --help", code)
	}
	for _, c := range commands {
		for _, h := range []string{"--help", "-h"} {
			out, errOut, code := runBin(t, bin, c.name, h)
			if code != 0 || !strings.Contains(strings.ToLower(out), "usage") || strings.Contains(errOut, "help requested") {
				t.Errorf("%s %s: exit %d\nstdout %q\nstderr %q", c.name, h, code, out, errOut)
			}
		}
		if o, _, code := runBin(t, bin, "help", c.name); code != 0 || !strings.Contains(strings.ToLower(o), "usage") {
			t.Errorf("help %s: exit %d %q", c.name, code, o)
		}
	}
	for _, sub := range [][]string{
		{"users", "add"}, {"users", "passwd"}, {"users", "remove"}, {"users", "token"},
		{"devices", "list"}, {"devices", "kick"}, {"devices", "kick-all"}, {"policy", "get"}, {"policy", "set"},
	} {
		out, errOut, code := runBin(t, bin, sub[0], sub[1], "--help")
		if code != 0 || !strings.Contains(out, "mdsync "+sub[0]+" "+sub[1]) || !strings.Contains(out, "-app") {
			t.Errorf("%v --help: exit %d\nstdout %q\nstderr %q", sub, code, out, errOut)
		}
	}
	if _, errOut, code := runBin(t, bin, "frobnicate"); code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, stderr %q", code, errOut)
	}
	if _, _, code := runBin(t, bin); code != 2 {
		t.Errorf("no command: exit %d", code)
	}
	if _, _, code := runBin(t, bin, "explain", "--no-such-flag"); code != 2 {
		t.Errorf("unknown flag: exit %d", code)
	}
}

// TestBinaryExplainFifthLogin runs the fifth-login example on the built
// binary — serve, a policy set with the CLI, five phones through the Go SDK
// — stops the server and runs `mdsync explain` on the data directory serve
// left: it tells the eviction story.
func TestBinaryExplainFifthLogin(t *testing.T) {
	bin := buildBinary(t)
	data := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	srv := exec.Command(bin, "serve", "--data", data, "--addr", addr, "--partitions", "4")
	srv.Env = append(os.Environ(), "MDSYNC_CONFIG=", "MDSYNC_ADMIN_TOKEN=")
	var srvLog bytes.Buffer
	srv.Stderr = &srvLog
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			srv.Process.Kill()
			srv.Wait()
		}
	})
	base := "http://" + addr
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server did not start:\n%s", srvLog.String())
		}
	}
	// The admin CLI reads the token serve generated into its data directory.
	tok := shopWithAlice(t, bin, base, "--data", data)

	s := e2eServer{base: base, ws: "ws://" + addr + "/v1/ws"}
	var phones []*device
	for i := 1; i <= 4; i++ {
		phones = append(phones, s.mustDial(t, "shop", "alice", tok, 1, fmt.Sprintf("Phone %d", i), "", fmt.Sprintf("phone%d", i), nil))
	}
	p5 := s.mustDial(t, "shop", "alice", tok, 1, "iPhone 15", `{"os":"ios"}`, "phone5", nil)
	if k := phones[0].waitKicked(t, "phone1"); k.Code != 206 || k.ByLoginID != "phone5" {
		t.Fatalf("kick %+v", k)
	}
	for _, d := range append(phones[1:], p5) {
		d.c.Close()
	}
	// Stop the server as an operator would; explain then reads its data
	// directory (the embedded log is one process's at a time).
	if err := srv.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := srv.Wait(); err != nil {
		t.Fatalf("serve exited with %v:\n%s", err, srvLog.String())
	}
	stopped = true

	out, errOut, code := runBin(t, bin, "explain", "--data", data, "--app", "shop", "--user", "alice")
	if code != 0 {
		t.Fatalf("explain: exit %d: %s", code, errOut)
	}
	var ended string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, " ended ") {
			ended = l
		}
	}
	for _, want := range []string{"phone1", `"Phone 1"`, "206 REASON_LOGIN_OTHER_DEVICE",
		`by the login of phone5 ("iPhone 15", extension "{\"os\":\"ios\"}")`, "policy v1"} {
		if !strings.Contains(ended, want) {
			t.Errorf("explain's eviction line lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "  login     ") != 5 {
		t.Errorf("explain: want 5 logins:\n%s", out)
	}

	// The JSON rows carry the same story with the log position.
	out, errOut, code = runBin(t, bin, "explain", "--data", data, "--app", "shop", "--user", "alice", "--json")
	if code != 0 {
		t.Fatalf("explain --json: exit %d: %s", code, errOut)
	}
	var rows []explain.Row
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var r explain.Row
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		rows = append(rows, r)
	}
	var ev, login5 explain.Row
	for _, r := range rows {
		switch {
		case r.Event == "ended" && r.LoginID == "phone1":
			ev = r
		case r.Event == "login" && r.LoginID == "phone5":
			login5 = r
		}
	}
	if ev.Event != "ended" || ev.LoginID != "phone1" || ev.Code != 206 || ev.Reason != "REASON_LOGIN_OTHER_DEVICE" ||
		ev.ByLoginID != "phone5" || ev.ByDeviceName != "iPhone 15" || ev.ByExtension != `{"os":"ios"}` ||
		ev.PolicyVersion != 1 || ev.LoginOffset == nil {
		t.Fatalf("eviction row %+v", ev)
	}
	if login5.LoginID != "phone5" || ev.Partition != login5.Partition || ev.Offset != login5.Offset {
		t.Fatalf("the eviction is not at phone5's login: %+v / %+v", ev, login5)
	}
}

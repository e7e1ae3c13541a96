package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReadmeQuickstart runs README.md's quickstart block as written, from
// the repository root, with the data directory and the address moved
// aside through the environment (both commands honour MDSYNC_DATA,
// MDSYNC_ADDR and MDSYNC_SERVER), and checks that the laptop is kicked
// with 206 naming the phone, and that the device list shows the phone.
func TestReadmeQuickstart(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go run several times")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("the quickstart uses curl")
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- quickstart:[^\n]*-->\n```sh\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no quickstart block")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	root, _ := filepath.Abs("../..")
	// The block leaves the server running (a reader stops it with Ctrl-C);
	// the test kills the script's process group: `go run` does not pass a
	// SIGTERM on to the program it runs.
	script := string(m[1])
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "MDSYNC_DATA="+t.TempDir(), "MDSYNC_ADDR="+addr, "MDSYNC_SERVER=http://"+addr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// The server still holds the output pipe when the script ends.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	s := out.String()
	if err != nil && !errors.Is(err, exec.ErrWaitDelay) {
		t.Fatalf("quickstart: %v\n%s", err, s)
	}
	for _, want := range []string{
		"user alice created in app demo",
		`kicked: 206 REASON_LOGIN_OTHER_DEVICE by "`,
		`(phone, {"os":"ios"})`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("quickstart output lacks %q:\n%s", want, s)
		}
	}
	if !regexp.MustCompile(`(?m)^\S+\s+1\s+phone\s`).MatchString(s) {
		t.Errorf("device list does not show the phone on platform 1:\n%s", s)
	}
}

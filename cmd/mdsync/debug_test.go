package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestServeDebugListener starts the built binary with --debug-addr on a
// kernel-chosen loopback port and checks that the internal listener serves
// pprof and /metrics without a token while the public /metrics still
// demands the admin token; then that --debug-addr "" starts no listener
// and that an explicit address that is taken stops serve with an error.
func TestServeDebugListener(t *testing.T) {
	bin := buildBinary(t)

	t.Run("serves", func(t *testing.T) {
		s := startServeLogged(t, bin, "--debug-addr", "127.0.0.1:0")
		if s.debug == "" {
			t.Fatal("no \"mdsync debug serving\" line with debug_addr")
		}
		get := func(url, token string) (int, string) {
			req, _ := http.NewRequest("GET", url, nil)
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		if code, body := get("http://"+s.debug+"/metrics", ""); code != 200 || !strings.Contains(body, "mdsync_log_append_duration_seconds") {
			t.Fatalf("debug /metrics: %d %.200s", code, body)
		}
		if code, body := get("http://"+s.debug+"/debug/pprof/", ""); code != 200 || !strings.Contains(body, "goroutine") {
			t.Fatalf("debug pprof index: %d %.200s", code, body)
		}
		if code, body := get("http://"+s.debug+"/debug/pprof/goroutine?debug=1", ""); code != 200 || !strings.Contains(body, "goroutine profile") {
			t.Fatalf("goroutine profile: %d %.200s", code, body)
		}
		if code, body := get("http://"+s.debug+"/debug/pprof/profile?seconds=1", ""); code != 200 || len(body) == 0 {
			t.Fatalf("cpu profile: %d, %d bytes", code, len(body))
		}
		// The public listener keeps the admin credential on /metrics and
		// serves no pprof.
		if code, _ := get("http://"+s.addr+"/metrics", ""); code != http.StatusUnauthorized {
			t.Fatalf("public /metrics without a token: %d, want 401", code)
		}
		if code, _ := get("http://"+s.addr+"/metrics", "tok"); code != 200 {
			t.Fatalf("public /metrics with the admin token: %d", code)
		}
		if code, _ := get("http://"+s.addr+"/debug/pprof/", "tok"); code == 200 {
			t.Fatal("the public listener serves pprof")
		}
		s.stop(t)
	})

	t.Run("disabled", func(t *testing.T) {
		s := startServeLogged(t, bin, "--debug-addr", "")
		if s.debug != "" {
			t.Fatalf("--debug-addr \"\" started a debug listener on %s", s.debug)
		}
		s.stop(t)
	})

	t.Run("explicit address taken", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		cmd := exec.Command(bin, "serve", "--data", t.TempDir(), "--addr", "127.0.0.1:0", "--admin-token", "tok", "--debug-addr", ln.Addr().String())
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "--debug-addr") {
			t.Fatalf("serve with a taken --debug-addr: %v\n%s", err, out)
		}
	})
}

type loggedServe struct {
	cmd         *exec.Cmd
	addr, debug string
	done        chan error
	mu          sync.Mutex
	log         []string // lines that are not INFO
}

// startServeLogged starts serve with JSON logs on kernel-chosen ports and
// reads the public and debug addresses from its log.
func startServeLogged(t *testing.T, bin string, extra ...string) *loggedServe {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", "--data", t.TempDir(), "--addr", "127.0.0.1:0", "--admin-token", "tok", "--log-format", "json"}, extra...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	s := &loggedServe{cmd: cmd, done: make(chan error, 1)}
	up := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var rec struct {
				Msg       string `json:"msg"`
				Addr      string `json:"addr"`
				DebugAddr string `json:"debug_addr"`
			}
			if json.Unmarshal(sc.Bytes(), &rec) != nil || !strings.Contains(sc.Text(), `"level":"INFO"`) {
				s.mu.Lock()
				s.log = append(s.log, sc.Text())
				s.mu.Unlock()
			}
			switch rec.Msg {
			case "mdsync debug serving":
				s.debug = rec.DebugAddr
			case "mdsync serving":
				s.addr = rec.Addr
				close(up)
			}
		}
		s.done <- cmd.Wait()
	}()
	select {
	case <-up:
	case err := <-s.done:
		t.Fatalf("serve exited: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not start")
	}
	return s
}

func (s *loggedServe) stop(t *testing.T) {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		if err != nil {
			s.mu.Lock()
			defer s.mu.Unlock()
			t.Fatalf("graceful shutdown: %v\n%s", err, strings.Join(s.log, "\n"))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no shutdown after SIGTERM")
	}
}

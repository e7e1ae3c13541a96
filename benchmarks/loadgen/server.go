package loadgen

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// RaiseNoFile raises this process's open-file limit to at least want (soft
// and, when allowed, hard; root may go up to /proc/sys/fs/nr_open). A
// server started afterwards inherits it: an explicit Setrlimit stops Go's
// os/exec from restoring the limit the process started with. It returns
// the soft limit in force.
func RaiseNoFile(want uint64) (uint64, error) {
	var cur syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &cur); err != nil {
		return 0, err
	}
	if cur.Cur >= want {
		// Set it anyway, so children inherit what we have now.
		return cur.Cur, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &cur)
	}
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && want > n {
			want = n
		}
	}
	next := syscall.Rlimit{Cur: want, Max: max(cur.Max, want)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &next); err != nil {
		// Not allowed past the hard limit: take the hard limit.
		next = syscall.Rlimit{Cur: cur.Max, Max: cur.Max}
		if err2 := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &next); err2 != nil {
			return cur.Cur, fmt.Errorf("raise open-file limit: %w", err)
		}
		return cur.Max, fmt.Errorf("open-file limit is %d, below the %d wanted (the hard limit; raising it needs CAP_SYS_RESOURCE)", cur.Max, want)
	}
	return next.Cur, nil
}

// BuildMdsync builds cmd/mdsync of the module in the current directory (or
// a parent) into dir and returns the binary's path.
func BuildMdsync(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the mdsync module: run from the repository or pass --mdsync-bin")
	}
	bin := filepath.Join(dir, "mdsync")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/mdsync")
	cmd.Dir = filepath.Dir(mod)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/mdsync: %w\n%s", err, b)
	}
	return bin, nil
}

// Server is an `mdsync serve` process started by the benchmark.
type Server struct {
	Addr    string // host:port it listens on
	Data    string
	Token   string // admin token, from DATA/admin-token
	LogPath string // its stderr
	cmd     *exec.Cmd
	done    chan error
}

// PID is the server's process id.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// ServerOptions configure StartServer.
type ServerOptions struct {
	Bin          string   // the mdsync binary
	Data         string   // data directory (a fresh temp dir)
	KafkaBrokers string   // empty: embedded log
	Partitions   int      // 0: serve's default
	ExtraArgs    []string // passed to serve as they are
	Logger       *slog.Logger
}

// StartServer starts `mdsync serve` on 127.0.0.1 with a kernel-chosen port
// and waits until it logs that it is serving.
func StartServer(ctx context.Context, o ServerOptions) (*Server, error) {
	args := []string{"serve", "--data", o.Data, "--addr", "127.0.0.1:0", "--log-format", "json"}
	if o.KafkaBrokers != "" {
		args = append(args, "--kafka-brokers", o.KafkaBrokers, "--kafka-topic", "mdsync-bench-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	}
	if o.Partitions > 0 {
		args = append(args, "--partitions", strconv.Itoa(o.Partitions))
	}
	// serve's debug listener defaults to the fixed 127.0.0.1:6060; a
	// bench's server takes a kernel-chosen port unless the caller gives one,
	// so two benches (or a bench and a developer's serve) never collide.
	if !hasFlag(o.ExtraArgs, "--debug-addr") {
		args = append(args, "--debug-addr=127.0.0.1:0")
	}
	args = append(args, o.ExtraArgs...)
	logPath := filepath.Join(o.Data, "..", filepath.Base(o.Data)+"-serve.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(o.Bin, args...)
	// The server dies with the benchmark, even when the benchmark crashes
	// or is killed: no orphan holding ports and memory on a shared machine.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stdout = logf
	stderr, err := cmd.StderrPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", o.Bin, err)
	}
	s := &Server{Data: o.Data, LogPath: logPath, cmd: cmd, done: make(chan error, 1)}
	addrc := make(chan string, 1)
	go func() {
		// Copy every line to the log file; pick the address from the
		// "mdsync serving" line.
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		found := false
		for sc.Scan() {
			line := sc.Bytes()
			logf.Write(line)
			logf.Write([]byte{'\n'})
			if found {
				continue
			}
			var rec struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(line, &rec) == nil && rec.Msg == "mdsync serving" && rec.Addr != "" {
				found = true
				addrc <- rec.Addr
			}
		}
		io.Copy(logf, stderr)
		logf.Close()
		s.done <- cmd.Wait()
	}()
	timeout := time.NewTimer(2 * time.Minute)
	defer timeout.Stop()
	select {
	case s.Addr = <-addrc:
	case err := <-s.done:
		return nil, fmt.Errorf("mdsync serve exited before serving (%v); log: %s", err, tail(logPath))
	case <-timeout.C:
		s.Stop()
		return nil, fmt.Errorf("mdsync serve did not start within 2m; log: %s", tail(logPath))
	case <-ctx.Done():
		s.Stop()
		return nil, ctx.Err()
	}
	tok, err := os.ReadFile(filepath.Join(o.Data, "admin-token"))
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("admin token: %w", err)
	}
	s.Token = strings.TrimSpace(string(tok))
	// "serving" is not "ready": on Kafka the consumer group must first
	// assign the partitions, and until then every write is 503/1018. Wait
	// for /readyz, as a load balancer would, before the scenario starts.
	if err := s.waitReady(ctx, 2*time.Minute); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// waitReady polls GET /readyz until it answers 200, the server exits, or
// the limit passes.
func (s *Server) waitReady(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	cl := &http.Client{Timeout: 2 * time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.Addr+"/readyz", nil)
		if err != nil {
			return err
		}
		resp, err := cl.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("mdsync serve at %s not ready within %s; log: %s", s.Addr, limit, tail(s.LogPath))
		}
		select {
		case err := <-s.done:
			s.done <- err
			return fmt.Errorf("mdsync serve exited before it was ready (%v); log: %s", err, tail(s.LogPath))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop sends SIGTERM, waits up to 30 s for the graceful shutdown, then
// kills.
func (s *Server) Stop() error {
	if s.cmd.Process == nil {
		return nil
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == -1 {
			return nil // ended by our signal
		}
		return err
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
		return errors.New("mdsync serve did not stop within 30s after SIGTERM; killed")
	}
}

// tail returns the last 2 KiB of a file, for error messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return string(b)
}

// hasFlag reports whether args set the flag name (as "name", "name=v", or
// with a single dash).
func hasFlag(args []string, name string) bool {
	short := name[1:]
	for _, a := range args {
		for _, n := range []string{name, short} {
			if a == n || strings.HasPrefix(a, n+"=") {
				return true
			}
		}
	}
	return false
}

// attached is the server a run drives: started here, or given by --addr.
type attached struct {
	srv   *Server // nil when given
	addr  string
	pid   int
	token string
	desc  string // for the report
}

// attachServer starts `mdsync serve` on a temporary data directory (built
// from this tree unless f.MdsyncBin names a binary) or, with f.Addr, uses
// the running one and its admin token. The returned cleanup stops a
// started server and removes its directory.
func attachServer(ctx context.Context, f Options, tmpPrefix string, logger *slog.Logger) (*attached, func(), error) {
	if f.Addr != "" {
		a := &attached{addr: f.Addr, pid: f.ServerPID, token: f.AdminToken, desc: "mdsync serve at " + f.Addr}
		if f.AdminTokenFile != "" {
			t, err := os.ReadFile(f.AdminTokenFile)
			if err != nil {
				return nil, nil, err
			}
			a.token = strings.TrimSpace(string(t))
		}
		return a, func() {}, nil
	}
	tmp, err := os.MkdirTemp("", tmpPrefix)
	if err != nil {
		return nil, nil, err
	}
	fail := func(err error) (*attached, func(), error) {
		os.RemoveAll(tmp)
		return nil, nil, err
	}
	bin := f.MdsyncBin
	if bin == "" {
		logger.Info("building mdsync")
		if bin, err = BuildMdsync(ctx, tmp); err != nil {
			return fail(err)
		}
	}
	data := tmp + "/data"
	if err := os.Mkdir(data, 0o700); err != nil {
		return fail(err)
	}
	srv, err := StartServer(ctx, ServerOptions{Bin: bin, Data: data, KafkaBrokers: f.KafkaBrokers, Partitions: f.Partitions, ExtraArgs: f.ServeArgs, Logger: logger})
	if err != nil {
		return fail(err)
	}
	a := &attached{srv: srv, addr: srv.Addr, pid: srv.PID(), token: srv.Token, desc: "self-started mdsync serve, embedded log"}
	if f.KafkaBrokers != "" {
		a.desc = "self-started mdsync serve, Kafka at " + f.KafkaBrokers
	}
	if len(f.ServeArgs) > 0 {
		a.desc += " (" + strings.Join(f.ServeArgs, " ") + ")"
	}
	return a, func() {
		a.stopServer(logger)
		os.RemoveAll(tmp)
	}, nil
}

// stopServer stops a started server, once; the same-run baseline then has
// the machine alone.
func (a *attached) stopServer(logger *slog.Logger) {
	if a.srv == nil {
		return
	}
	if err := a.srv.Stop(); err != nil {
		logger.Warn("server stop", "err", err)
	}
	a.srv = nil
}

package loadgen

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// binDir holds the mdsync binary built for the package's tests; TestMain
// removes it.
var binDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// mdsyncBin builds cmd/mdsync once for the package's tests.
var mdsyncBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "mdsync-bench-test-bin-")
	if err != nil {
		return "", err
	}
	binDir = dir
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return BuildMdsync(ctx, dir)
})

func TestStartServerSamplesAndStops(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts mdsync serve")
	}
	bin, err := mdsyncBin()
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(t.TempDir(), "data")
	os.Mkdir(data, 0o700)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := StartServer(ctx, ServerOptions{Bin: bin, Data: data, Partitions: 2, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			srv.Stop()
		}
	}()
	if srv.Token == "" || srv.Addr == "" {
		t.Fatalf("server %+v", srv)
	}
	s := NewSampler(srv.PID(), MetricsReader{URL: "http://" + srv.Addr + "/metrics", Token: srv.Token, HC: http.DefaultClient}, func() int { return 0 })
	sm := s.Sample(ctx)
	if _, err := s.Report(); err != nil {
		t.Fatal(err)
	}
	if sm.RSSBytes < 1<<20 || sm.Goroutines < 2 {
		t.Errorf("sample of the server: %+v", sm)
	}
	if err := srv.Stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	stopped = true
	if _, err := ReadRSS(srv.PID()); err == nil {
		t.Error("server process still there after Stop")
	}
}

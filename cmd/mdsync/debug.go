package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// defaultDebugAddr is serve's internal debug listener: loopback only, so
// what it serves unauthenticated never leaves the host.
const defaultDebugAddr = "127.0.0.1:6060"

// debugServer is serve's internal listener (--debug-addr): net/http/pprof
// under /debug/pprof/ and the Prometheus registry under /metrics, both
// without the admin token, as Centrifugo's internal port. It is for the
// operator on the host (or a scrape inside a private network), never a
// public address: profiles and metrics name users' apps and cost CPU.
type debugServer struct {
	srv *http.Server
	ln  net.Listener
}

// startDebug listens on addr and serves the debug routes; "" disables it
// (nil, nil). When the default address is taken (another mdsync on the
// host, a test running several), serve keeps running without it and says
// so: only an address the operator chose is an error.
func startDebug(addr string, explicit bool, reg *prometheus.Registry, logger *slog.Logger) (*debugServer, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if !explicit {
			logger.Warn("debug listener not started (the default address is taken; set --debug-addr)", "addr", addr, "err", err)
			return nil, nil
		}
		return nil, fmt.Errorf("serve: --debug-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	// No WriteTimeout: a CPU profile or trace writes after ?seconds=N.
	d := &debugServer{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}
	go func() {
		if err := d.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("debug listener stopped", "err", err)
		}
	}()
	logger.Info("mdsync debug serving", "debug_addr", ln.Addr().String())
	return d, nil
}

// Close stops the listener; a profile being written is cut.
func (d *debugServer) Close() error {
	if d == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := d.srv.Shutdown(ctx); err != nil {
		return d.srv.Close()
	}
	return nil
}

// isSet reports whether a flag was given (command line, environment or
// config file: parseSettings sets those through fs.Set).
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

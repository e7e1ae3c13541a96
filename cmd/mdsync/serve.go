package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mdsync/mdsync/adapters/kafkalog"
	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/adapters/push"
	"github.com/mdsync/mdsync/adapters/restapi"
	"github.com/mdsync/mdsync/projections"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// serveConfig holds serve's settings. Each flag can also be set by an
// environment variable (MDSYNC_<FLAG>) or the --config file; see
// parseSettings for the precedence.
type serveConfig struct {
	data       string
	addr       string
	partitions int
	adminToken string
	logFormat  string
	pushURL    string
	pushSecret string
	kafka      string
	topic      string
	rf         int
}

// runServe runs the server on the embedded log: a data directory and an
// HTTP listener on 127.0.0.1:8080 by default, with no other setup.
func runServe(args []string) error {
	var c serveConfig
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.StringVar(&c.data, "data", "data", "data directory (env MDSYNC_DATA)")
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8080", "HTTP listen address (env MDSYNC_ADDR)")
	fs.IntVar(&c.partitions, "partitions", 8, "partitions of a new log; an existing log keeps its count (env MDSYNC_PARTITIONS)")
	fs.StringVar(&c.adminToken, "admin-token", "", "admin bearer token; default: generated once into DATA/admin-token (env MDSYNC_ADMIN_TOKEN)")
	fs.StringVar(&c.logFormat, "log-format", "text", "text or json (env MDSYNC_LOG_FORMAT)")
	fs.StringVar(&c.pushURL, "push-webhook", "", "URL that receives offline push entries (HTTP POST); empty disables push (env MDSYNC_PUSH_WEBHOOK)")
	fs.StringVar(&c.kafka, "kafka-brokers", "", "comma-separated Kafka bootstrap brokers; empty uses the embedded log (env MDSYNC_KAFKA_BROKERS)")
	fs.StringVar(&c.topic, "kafka-topic", "mdsync.log", "the log's Kafka topic; created with --partitions if missing, else its partition count must match (env MDSYNC_KAFKA_TOPIC)")
	fs.IntVar(&c.rf, "kafka-replication", 1, "replication factor of a topic mdsync creates (env MDSYNC_KAFKA_REPLICATION)")
	fs.StringVar(&c.pushSecret, "push-secret", "", "HMAC-SHA256 key for the X-Mdsync-Signature header (env MDSYNC_PUSH_SECRET)")
	if err := parseSettings(fs, args); err != nil {
		return err
	}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, nil)
	if c.logFormat == "json" {
		h = slog.NewJSONHandler(os.Stderr, nil)
	}
	logger := slog.New(h)

	if err := os.MkdirAll(c.data, 0o700); err != nil {
		return err
	}
	token, err := adminToken(c)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ended := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mdsync_sessions_ended_total",
		Help: "Sessions ended by evictions, kicks, logouts, password changes and removals, by reason.",
	}, []string{"reason"})
	reg.MustRegister(ended)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// Offline push: devices connect through the gateway; until one is
	// connected for a user, that user's messages are pushed.
	presence := push.NewPresenceSet()
	var outbox *push.Outbox
	if c.pushURL != "" {
		if outbox, err = push.OpenOutbox(push.OutboxOptions{Dir: filepath.Join(c.data, "push"), Logger: logger}); err != nil {
			return err
		}
		defer outbox.Close()
		d, err := push.NewDispatcher(outbox, push.Options{URL: c.pushURL, Secret: []byte(c.pushSecret), Registerer: reg, Logger: logger})
		if err != nil {
			return err
		}
		go func() {
			if err := d.Run(ctx); err != nil {
				logger.Error("push dispatcher stopped", "err", err)
			}
		}()
	}
	onApplied := func(p int32, a projections.Applied) {
		for _, d := range a.Decisions {
			for _, e := range d.Ended {
				ended.WithLabelValues(strings.ToLower(strings.TrimPrefix(e.Reason.String(), "REASON_"))).Inc()
			}
		}
		if outbox == nil {
			return
		}
		var out []push.Entry
		for _, ae := range a.Entries {
			if e, ok := push.Candidates(ae.App, ae.User, ae.Entry); ok && !presence.Connected(ae.App, ae.User) {
				out = append(out, e)
			}
		}
		// The batch is committed; a failed enqueue cannot undo it, so it is
		// logged (docs/design-notes.md, push).
		if err := outbox.Enqueue(out...); err != nil {
			logger.Error("push enqueue", "err", err, "entries", len(out))
		}
	}
	n, err := openNode(ctx, c, onApplied)
	if err != nil {
		return err
	}
	defer n.Close()
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "mdsync_projection_lag_events",
		Help: "Events appended to the log but not yet applied, summed over partitions.",
	}, func() float64 {
		var lag int64
		for p := int32(0); p < n.Log.Partitions(); p++ {
			end, err := n.Log.End(context.Background(), p)
			if err == nil {
				lag += end - n.Store.Checkpoint(p).NextOffset
			}
		}
		return float64(lag)
	}))

	api, err := restapi.New(n.Engine, n.Store, restapi.Options{AdminToken: token, Registry: reg, Logger: logger})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: api, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	logger.Info("mdsync serving", "addr", ln.Addr().String(), "data", c.data, "partitions", n.Log.Partitions(),
		"admin_token_file", filepath.Join(c.data, "admin-token"))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	// Graceful: stop taking requests, let in-flight operations get their
	// decisions, then close the projector, the store and the log.
	logger.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Error("shutdown", "err", err)
	}
	return n.Close()
}

// openNode opens the embedded log, or the Kafka topic when brokers are set.
// One process owns every partition; several processes sharing a topic need
// partition ownership, which is not built yet (see the open Kafka issue).
func openNode(ctx context.Context, c serveConfig, onApplied func(int32, projections.Applied)) (*node.Node, error) {
	if c.kafka == "" {
		return node.Open(ctx, node.Options{Dir: c.data, Partitions: int32(c.partitions), OnApplied: onApplied})
	}
	octx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	lg, err := kafkalog.Open(octx, kafkalog.Options{
		Brokers: strings.Split(c.kafka, ","), Topic: c.topic, Partitions: int32(c.partitions),
		ReplicationFactor: c.rf, CreateTopic: true,
	})
	if err != nil {
		return nil, err
	}
	st, err := projections.Open(projections.Options{Dir: filepath.Join(c.data, "proj-kafka"), Partitions: lg.Partitions(), OnApplied: onApplied})
	if err != nil {
		lg.Close()
		return nil, err
	}
	return node.Start(ctx, lg, st, nil)
}

// adminToken returns the configured token, or the one stored in the data
// directory, creating it (0600) on first start.
func adminToken(c serveConfig) (string, error) {
	if c.adminToken != "" {
		return c.adminToken, nil
	}
	path := filepath.Join(c.data, "admin-token")
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	buf := make([]byte, 24)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(buf)
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("serve: write admin token: %w", err)
	}
	return tok, nil
}

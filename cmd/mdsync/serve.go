package main

import (
	"context"
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

	"github.com/mdsync/mdsync/adapters/nodemetrics"

	"github.com/mdsync/mdsync/adapters/auth"
	"github.com/mdsync/mdsync/adapters/bus"
	"github.com/mdsync/mdsync/adapters/clientaddr"
	"github.com/mdsync/mdsync/adapters/console"
	"github.com/mdsync/mdsync/adapters/delivery"
	"github.com/mdsync/mdsync/adapters/feed"
	"github.com/mdsync/mdsync/adapters/forward"
	"github.com/mdsync/mdsync/adapters/gateway"
	"github.com/mdsync/mdsync/adapters/push"
	"github.com/mdsync/mdsync/adapters/restapi"
	"github.com/mdsync/mdsync/projections/aggregates"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// serveConfig holds serve's settings. Each flag can also be set by an
// environment variable (MDSYNC_<FLAG>) or the --config file; see
// parseSettings for the precedence.
type serveConfig struct {
	data       string
	addr       string
	advertise  string
	partitions int
	adminToken string
	tokenKey   string
	logFormat  string
	pushURL    string
	pushSecret string
	kafka      string
	topic      string
	group      string
	busTopic   string
	rf         int
	origins    string
	debugAddr  string
	proxies    string
	gw         gateway.Options
	// The node's bounds on ops awaiting decisions (node.Options).
	maxPending    int
	maxPendingAge time.Duration
}

// runServe runs the server on the embedded log: a data directory and an
// HTTP listener on 127.0.0.1:8080 by default, with no other setup.
func runServe(args []string) error {
	var c serveConfig
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.StringVar(&c.data, "data", "data", "data directory (env MDSYNC_DATA)")
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8080", "HTTP and WebSocket listen address (env MDSYNC_ADDR)")
	fs.StringVar(&c.advertise, "advertise-addr", "", "host:port devices use to reach this process, named in 1018 redirects; default --addr (env MDSYNC_ADVERTISE_ADDR)")
	fs.IntVar(&c.partitions, "partitions", 8, "partitions of a new log; an existing log keeps its count (env MDSYNC_PARTITIONS)")
	fs.StringVar(&c.adminToken, "admin-token", "", "admin bearer token; default: generated once into DATA/admin-token (env MDSYNC_ADMIN_TOKEN)")
	fs.StringVar(&c.tokenKey, "token-key", "", "key (at least 32 bytes) that signs user tokens; processes sharing users share it; default: generated once into DATA/token-key (env MDSYNC_TOKEN_KEY)")
	fs.StringVar(&c.logFormat, "log-format", "text", "text or json (env MDSYNC_LOG_FORMAT)")
	fs.StringVar(&c.pushURL, "push-webhook", "", "URL that receives offline push entries (HTTP POST); empty disables push (env MDSYNC_PUSH_WEBHOOK)")
	fs.StringVar(&c.pushSecret, "push-secret", "", "HMAC-SHA256 key for the X-Mdsync-Signature header (env MDSYNC_PUSH_SECRET)")
	fs.StringVar(&c.kafka, "kafka-brokers", "", "comma-separated Kafka bootstrap brokers; empty uses the embedded log (env MDSYNC_KAFKA_BROKERS)")
	fs.StringVar(&c.topic, "kafka-topic", "mdsync.log", "the log's Kafka topic; created with --partitions if missing, else its partition count must match (env MDSYNC_KAFKA_TOPIC)")
	fs.StringVar(&c.group, "kafka-group", "mdsync", "consumer group of the serve processes sharing the topic; each projects the partitions the group assigns it (env MDSYNC_KAFKA_GROUP)")
	fs.StringVar(&c.busTopic, "kafka-bus-topic", bus.DefaultTopic, "Kafka topic of the delivery bus (env MDSYNC_KAFKA_BUS_TOPIC)")
	fs.IntVar(&c.rf, "kafka-replication", 1, "replication factor of topics mdsync creates (env MDSYNC_KAFKA_REPLICATION)")
	fs.IntVar(&c.gw.SendQueue, "ws-send-queue", 0, "frames queued per device connection before it is closed as a slow consumer (1016); 0: the gateway default (env MDSYNC_WS_SEND_QUEUE)")
	fs.DurationVar(&c.gw.HeartbeatTimeout, "ws-heartbeat-timeout", 0, "close a device connection silent this long (1017); 0: the gateway default (env MDSYNC_WS_HEARTBEAT_TIMEOUT)")
	fs.IntVar(&c.maxPending, "max-pending", 0, "operations this process holds awaiting decisions (appending, or appended and not yet applied) before it refuses new ones with 1019 and retry_after_ms: a cap for bursts; 0: the engine default (256), negative: no cap (env MDSYNC_MAX_PENDING)")
	fs.DurationVar(&c.maxPendingAge, "max-pending-age", 0, "refuse new operations with 1019 and retry_after_ms while the oldest one awaiting its decision has waited longer than this beyond what an operation alone takes: bounds the op latency past saturation; 0: the engine default (200ms), negative: no bound (env MDSYNC_MAX_PENDING_AGE)")
	fs.IntVar(&c.gw.MaxConnections, "ws-max-connections", 0, "device connections accepted at once; 0: the gateway default (env MDSYNC_WS_MAX_CONNECTIONS)")
	fs.StringVar(&c.origins, "allowed-origins", "", "comma-separated browser origins (scheme://host:port, or *) allowed besides the server's own: the WebSocket handshake and CORS on the user routes; admin routes never (env MDSYNC_ALLOWED_ORIGINS)")
	fs.StringVar(&c.debugAddr, "debug-addr", defaultDebugAddr, "internal listener for /debug/pprof/ and /metrics without the admin token (debug.go); keep it on loopback or a private network; empty disables (env MDSYNC_DEBUG_ADDR)")
	fs.StringVar(&c.proxies, "trusted-proxies", "", "comma-separated CIDR ranges or addresses of reverse proxies whose X-Forwarded-For is believed (the rightmost address not in the list is the client's); empty: the TCP peer is the client (env MDSYNC_TRUSTED_PROXIES)")
	if err := parseSettings(fs, args); err != nil {
		return err
	}
	proxies, err := clientaddr.Parse(c.proxies)
	if err != nil {
		return err
	}
	var origins []string
	for _, o := range strings.Split(c.origins, ",") {
		if o = strings.TrimRight(strings.TrimSpace(o), "/"); o != "" {
			origins = append(origins, o)
		}
	}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, nil)
	if c.logFormat == "json" {
		h = slog.NewJSONHandler(os.Stderr, nil)
	}
	logger := slog.New(h)
	if c.advertise == "" {
		c.advertise = c.addr
	}
	if err := os.MkdirAll(c.data, 0o700); err != nil {
		return err
	}
	token, err := secretFile(c.adminToken, filepath.Join(c.data, "admin-token"), 24)
	if err != nil {
		return err
	}
	tokenKey, err := secretFile(c.tokenKey, filepath.Join(c.data, "token-key"), 32)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	core, err := nodemetrics.NewCore(reg)
	if err != nil {
		return err
	}
	dbg, err := startDebug(c.debugAddr, isSet(fs, "debug-addr"), reg, logger)
	if err != nil {
		return err
	}
	defer dbg.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// The projector's effects go over the bus to the gateway and to push:
	// the delivery flow (adapters/delivery, docs/architecture.md).
	var brokers []string
	if c.kafka != "" {
		brokers = strings.Split(c.kafka, ",")
	}
	effects, err := bus.New(ctx, bus.Options{Brokers: brokers, Topic: c.busTopic, ReplicationFactor: c.rf, Registerer: reg, Logger: logger})
	if err != nil {
		return err
	}
	defer effects.Close()
	live := feed.New() // the console's live feed of logins, evictions and kicks
	onApplied := delivery.Publisher(effects, core.Observe, live.Publish)
	n, err := openNode(ctx, c, brokers, onApplied, core.TimeAppends)
	if err != nil {
		return err
	}
	defer n.Close()
	reg.MustRegister(nodemetrics.NewLag(n))

	// Accounts are events of the log; every process follows them on every
	// partition into its own store, with its own checkpoint.
	accountsDir := "accounts"
	if c.kafka != "" {
		accountsDir = "accounts-kafka"
	}
	creds, err := auth.Open(auth.Options{Dir: filepath.Join(c.data, accountsDir), Log: n.Log, TokenKey: []byte(tokenKey), Registerer: reg, Logger: logger})
	if err != nil {
		return err
	}
	defer creds.Close()

	// Operations whose stream another process owns go to that owner.
	sub, err := forward.New(n.Engine, n, forward.Options{Token: token, Logger: logger})
	if err != nil {
		return err
	}
	// The users of the per-process store that came before accounts were
	// events (DATA/auth) are registered in the log, once.
	go func() {
		n, err := auth.MigrateLegacy(ctx, filepath.Join(c.data, "auth"), sub.Submit, logger)
		if err != nil && ctx.Err() == nil {
			logger.Error("auth: moving the users of DATA/auth into the log failed; restart to retry", "err", err)
		} else if n > 0 {
			logger.Info("auth: the users of DATA/auth are now in the log", "users", n)
		}
	}()
	gopts := c.gw
	gopts.OriginPatterns = origins
	gopts.Auth, gopts.Engine, gopts.Store, gopts.Owner, gopts.Registerer, gopts.Logger = creds, sub, n.Store, n, reg, logger
	gopts.Process, gopts.ClientAddr = c.advertise, proxies.Addr
	gw, err := gateway.New(gopts)
	if err != nil {
		return err
	}
	flow := delivery.Options{Gateway: gw, Owner: n}
	if c.pushURL != "" {
		outbox, err := push.OpenOutbox(push.OutboxOptions{Dir: filepath.Join(c.data, "push"), Logger: logger})
		if err != nil {
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
		flow.Outbox = outbox
	}
	if err := delivery.Wire(effects, flow); err != nil {
		return err
	}
	busErr := make(chan error, 1)
	go func() { busErr <- effects.Run(ctx) }()
	select {
	case <-effects.Running():
	case err := <-busErr:
		return fmt.Errorf("serve: delivery bus: %w", err)
	}

	// The aggregates projection follows the whole log on its own.
	// Nothing restarts it, so it reads through a broker restart.
	agg, err := aggregates.Open(aggregates.Options{Dir: filepath.Join(c.data, "aggregates"), Partitions: n.Log.Partitions(), Logger: logger, ReadRetry: time.Second})
	if err != nil {
		return err
	}
	defer agg.Close()
	reg.MustRegister(agg.Collector())
	aggErr := make(chan error, 1)
	go func() { aggErr <- agg.Run(ctx, n.Log) }()

	// Reads about a user are answered by the owner of its partition.
	reads, err := forward.NewReads(forward.Options{Token: token, Logger: logger})
	if err != nil {
		return err
	}
	api, err := restapi.New(sub, n.Store, restapi.Options{
		AdminToken: token, Registry: reg, Logger: logger, Auth: creds, Presence: gw,
		Owner: n, Reads: reads, Process: c.advertise, ClientAddr: proxies.Addr,
		Ready:          n.Ready,
		AdminRoutes:    map[string]http.Handler{"GET /v1/apps/{app}/aggregates": agg.Handler()},
		AllowedOrigins: origins,
		Feed:           live,
	})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/ws", gw)
	mux.Handle(console.Prefix, console.Handler())
	mux.Handle("/", api)
	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		return err
	}
	// No Read/WriteTimeout: they would cut WebSocket connections, which the
	// gateway bounds itself (heartbeats, write timeouts).
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}
	logger.Info("mdsync serving", "addr", ln.Addr().String(), "data", c.data, "partitions", n.Log.Partitions(),
		"admin_token_file", filepath.Join(c.data, "admin-token"))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case err := <-busErr:
		// As for the aggregates below: on a signal the bus's Run returns
		// nil and may win this select over ctx.Done.
		if ctx.Err() == nil || err != nil {
			if err == nil {
				err = errors.New("stopped")
			}
			return fmt.Errorf("serve: delivery bus: %w", err)
		}
	case err := <-aggErr:
		// On a signal Run returns nil and may win this select over
		// ctx.Done: that is the shutdown, not a failure.
		if ctx.Err() == nil || err != nil {
			return fmt.Errorf("serve: aggregates projection: %w", err)
		}
	case <-ctx.Done():
	}
	// Graceful: stop taking requests and let in-flight operations get their
	// decisions; close device connections (they resume elsewhere or later
	// from their acknowledged position); then the projector, the store and
	// the log. Nothing acknowledged is lost: every decision was durable in
	// the log before it was answered.
	logger.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Error("shutdown", "err", err)
	}
	if err := gw.Shutdown(sctx); err != nil {
		logger.Error("gateway shutdown", "err", err)
	}
	return n.Close()
}

// Package restapi is mdsync's administrative HTTP API on top of a node:
// submit operations, read a user's devices, audit trail and the app's
// policy, plus health and Prometheus metrics. Every route but the health
// checks needs the admin credential (invariant 7: nothing is trusted from a
// caller that decides for others). The device-facing WebSocket gateway and
// the user-credential routes are separate adapters.
package restapi

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// MaxBodyBytes bounds a request body: one operation, encoded as JSON.
const MaxBodyBytes = 256 << 10

// Options configure the handler.
type Options struct {
	// AdminToken is the bearer token of the admin credential. Required.
	AdminToken string
	// Registry receives the API's metrics and serves /metrics. Required;
	// the global registry is never used.
	Registry *prometheus.Registry
	// Logger; default slog.Default().
	Logger *slog.Logger
	// SubmitTimeout bounds one operation end to end. Default 10s.
	SubmitTimeout time.Duration
}

// Submitter is what the API needs of the engine.
type Submitter interface {
	Submit(ctx context.Context, op *pb.Event) (*pb.Decision, error)
}

type api struct {
	opts    Options
	eng     Submitter
	store   *projections.Store
	submits *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

// New returns the API handler. It registers its metrics on opts.Registry.
func New(eng Submitter, store *projections.Store, opts Options) (http.Handler, error) {
	if opts.AdminToken == "" {
		return nil, errors.New("restapi: Options.AdminToken is required")
	}
	if opts.Registry == nil {
		return nil, errors.New("restapi: Options.Registry is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.SubmitTimeout == 0 {
		opts.SubmitTimeout = 10 * time.Second
	}
	a := &api{opts: opts, eng: eng, store: store,
		submits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdsync_operations_submitted_total",
			Help: "Operations submitted through the API, by kind and result code (0 = accepted).",
		}, []string{"kind", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mdsync_submit_duration_seconds",
			Help:    "Time from receiving an operation to its decision (append, fsync, apply).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"kind"}),
	}
	for _, c := range []prometheus.Collector{a.submits, a.latency} {
		if err := opts.Registry.Register(c); err != nil {
			return nil, err
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.Handle("GET /metrics", a.admin(promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{Registry: opts.Registry})))
	mux.Handle("POST /v1/operations", a.admin(http.HandlerFunc(a.submit)))
	mux.Handle("GET /v1/apps/{app}/users/{user}/devices", a.admin(http.HandlerFunc(a.devices)))
	mux.Handle("GET /v1/apps/{app}/users/{user}/audit", a.admin(http.HandlerFunc(a.audit)))
	mux.Handle("GET /v1/apps/{app}/policy", a.admin(http.HandlerFunc(a.policy)))
	return mux, nil
}

// errorBody is the wire shape of every error: a code clients can switch on.
type errorBody struct {
	Code    int32  `json:"code"`
	Message string `json:"message"`
}

func writeError(w http.ResponseWriter, status int, code engine.Code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(errorBody{Code: int32(code), Message: msg})
}

func (a *api) admin(next http.Handler) http.Handler {
	want := []byte("Bearer " + a.opts.AdminToken)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			writeError(w, http.StatusUnauthorized, engine.CodeUnauthenticated, "admin credential required")
			return
		}
		next.ServeHTTP(w, r)
	})
}

var pjson = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

func writeProto(w http.ResponseWriter, status int, m proto.Message) {
	b, err := pjson.Marshal(m)
	if err != nil {
		writeError(w, http.StatusInternalServerError, engine.CodeInternal, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// submit takes one operation in protobuf's JSON mapping of mdsync.v1.Event.
// The admin performs it: actor.admin is forced true, so the log records
// that the admin credential, not the user's device, acted.
func (a *api) submit(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, engine.CodeTooLarge, "body exceeds "+strconv.Itoa(MaxBodyBytes)+" bytes")
		return
	}
	op := &pb.Event{}
	if err := protojson.Unmarshal(body, op); err != nil {
		writeError(w, http.StatusBadRequest, engine.CodeInvalidArgument, "body is not an mdsync.v1.Event in JSON: "+err.Error())
		return
	}
	// Envelope fields are the engine's to assign.
	op.SchemaVersion, op.StreamKey, op.EventId, op.TimeUnixMs = 0, "", "", 0
	if op.Actor != nil {
		op.Actor.Admin = true
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.opts.SubmitTimeout)
	defer cancel()
	start := time.Now()
	d, err := a.eng.Submit(ctx, op)
	kind := engine.KindName(op.Kind)
	if _, known := engine.LookupKind(op.Kind); !known {
		kind = "unknown"
	}
	if err != nil {
		code := engine.CodeOf(err)
		a.submits.WithLabelValues(kind, strconv.Itoa(int(code))).Inc()
		status := http.StatusBadRequest
		switch code {
		case engine.CodeUnavailable, engine.CodeInternal:
			status = http.StatusServiceUnavailable
		case engine.CodeConflict:
			status = http.StatusConflict
		}
		if errors.Is(err, context.DeadlineExceeded) {
			status, code = http.StatusGatewayTimeout, engine.CodeUnavailable
		}
		writeError(w, status, code, err.Error())
		return
	}
	a.latency.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	a.submits.WithLabelValues(kind, strconv.Itoa(int(d.Code))).Inc()
	writeProto(w, http.StatusOK, d)
}

func validPath(w http.ResponseWriter, r *http.Request, names ...string) bool {
	for _, n := range names {
		if !engine.ValidID(r.PathValue(n)) {
			writeError(w, http.StatusBadRequest, engine.CodeInvalidArgument, n+" is not a valid id")
			return false
		}
	}
	return true
}

func (a *api) devices(w http.ResponseWriter, r *http.Request) {
	if !validPath(w, r, "app", "user") {
		return
	}
	ss, err := a.store.Devices(r.PathValue("app"), r.PathValue("user"))
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, engine.CodeUnavailable, err.Error())
		return
	}
	writeProto(w, http.StatusOK, &pb.UserSessions{Sessions: ss})
}

func (a *api) audit(w http.ResponseWriter, r *http.Request) {
	if !validPath(w, r, "app", "user") {
		return
	}
	ended, err := a.store.Audit(r.PathValue("app"), r.PathValue("user"))
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, engine.CodeUnavailable, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	for _, e := range ended {
		b, _ := pjson.Marshal(e)
		w.Write(append(b, '\n'))
	}
}

func (a *api) policy(w http.ResponseWriter, r *http.Request) {
	if !validPath(w, r, "app") {
		return
	}
	p, err := a.store.Policy(r.PathValue("app"))
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, engine.CodeUnavailable, err.Error())
		return
	}
	writeProto(w, http.StatusOK, p)
}

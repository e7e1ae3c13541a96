// Package restapi is mdsync's HTTP API on top of a node: operations, user
// credentials (register, password, tokens, removal), a user's devices (list,
// kick one, kick all), audit, policy, health, readiness and metrics. The
// routes and their credentials are in routeTable; docs/openapi.yaml
// describes the same routes and a test holds the two together.
//
// Who the caller is comes from the Authorization header only: the admin
// bearer token, a user's password (Basic), or a user token (Bearer mdt1.).
// What the caller may do is decided here by route (admin-only routes, routes
// a user may call on their own account) and then by the engine (invariant 7:
// nothing is trusted that a caller claims about others).
package restapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mdsync/mdsync/adapters/forward"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Body limits. An operation is bounded by the engine at 128 KiB encoded;
// its JSON form may be larger. Credential bodies are tiny.
const (
	MaxBodyBytes       = 256 << 10 // POST /v1/operations
	MaxPolicyBodyBytes = 64 << 10  // PUT policy
	MaxSmallBodyBytes  = 4 << 10   // users, password, tokens
)

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
	// Auth is the user credential store. Without it the user routes refuse
	// users' passwords and tokens (401) and the credential routes answer
	// 503/1009; admin routes keep working.
	Auth Credentials
	// Presence, optional, adds live connection facts to the device list.
	Presence Presence
	// Ready, optional, is the readiness check behind GET /readyz: nil
	// error means ready. Nil Ready means always ready.
	Ready func() error
	// AdminRoutes are other components' read routes ("GET /v1/...":
	// handler) served behind the admin credential, e.g. the aggregates
	// projection's. They are documented in docs/openapi.yaml too.
	AdminRoutes map[string]http.Handler
	// AllowedOrigins are the browser origins (scheme://host[:port], or "*")
	// that may call the user-facing routes cross-origin (CORS). Default
	// none: same origin only. Admin routes are never served cross-origin.
	AllowedOrigins []string
	// Feed, optional, serves GET /v1/apps/{app}/feed (admin, server-sent
	// events). Without it the route answers 503/1009.
	Feed Feed
	// MaxSubmitsInFlight bounds the operations this API has handed to the
	// engine and not yet answered, over all requests and routes (the
	// node-wide bound of REST writes, beside the gateway's). A request
	// beyond it is refused at once, before anything is appended, with 429,
	// code 1019 (engine.CodeBusy), a Retry-After header and retry_after_ms.
	// Default 1,024.
	MaxSubmitsInFlight int
	// BusyRetryAfter is the delay a 1019 refusal advertises: retry_after_ms
	// in the body, and Retry-After in whole seconds, rounded up. Default
	// 100ms.
	BusyRetryAfter time.Duration
	// Owner and Reads, set together (several processes on one log), make
	// every process answer a read about a user (its devices, the Easemob
	// alias, its audit) the same way: a process that does not own the
	// user's partition sends the read, once, to the owner (Reads), and
	// answers 503/1018 with Retry-After while no owner is known. Default
	// nil: this process answers every read itself.
	Owner Owner
	Reads ReadForwarder
	// Process is this process's name (its advertised host:port), given in
	// the device list as where a device connected here is served. Default "".
	Process string
	// ClientAddr is a request's client address, the rate-limit key of
	// password checks (adapters/clientaddr picks it behind trusted
	// proxies). Default: r.RemoteAddr.
	ClientAddr func(r *http.Request) string
}

// Owner tells where a user's partition is served (*node.Node implements
// it): here (local true), or the owner's host:port ("" while nobody is
// known). Cheap and safe for concurrent use.
type Owner interface {
	Owner(app, user string) (addr string, local bool)
}

// ReadForwarder sends an authenticated read to the process at addr and
// writes its answer to w, or 503/1009 with Retry-After when addr does not
// answer (*forward.Reads implements it). Safe for concurrent use.
type ReadForwarder interface {
	ForwardRead(w http.ResponseWriter, r *http.Request, addr string)
}

// UnavailableRetryAfter is the Retry-After of a 503/1009: the log, the
// projections or the credential store did not answer in time, which a
// retry (the same Idempotency-Key) may cure.
const UnavailableRetryAfter = time.Second

// Credentials is the port to the user credential store (adapters/auth.Store
// implements it). Accounts are events of the log: this API hashes a new
// password with HashPassword, submits the account operation through the
// engine, and waits with WaitApplied until the store has applied it, so the
// process that answered already checks the new credential. Errors carry
// engine codes: 1001 bad input, 1005 unknown user, 1013 bad credentials,
// 1014 rate limited, 1009 store unavailable.
type Credentials interface {
	// HashPassword checks a new password's length and returns its argon2id
	// hash (PHC form), the only thing of it that goes into the log.
	HashPassword(password string) (string, error)
	// WaitApplied returns once the store has applied the log position pos.
	WaitApplied(ctx context.Context, pos engine.Position) error
	// CheckPassword spends from the user's and the remote's rate limit.
	CheckPassword(app, user, password, remote string) error
	// IssueToken with ttl 0 uses the store's default lifetime.
	IssueToken(app, user string, ttl time.Duration) (token string, expires time.Time, err error)
	VerifyToken(token string) (app, user string, err error)
}

// Presence is the port to live connection state (the WebSocket gateway
// implements it): connected is true when the device is attached to this
// process now, and then lastSeen and remoteAddr are the live connection's.
// It must be cheap and must not block: it is called once per listed
// device. Unknown devices return zero values.
type Presence interface {
	DeviceInfo(app, user, loginID string) (lastSeen time.Time, remoteAddr string, connected bool)
}

// Submitter is what the API needs of the engine.
type Submitter interface {
	Submit(ctx context.Context, op *pb.Event) (*pb.Decision, error)
}

// DeviceReader is what the device routes read (GET .../devices and its
// Easemob alias .../resources). Devices returns the user's active
// sessions in login order, from committed state; safe for concurrent use.
// Presence returns what the log says of the connections of the user's
// devices, by login ID (devices without a record are absent).
type DeviceReader interface {
	Devices(app, user string) ([]*pb.Session, error)
	Presence(app, user string) (map[string]*pb.Presence, error)
}

// AuditReader is what the audit route reads: the user's ended sessions in
// log order, from committed state; safe for concurrent use.
type AuditReader interface {
	Audit(app, user string) ([]*pb.Ended, error)
}

// PolicyReader is what the policy route reads: the newest policy of app
// applied on any partition (the default policy when none was set); safe
// for concurrent use.
type PolicyReader interface {
	Policy(app string) (*pb.Policy, error)
}

// Reader is every read the API makes of the projections, one small
// interface per route group (*projections.Store implements it). After the
// store closes each returns an error, answered 503 (1009).
type Reader interface {
	DeviceReader
	AuditReader
	PolicyReader
}

var _ Reader = (*projections.Store)(nil)

type api struct {
	opts      Options
	eng       Submitter
	sessions  DeviceReader
	audits    AuditReader
	policies  PolicyReader
	metrics   http.Handler
	submits   *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	authFails *prometheus.CounterVec
	busy      prometheus.Counter
	inflight  atomic.Int64 // submits handed to the engine, not yet answered
	// access of every served pattern ("METHOD /path"), for preflights.
	access map[string]access
}

// access is who may call a route.
type access int

const (
	public       access = iota + 1
	adminOnly           // the admin bearer token
	adminOrPass         // admin, or Basic with the path user's password
	adminOrOwner        // admin, the path user's password, or the path user's token
)

// principal is the authenticated caller: the admin, or the path's user.
type principal struct {
	admin bool
	user  string
}

type route struct {
	method, path string
	access       access
	handle       func(a *api, w http.ResponseWriter, r *http.Request, p principal)
	// alias: an Easemob-shaped path (easemob.go), served beside /v1/.
	alias bool
	// userRead: a read about the path's user, answered by the owner of the
	// user's partition (Options.Owner).
	userRead bool
}

// routeTable is every route the API serves. The OpenAPI test checks each
// one against docs/openapi.yaml.
var routeTable = []route{
	{"GET", "/healthz", public, (*api).healthz, false, false},
	{"GET", "/readyz", public, (*api).readyz, false, false},
	{"GET", "/metrics", adminOnly, (*api).serveMetrics, false, false},
	{"POST", "/v1/operations", adminOnly, (*api).submitOperation, false, false},
	{"POST", forward.Path, adminOnly, (*api).internalOperation, false, false},
	{"POST", "/v1/apps/{app}/users", adminOnly, (*api).register, false, false},
	{"DELETE", "/v1/apps/{app}/users/{user}", adminOnly, (*api).removeUser, false, false},
	{"PUT", "/v1/apps/{app}/users/{user}/password", adminOrPass, (*api).setPassword, false, false},
	{"POST", "/v1/apps/{app}/users/{user}/tokens", adminOrPass, (*api).issueToken, false, false},
	{"POST", "/v1/apps/{app}/users/{user}/tokens/revoke", adminOrPass, (*api).revokeTokens, false, false},
	{"GET", "/v1/apps/{app}/users/{user}/devices", adminOrOwner, (*api).devices, false, true},
	{"DELETE", "/v1/apps/{app}/users/{user}/devices", adminOrOwner, (*api).kickAll, false, false},
	{"DELETE", "/v1/apps/{app}/users/{user}/devices/{login_id}", adminOrOwner, (*api).kickDevice, false, false},
	{"GET", "/v1/apps/{app}/users/{user}/audit", adminOnly, (*api).audit, false, true},
	{"GET", "/v1/apps/{app}/policy", adminOnly, (*api).getPolicy, false, false},
	{"PUT", "/v1/apps/{app}/policy", adminOnly, (*api).putPolicy, false, false},
	{"GET", "/v1/apps/{app}/feed", adminOnly, (*api).feed, false, false},
	{"GET", "/{org}/{app}/users/{user}/resources", adminOrOwner, (*api).emResources, true, true},
	{"GET", "/{org}/{app}/users/{user}/disconnect", adminOrOwner, (*api).emDisconnectAll, true, false},
	{"DELETE", "/{org}/{app}/users/{user}/disconnect/{resource}", adminOrOwner, (*api).emDisconnect, true, false},
}

// New returns the API handler over eng (writes) and store (reads). It
// registers its metrics on opts.Registry.
func New(eng Submitter, store Reader, opts Options) (http.Handler, error) {
	if store == nil {
		return nil, errors.New("restapi: a Reader is required")
	}
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
	if opts.MaxSubmitsInFlight == 0 {
		opts.MaxSubmitsInFlight = 1024
	}
	if opts.BusyRetryAfter == 0 {
		opts.BusyRetryAfter = 100 * time.Millisecond
	}
	if (opts.Owner == nil) != (opts.Reads == nil) {
		return nil, errors.New("restapi: Options.Owner and Reads are set together")
	}
	if opts.ClientAddr == nil {
		opts.ClientAddr = func(r *http.Request) string { return r.RemoteAddr }
	}
	if opts.MaxSubmitsInFlight < 1 || opts.BusyRetryAfter < time.Millisecond {
		return nil, errors.New("restapi: Options.MaxSubmitsInFlight must be >= 1 and BusyRetryAfter >= 1ms")
	}
	a := &api{opts: opts, eng: eng, sessions: store, audits: store, policies: store,
		metrics: promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{Registry: opts.Registry}),
		submits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdsync_operations_submitted_total",
			Help: "Operations submitted through the API, by kind and result code (0 = accepted).",
		}, []string{"kind", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mdsync_submit_duration_seconds",
			Help:    "Time from receiving an operation to its decision (append, fsync, apply).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"kind"}),
		authFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdsync_rest_auth_failures_total",
			Help: "Requests refused for their credentials, by result: unauthenticated (401), forbidden (403), rate_limited (429).",
		}, []string{"result"}),
		busy: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mdsync_rest_submits_busy_total",
			Help: "Operations refused with 1019 (429) because MaxSubmitsInFlight were in flight.",
		}),
	}
	for _, c := range []prometheus.Collector{a.submits, a.latency, a.authFails, a.busy} {
		if err := opts.Registry.Register(c); err != nil {
			return nil, err
		}
	}
	// The Easemob-shaped aliases have a wildcard first segment, which
	// would conflict with /v1/ routes in one mux: they get their own, and
	// only paths outside /v1/ and the three root routes reach it.
	mux, aliases := http.NewServeMux(), http.NewServeMux()
	a.access = map[string]access{}
	for _, rt := range routeTable {
		m := mux
		if rt.alias {
			m = aliases
		}
		m.Handle(rt.method+" "+rt.path, a.guard(rt))
		a.access[rt.method+" "+rt.path] = rt.access
	}
	for pattern, h := range opts.AdminRoutes {
		method, path, ok := strings.Cut(pattern, " ")
		if !ok {
			return nil, fmt.Errorf("restapi: admin route %q is not \"METHOD /path\"", pattern)
		}
		mux.Handle(pattern, a.guard(route{method, path, adminOnly, func(_ *api, w http.ResponseWriter, r *http.Request, _ principal) { h.ServeHTTP(w, r) }, false, false}))
		a.access[pattern] = adminOnly
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m := mux
		switch p := r.URL.Path; {
		case strings.HasPrefix(p, "/v1/"), p == "/healthz", p == "/readyz", p == "/metrics":
		default:
			m = aliases
		}
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			a.preflight(w, r, m)
			return
		}
		m.ServeHTTP(w, r)
	}), nil
}

// errorBody is the wire shape of every error: a code clients can switch on.
type errorBody struct {
	Code         int32  `json:"code"`
	Message      string `json:"message"`
	RetryAfterMs int64  `json:"retry_after_ms,omitempty"`
}

// writeError writes an error body. A 503/1009 carries Retry-After: the
// failure was one of time (a store or the log not answering), so a retry
// may succeed; 1019 goes through writeBusy.
func writeError(w http.ResponseWriter, status int, code engine.Code, msg string) {
	if status == http.StatusServiceUnavailable && (code == engine.CodeUnavailable || code == engine.CodeNotOwner) {
		w.Header().Set("Retry-After", retryAfterSeconds(UnavailableRetryAfter))
	}
	writeJSON(w, status, errorBody{Code: int32(code), Message: msg})
}

// writeBusy refuses with 429/1019, Retry-After and retry_after_ms.
func writeBusy(w http.ResponseWriter, after time.Duration, msg string) {
	w.Header().Set("Retry-After", retryAfterSeconds(after))
	writeJSON(w, http.StatusTooManyRequests, errorBody{Code: int32(engine.CodeBusy), Message: msg, RetryAfterMs: after.Milliseconds()})
}

// retryAfterSeconds is d in whole seconds for the Retry-After header,
// rounded up, at least 1.
func retryAfterSeconds(d time.Duration) string {
	return strconv.FormatInt(max(1, int64((d+time.Second-1)/time.Second)), 10)
}

// errBusy is the refusal of a submit past MaxSubmitsInFlight.
var errBusy = engine.Errorf(engine.CodeBusy, "too many operations in flight on this node; retry after retry_after_ms")

// writeCoded writes err with the status its code maps to.
func (a *api) writeCoded(w http.ResponseWriter, err error) {
	code := engine.CodeOf(err)
	msg := err.Error()
	after := a.opts.BusyRetryAfter
	var e *engine.Error
	if errors.As(err, &e) {
		msg = e.Message
		if e.RetryAfter > 0 {
			after = e.RetryAfter // the engine's, derived from its drain
		}
	}
	if code == engine.CodeBusy {
		writeBusy(w, after, msg)
		return
	}
	writeError(w, statusFor(code), code, msg)
}

// statusFor maps a code to its HTTP status: one table for every route, so
// a client may switch on either.
func statusFor(code engine.Code) int {
	switch code {
	case engine.CodeOK:
		return http.StatusOK
	case engine.CodeUnavailable, engine.CodeInternal, engine.CodeNotOwner:
		// A 1018 reaches a REST client only when no owner could take the
		// operation (none known yet, or it moved): a retry cures it.
		return http.StatusServiceUnavailable
	case engine.CodeConflict, engine.CodeTooManyDevices:
		return http.StatusConflict
	case engine.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case engine.CodeNotFound:
		return http.StatusNotFound
	case engine.CodeForbidden:
		return http.StatusForbidden
	case engine.CodeUnauthenticated:
		return http.StatusUnauthorized
	case engine.CodeRateLimited, engine.CodeBusy:
		return http.StatusTooManyRequests
	}
	return http.StatusBadRequest
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
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

func (a *api) healthz(w http.ResponseWriter, r *http.Request, _ principal) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write([]byte("ok\n"))
}

func (a *api) readyz(w http.ResponseWriter, r *http.Request, _ principal) {
	if a.opts.Ready != nil {
		if err := a.opts.Ready(); err != nil {
			writeError(w, http.StatusServiceUnavailable, engine.CodeUnavailable, "not ready: "+err.Error())
			return
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write([]byte("ready\n"))
}

func (a *api) serveMetrics(w http.ResponseWriter, r *http.Request, _ principal) {
	a.metrics.ServeHTTP(w, r)
}

// submit performs op and counts it; every route that writes goes here.
// Past MaxSubmitsInFlight it refuses with 1019 before anything is
// appended (invariant 10).
func (a *api) submit(ctx context.Context, op *pb.Event) (*pb.Decision, error) {
	kind := engine.KindName(op.Kind)
	if _, known := engine.LookupKind(op.Kind); !known {
		kind = "unknown"
	}
	if a.inflight.Add(1) > int64(a.opts.MaxSubmitsInFlight) {
		a.inflight.Add(-1)
		a.busy.Inc()
		a.submits.WithLabelValues(kind, strconv.Itoa(int(engine.CodeBusy))).Inc()
		return nil, errBusy
	}
	defer a.inflight.Add(-1)
	ctx, cancel := context.WithTimeout(ctx, a.opts.SubmitTimeout)
	defer cancel()
	start := time.Now()
	d, err := a.eng.Submit(ctx, op)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = engine.Errorf(engine.CodeUnavailable, "no decision within %v: %v", a.opts.SubmitTimeout, err)
		}
		a.submits.WithLabelValues(kind, strconv.Itoa(int(engine.CodeOf(err)))).Inc()
		return nil, err
	}
	a.latency.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	a.submits.WithLabelValues(kind, strconv.Itoa(int(d.Code))).Inc()
	return d, nil
}

// submitOperation takes one operation in protobuf's JSON mapping of
// mdsync.v1.Event. The admin performs it: actor.admin is forced true, so the
// log records that the admin credential, not the user's device, acted. A
// refused operation is still a 200 with the decision's code: the decision is
// the answer.
func (a *api) submitOperation(w http.ResponseWriter, r *http.Request, _ principal) {
	body, ok := readBody(w, r, MaxBodyBytes)
	if !ok {
		return
	}
	op, err := decodeOperation(body)
	if err != nil {
		a.writeCoded(w, err)
		return
	}
	if ki, _ := engine.LookupKind(op.Kind); ki.Category == engine.CatPresence {
		writeError(w, http.StatusForbidden, engine.CodeForbidden, engine.KindName(op.Kind)+" is recorded by the gateway and cannot be submitted")
		return
	}
	d, err := a.submit(r.Context(), op)
	if err != nil {
		a.writeCoded(w, err)
		return
	}
	writeProto(w, http.StatusOK, d)
}

// internalOperation takes an operation another process of the deployment
// forwarded here because this process decides its stream (adapters/forward).
// Unlike POST /v1/operations the actor is kept as given — the device's user
// and login id, admin as the sender set it: only the admin credential may
// call this route, and only the deployment's processes hold it. The
// operation is never forwarded again (one hop): if this process does not
// own the stream either, the answer is 1018.
func (a *api) internalOperation(w http.ResponseWriter, r *http.Request, _ principal) {
	body, ok := readBody(w, r, MaxBodyBytes)
	if !ok {
		return
	}
	op, err := decodeEvent(body)
	if err != nil {
		a.writeCoded(w, err)
		return
	}
	ctx := forward.Mark(r.Context())
	if r.Header.Get(forward.ActorCheckedHeader) == "1" {
		ctx = engine.ActorChecked(ctx)
	}
	d, err := a.submit(ctx, op)
	if err != nil {
		a.writeCoded(w, err)
		return
	}
	writeProto(w, http.StatusOK, d)
}

// decide submits an operation a route built and answers with its decision;
// unlike POST /v1/operations a refusal is an error status (1005 → 404...).
func (a *api) decide(w http.ResponseWriter, r *http.Request, op *pb.Event) (*pb.Decision, bool) {
	d, err := a.submit(r.Context(), op)
	if err != nil {
		a.writeCoded(w, err)
		return nil, false
	}
	if d.Code != 0 {
		writeError(w, statusFor(engine.Code(d.Code)), engine.Code(d.Code), d.Message)
		return nil, false
	}
	return d, true
}

// opID is the client op id of a route's operation: the Idempotency-Key
// header when given, so a retried call appends nothing twice, else random.
func opID(w http.ResponseWriter, r *http.Request) (string, bool) {
	if k := r.Header.Get("Idempotency-Key"); k != "" {
		if !engine.ValidID(k) {
			writeError(w, http.StatusBadRequest, engine.CodeInvalidArgument, "Idempotency-Key must be 1..64 letters, digits or _-.@")
			return "", false
		}
		return k, true
	}
	var b [12]byte
	rand.Read(b[:])
	return "rest." + hex.EncodeToString(b[:]), true
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

func (a *api) audit(w http.ResponseWriter, r *http.Request, _ principal) {
	if !validPath(w, r, "app", "user") {
		return
	}
	ended, err := a.audits.Audit(r.PathValue("app"), r.PathValue("user"))
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

func (a *api) getPolicy(w http.ResponseWriter, r *http.Request, _ principal) {
	if !validPath(w, r, "app") {
		return
	}
	p, err := a.policies.Policy(r.PathValue("app"))
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, engine.CodeUnavailable, err.Error())
		return
	}
	writeProto(w, http.StatusOK, p)
}

// putPolicy installs a policy: the body is protobuf's JSON mapping of
// mdsync.v1.PolicySet; version and partition fields are the engine's.
func (a *api) putPolicy(w http.ResponseWriter, r *http.Request, _ principal) {
	if !validPath(w, r, "app") {
		return
	}
	body, ok := readBody(w, r, MaxPolicyBodyBytes)
	if !ok {
		return
	}
	ps, err := decodePolicy(body)
	if err != nil {
		a.writeCoded(w, err)
		return
	}
	id, ok := opID(w, r)
	if !ok {
		return
	}
	op := &pb.Event{App: r.PathValue("app"), ClientOpId: id, Kind: pb.Kind_KIND_POLICY_SET,
		Actor: &pb.Actor{User: "admin", Admin: true}, Payload: &pb.Event_PolicySet{PolicySet: ps}}
	if d, ok := a.decide(w, r, op); ok {
		writeProto(w, http.StatusOK, d)
	}
}

package restapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/mdsync/mdsync/adapters/auth"
	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections/aggregates"
	"github.com/prometheus/client_golang/prometheus"
)

const adminToken = "secret-admin-token"

// --- the OpenAPI document, checked on every request the tests make ---

var (
	docOnce   sync.Once
	doc       *openapi3.T
	docRouter routers.Router
	docErr    error
)

func openAPI(t *testing.T) (*openapi3.T, routers.Router) {
	t.Helper()
	docOnce.Do(func() {
		openapi3filter.RegisterBodyDecoder("application/x-ndjson", func(r io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
			b, err := io.ReadAll(r)
			return string(b), err
		})
		doc, docErr = openapi3.NewLoader().LoadFromFile("../../docs/openapi.yaml")
		if docErr != nil {
			return
		}
		if docErr = doc.Validate(context.Background()); docErr != nil {
			return
		}
		docRouter, docErr = legacy.NewRouter(doc)
	})
	if docErr != nil {
		t.Fatalf("docs/openapi.yaml: %v", docErr)
	}
	return doc, docRouter
}

// authFunc checks that a request carries the credential kind a security
// scheme of the document names.
func authFunc(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	h := in.RequestValidationInput.Request.Header.Get("Authorization")
	ok := false
	switch in.SecuritySchemeName {
	case "adminBearer":
		ok = strings.HasPrefix(h, "Bearer ") && !strings.HasPrefix(h, "Bearer "+userTokenPrefix)
	case "userBasic":
		ok = strings.HasPrefix(h, "Basic ")
	case "userToken":
		ok = strings.HasPrefix(h, "Bearer "+userTokenPrefix)
	}
	if !ok {
		return errors.New("credential does not match scheme " + in.SecuritySchemeName)
	}
	return nil
}

func TestOpenAPIDocumentCoversRoutes(t *testing.T) {
	d, _ := openAPI(t)
	served := map[string]bool{}
	for _, pattern := range harnessAdminRoutes {
		served[pattern] = true
	}
	for _, rt := range routeTable {
		served[rt.method+" "+rt.path] = true
		item := d.Paths.Value(rt.path)
		if item == nil || item.GetOperation(rt.method) == nil {
			t.Errorf("route %s %s is not in docs/openapi.yaml", rt.method, rt.path)
		}
	}
	for path, item := range d.Paths.Map() {
		for method := range item.Operations() {
			if !served[method+" "+path] {
				t.Errorf("docs/openapi.yaml documents %s %s, which is not served", method, path)
			}
		}
	}
}

// --- harness: a real node, a real credential store, the API over HTTP ---

type fakePresence struct{}

func (fakePresence) DeviceInfo(app, user, loginID string) (time.Time, string, bool) {
	if loginID == "online" {
		return time.UnixMilli(1_700_000_123_456), "10.1.2.3:4567", true
	}
	return time.Time{}, "", false
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// harnessAdminRoutes are the routes serve mounts through
// Options.AdminRoutes; the harness mounts them the same way.
var harnessAdminRoutes = []string{"GET /v1/apps/{app}/aggregates"}

type harness struct {
	t     *testing.T
	srv   *httptest.Server
	node  *node.Node
	agg   *aggregates.Aggregates
	auth  *auth.Store
	clk   *clock
	ready atomic.Value // error text; "" = ready
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	return newHarnessWith(t, nil, nil)
}

// newHarnessWith is newHarness with the engine wrapped by wrap and the
// options changed by opt (either may be nil).
func newHarnessWith(t *testing.T, wrap func(Submitter) Submitter, opt func(*Options)) *harness {
	t.Helper()
	openAPI(t)
	n, err := node.New(context.Background(), node.Options{Dir: t.TempDir(), Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	h := &harness{t: t, clk: &clock{t: time.Now()}, node: n}
	h.ready.Store("")
	if h.agg, err = aggregates.Open(aggregates.Options{Dir: t.TempDir(), Partitions: n.Log.Partitions()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.agg.Close() })
	h.auth, err = auth.Open(auth.Options{Dir: t.TempDir(), Log: n.Log, TokenKey: []byte("0123456789abcdef0123456789abcdef"),
		Now: h.clk.Now, Argon2: auth.Argon2Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32},
		// Every test request comes from 127.0.0.1: the per-IP limit is
		// the auth package's to test; here the per-user limit is.
		PerRemote: auth.RateLimit{Burst: 100_000, Every: time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.auth.Close() })
	var eng Submitter = n.Engine
	if wrap != nil {
		eng = wrap(eng)
	}
	o := Options{AdminToken: adminToken, Registry: prometheus.NewRegistry(),
		Auth: h.auth, Presence: fakePresence{},
		AdminRoutes: map[string]http.Handler{harnessAdminRoutes[0]: h.agg.Handler()},
		Ready: func() error {
			if s := h.ready.Load().(string); s != "" {
				return errors.New(s)
			}
			return nil
		}}
	if opt != nil {
		opt(&o)
	}
	api, err := New(eng, n.Store, o)
	if err != nil {
		t.Fatal(err)
	}
	h.srv = httptest.NewServer(api)
	t.Cleanup(h.srv.Close)
	return h
}

const admin = "Bearer " + adminToken

func basic(user, pw string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))
}

func bearer(tok string) string { return "Bearer " + tok }

// raw makes one request and validates it and its response against the
// OpenAPI document: the route must be documented, every response must match
// its documented status and schema, and every request the server accepted
// (2xx) must match the documented request.
func (h *harness) raw(method, path, cred, body string, hdr ...string) (int, []byte) {
	t := h.t
	t.Helper()
	_, router := openAPI(t)
	req, _ := http.NewRequest(method, h.srv.URL+path, strings.NewReader(body))
	if cred != "" {
		req.Header.Set("Authorization", cred)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()

	vreq, _ := http.NewRequest(method, h.srv.URL+path, bytes.NewReader([]byte(body)))
	vreq.Header = req.Header.Clone()
	route, params, err := router.FindRoute(vreq)
	if err != nil {
		t.Fatalf("%s %s is not in docs/openapi.yaml: %v", method, path, err)
	}
	opts := &openapi3filter.Options{AuthenticationFunc: authFunc, IncludeResponseStatus: true}
	in := &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route, Options: opts}
	if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil && resp.StatusCode < 300 {
		t.Fatalf("%s %s was accepted (%d) but does not match the document: %v", method, path, resp.StatusCode, err)
	}
	rin := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header, Options: opts}
	rin.SetBodyBytes(out)
	if err := openapi3filter.ValidateResponse(context.Background(), rin); err != nil {
		t.Fatalf("%s %s: response %d %s does not match the document: %v", method, path, resp.StatusCode, out, err)
	}
	return resp.StatusCode, out
}

func (h *harness) do(method, path, cred, body string, hdr ...string) (int, map[string]any) {
	h.t.Helper()
	code, out := h.raw(method, path, cred, body, hdr...)
	var m map[string]any
	json.Unmarshal(out, &m)
	return code, m
}

// want checks a status and the body's code (0 for a decision).
func (h *harness) want(status int, code float64, gotStatus int, m map[string]any, what string) {
	h.t.Helper()
	if gotStatus != status || m["code"] != code {
		h.t.Fatalf("%s: got %d %v, want %d with code %v", what, gotStatus, m, status, code)
	}
}

func (h *harness) login(user, loginID string, platform int) {
	h.t.Helper()
	body := fmt.Sprintf(`{"app":"demo","client_op_id":"login-%s-%s","kind":"KIND_LOGIN","actor":{"user":%q},"login":{"platform":%d,"login_id":%q,"device_name":"n-%s"}}`,
		user, loginID, user, platform, loginID, loginID)
	code, m := h.do("POST", "/v1/operations", admin, body)
	h.want(200, 0, code, m, "login "+loginID)
}

func (h *harness) register(user, pw string) {
	h.t.Helper()
	code, m := h.do("POST", "/v1/apps/demo/users", admin, fmt.Sprintf(`{"user":%q,"password":%q}`, user, pw))
	if code != 201 || m["user"] != user {
		h.t.Fatalf("register %s: %d %v", user, code, m)
	}
}

func (h *harness) token(user, cred string, ttl int) string {
	h.t.Helper()
	body := ""
	if ttl > 0 {
		body = fmt.Sprintf(`{"ttl_seconds":%d}`, ttl)
	}
	code, m := h.do("POST", "/v1/apps/demo/users/"+user+"/tokens", cred, body)
	tok, _ := m["token"].(string)
	if code != 200 || !strings.HasPrefix(tok, "mdt1.") {
		h.t.Fatalf("token for %s: %d %v", user, code, m)
	}
	return tok
}

// endedCodes returns the ended sessions of a decision as loginID → code.
func endedCodes(m map[string]any) map[string]float64 {
	out := map[string]float64{}
	ended, _ := m["ended"].([]any)
	for _, e := range ended {
		em := e.(map[string]any)
		out[em["session"].(map[string]any)["login_id"].(string)] = em["code"].(float64)
	}
	return out
}

func (h *harness) deviceIDs(user, cred string) []string {
	h.t.Helper()
	code, m := h.do("GET", "/v1/apps/demo/users/"+user+"/devices", cred, "")
	if code != 200 {
		h.t.Fatalf("devices of %s: %d %v", user, code, m)
	}
	var ids []string
	for _, d := range m["devices"].([]any) {
		ids = append(ids, d.(map[string]any)["login_id"].(string))
	}
	return ids
}

func (h *harness) metrics() string {
	h.t.Helper()
	code, out := h.raw("GET", "/metrics", admin, "")
	if code != 200 {
		h.t.Fatalf("metrics: %d", code)
	}
	return string(out)
}

// --- tests ---

func TestAdminRoutes(t *testing.T) {
	h := newHarness(t)
	login := func(op, id string, platform int) string {
		return fmt.Sprintf(`{"app":"demo","client_op_id":%q,"kind":"KIND_LOGIN","actor":{"user":"alice"},"login":{"platform":%d,"login_id":%q,"device_name":"n-%s"}}`, op, platform, id, id)
	}
	code, m := h.do("POST", "/v1/operations", "", login("o1", "d1", 1))
	h.want(401, 1013, code, m, "no credential")
	code, m = h.do("POST", "/v1/operations", "Bearer wrong", login("o1", "d1", 1))
	h.want(401, 1013, code, m, "wrong credential")
	code, m = h.do("POST", "/v1/operations", admin, strings.Repeat("x", MaxBodyBytes+1))
	h.want(413, 1004, code, m, "oversized body")
	code, m = h.do("POST", "/v1/operations", admin, `{"app":`)
	h.want(400, 1001, code, m, "malformed body")
	code, m = h.do("POST", "/v1/operations", admin, login("o0", "d0", 0))
	h.want(400, 1001, code, m, "platform 0")
	for _, id := range []string{"d1", "d2", "d3", "d4"} {
		code, m := h.do("POST", "/v1/operations", admin, login("o"+id, id, 1))
		h.want(200, 0, code, m, "login "+id)
	}
	code, m = h.do("POST", "/v1/operations", admin, login("o5", "d5", 1))
	if c := endedCodes(m); code != 200 || len(c) != 1 || c["d1"] != 206 {
		t.Fatalf("fifth login: %d %v", code, m)
	}
	if ids := h.deviceIDs("alice", admin); strings.Join(ids, ",") != "d2,d3,d4,d5" {
		t.Fatalf("devices: %v", ids)
	}
	code, m = h.do("GET", "/v1/apps/demo/users/al!ice/devices", admin, "")
	h.want(400, 1001, code, m, "bad user id")
	code, m = h.do("GET", "/v1/apps/demo/policy", admin, "")
	if code != 200 || m["default_limit"] != float64(4) {
		t.Fatalf("policy: %d %v", code, m)
	}
	code, out := h.raw("GET", "/v1/apps/demo/users/alice/audit", admin, "")
	if code != 200 || strings.Count(string(out), "\n") != 1 || !strings.Contains(string(out), `"code":206`) {
		t.Fatalf("audit: %d %s", code, out)
	}
	code, _ = h.raw("GET", "/healthz", "", "")
	if code != 200 {
		t.Fatalf("healthz: %d", code)
	}
	met := h.metrics()
	for _, want := range []string{`mdsync_operations_submitted_total{code="0",kind="login"} 5`, `mdsync_operations_submitted_total{code="1001",kind="login"} 1`, "mdsync_submit_duration_seconds_bucket"} {
		if !strings.Contains(met, want) {
			t.Fatalf("metrics lack %q:\n%s", want, met)
		}
	}
	code, _ = h.raw("GET", "/metrics", "", "")
	if code != 401 {
		t.Fatalf("metrics without credential: %d", code)
	}
}

func TestReadyz(t *testing.T) {
	h := newHarness(t)
	if code, _ := h.raw("GET", "/readyz", "", ""); code != 200 {
		t.Fatalf("ready: %d", code)
	}
	h.ready.Store("log is catching up")
	code, m := h.do("GET", "/readyz", "", "")
	h.want(503, 1009, code, m, "not ready")
	if code, _ := h.raw("GET", "/healthz", "", ""); code != 200 {
		t.Fatalf("healthz while not ready: %d", code)
	}
}

func TestRegisterAndDevices(t *testing.T) {
	h := newHarness(t)
	h.register("alice", "password1")
	code, m := h.do("POST", "/v1/apps/demo/users", admin, `{"user":"alice","password":"password2"}`)
	h.want(409, 1006, code, m, "register twice")
	code, m = h.do("POST", "/v1/apps/demo/users", admin, `{"user":"bob","password":"short"}`)
	h.want(400, 1001, code, m, "short password")
	code, m = h.do("POST", "/v1/apps/demo/users", admin, `{"user":"bob"}`)
	h.want(400, 1003, code, m, "missing password")
	code, m = h.do("POST", "/v1/apps/demo/users", admin, `{"user":"bob","password":"password1","admin":true}`)
	h.want(400, 1001, code, m, "unknown field")

	h.login("alice", "online", 1)
	h.login("alice", "offline", 2)
	tok := h.token("alice", basic("alice", "password1"), 60)
	for _, cred := range []string{admin, basic("alice", "password1"), bearer(tok)} {
		code, m := h.do("GET", "/v1/apps/demo/users/alice/devices", cred, "")
		devs, _ := m["devices"].([]any)
		if code != 200 || len(devs) != 2 {
			t.Fatalf("devices with %.12s: %d %v", cred, code, m)
		}
		on, off := devs[0].(map[string]any), devs[1].(map[string]any)
		if on["login_id"] != "online" || on["connected"] != true || on["remote_addr"] != "10.1.2.3:4567" ||
			on["last_seen_unix_ms"] != float64(1_700_000_123_456) || on["platform"] != float64(1) || on["device_name"] != "n-online" {
			t.Fatalf("online device: %v", on)
		}
		if off["connected"] != false || off["last_seen_unix_ms"] != float64(0) || off["login_time_unix_ms"].(float64) <= 0 {
			t.Fatalf("offline device: %v", off)
		}
	}
	// An admin-issued token with the default lifetime works too.
	h.token("alice", admin, 0)
	code, m = h.do("POST", "/v1/apps/demo/users/alice/tokens", admin, `{"ttl_seconds":2592001}`)
	h.want(400, 1001, code, m, "ttl over 30 days")
	code, m = h.do("POST", "/v1/apps/demo/users/nobody/tokens", admin, "")
	h.want(404, 1005, code, m, "token for unknown user")
}

// kickDevice and kickAllDevices need no login: the user's password or
// token suffices, and the kicked devices end with 217.
func TestKick(t *testing.T) {
	h := newHarness(t)
	h.register("alice", "password1")
	for _, id := range []string{"a1", "a2", "a3"} {
		h.login("alice", id, 1)
	}
	code, m := h.do("DELETE", "/v1/apps/demo/users/alice/devices/a2", basic("alice", "password1"), "")
	if c := endedCodes(m); code != 200 || m["code"] != float64(0) || len(c) != 1 || c["a2"] != 217 {
		t.Fatalf("kick a2: %d %v", code, m)
	}
	if by := m["ended"].([]any)[0].(map[string]any)["by_actor"].(map[string]any); by["user"] != "alice" || by["admin"] == true {
		t.Fatalf("kick by_actor: %v", by)
	}
	code, m = h.do("DELETE", "/v1/apps/demo/users/alice/devices/a2", basic("alice", "password1"), "")
	h.want(404, 1005, code, m, "kick a device not logged in")
	if ids := h.deviceIDs("alice", admin); strings.Join(ids, ",") != "a1,a3" {
		t.Fatalf("after kick: %v", ids)
	}
	tok := h.token("alice", basic("alice", "password1"), 0)
	code, m = h.do("DELETE", "/v1/apps/demo/users/alice/devices", bearer(tok), "")
	if c := endedCodes(m); code != 200 || len(c) != 2 || c["a1"] != 217 || c["a3"] != 217 {
		t.Fatalf("kick all: %d %v", code, m)
	}
	if ids := h.deviceIDs("alice", bearer(tok)); len(ids) != 0 {
		t.Fatalf("after kick all: %v", ids)
	}
	// The admin may kick too, and an Idempotency-Key makes a retry a no-op.
	h.login("alice", "a4", 1)
	code, m = h.do("DELETE", "/v1/apps/demo/users/alice/devices/a4", admin, "", "Idempotency-Key", "kick-a4-once")
	if c := endedCodes(m); code != 200 || c["a4"] != 217 {
		t.Fatalf("admin kick: %d %v", code, m)
	}
	code, again := h.do("DELETE", "/v1/apps/demo/users/alice/devices/a4", admin, "", "Idempotency-Key", "kick-a4-once")
	if code != 200 || again["event_id"] != m["event_id"] || again["offset"] != m["offset"] {
		t.Fatalf("retried kick: %d %v, first %v", code, again, m)
	}
	code, m = h.do("DELETE", "/v1/apps/demo/users/alice/devices/a4", admin, "", "Idempotency-Key", "bad key!")
	h.want(400, 1001, code, m, "bad Idempotency-Key")
}

func TestPasswordChange(t *testing.T) {
	h := newHarness(t)
	h.register("alice", "password1")
	h.login("alice", "p1", 1)
	h.login("alice", "p2", 2)
	tok := h.token("alice", basic("alice", "password1"), 0)
	code, m := h.do("PUT", "/v1/apps/demo/users/alice/password", basic("alice", "password1"), `{"new_password":"password2"}`,
		"Idempotency-Key", "pw-change-1")
	if c := endedCodes(m); code != 200 || len(c) != 2 || c["p1"] != 216 || c["p2"] != 216 {
		t.Fatalf("password change: %d %v", code, m)
	}
	code, m2 := h.do("GET", "/v1/apps/demo/users/alice/devices", bearer(tok), "")
	h.want(401, 1013, code, m2, "token issued before the change")
	code, m2 = h.do("GET", "/v1/apps/demo/users/alice/devices", basic("alice", "password1"), "")
	h.want(401, 1013, code, m2, "old password")
	if ids := h.deviceIDs("alice", basic("alice", "password2")); len(ids) != 0 {
		t.Fatalf("devices after password change: %v", ids)
	}
	// A retry (by the admin, with the same key) appends nothing new: the
	// first change stands, password3 was never set.
	code, again := h.do("PUT", "/v1/apps/demo/users/alice/password", admin, `{"new_password":"password3"}`, "Idempotency-Key", "pw-change-1")
	if code != 200 || again["event_id"] != m["event_id"] {
		t.Fatalf("retried password change: %d %v", code, again)
	}
	if _, out := h.raw("GET", "/v1/apps/demo/users/alice/audit", admin, ""); strings.Count(string(out), "\n") != 2 {
		t.Fatalf("audit after retry: %s", out)
	}
	code, m2 = h.do("GET", "/v1/apps/demo/users/alice/devices", basic("alice", "password3"), "")
	h.want(401, 1013, code, m2, "the retried request's password")
	code, m = h.do("PUT", "/v1/apps/demo/users/alice/password", basic("alice", "password2"), `{"new_password":"x"}`)
	h.want(400, 1001, code, m, "short new password")
	code, m = h.do("PUT", "/v1/apps/demo/users/nobody/password", admin, `{"new_password":"password1"}`)
	h.want(404, 1005, code, m, "unknown user")
	// A token cannot change the password: only the current password can.
	tok = h.token("alice", basic("alice", "password2"), 0)
	code, m = h.do("PUT", "/v1/apps/demo/users/alice/password", bearer(tok), `{"new_password":"password4"}`)
	h.want(401, 1013, code, m, "token on password route")
}

func TestTokensRevoke(t *testing.T) {
	h := newHarness(t)
	h.register("alice", "password1")
	h.register("bob", "password1")
	h.login("alice", "v1", 1)
	tok := h.token("alice", basic("alice", "password1"), 0)
	bobs := h.token("bob", admin, 0)
	code, m := h.do("POST", "/v1/apps/demo/users/alice/tokens/revoke", bearer(tok), "")
	h.want(401, 1013, code, m, "a token revoking tokens")
	code, m = h.do("POST", "/v1/apps/demo/users/alice/tokens/revoke", basic("alice", "password1"), "", "Idempotency-Key", "rv-1")
	if code != 200 || m["code"] != float64(0) || len(endedCodes(m)) != 0 {
		t.Fatalf("revoke: %d %v", code, m)
	}
	code, m = h.do("GET", "/v1/apps/demo/users/alice/devices", bearer(tok), "")
	h.want(401, 1013, code, m, "token issued before the revocation")
	if ids := h.deviceIDs("alice", basic("alice", "password1")); len(ids) != 1 {
		t.Fatalf("a revocation ends no session and keeps the password: %v", ids)
	}
	if code, _ := h.do("GET", "/v1/apps/demo/users/bob/devices", bearer(bobs), ""); code != 200 {
		t.Fatalf("another user's token after the revocation: %d", code)
	}
	tok = h.token("alice", basic("alice", "password1"), 0)
	if code, _ := h.do("GET", "/v1/apps/demo/users/alice/devices", bearer(tok), ""); code != 200 {
		t.Fatalf("token issued after the revocation: %d", code)
	}
	code, m = h.do("POST", "/v1/apps/demo/users/nobody/tokens/revoke", admin, "")
	h.want(404, 1005, code, m, "revoke tokens of an unknown user")
}

func TestUserRemove(t *testing.T) {
	h := newHarness(t)
	h.register("alice", "password1")
	h.login("alice", "r1", 1)
	tok := h.token("alice", admin, 0)
	code, m := h.do("DELETE", "/v1/apps/demo/users/alice", basic("alice", "password1"), "")
	h.want(401, 1013, code, m, "user removing self")
	code, m = h.do("DELETE", "/v1/apps/demo/users/alice", admin, "")
	if c := endedCodes(m); code != 200 || len(c) != 1 || c["r1"] != 207 {
		t.Fatalf("remove: %d %v", code, m)
	}
	code, m = h.do("GET", "/v1/apps/demo/users/alice/devices", bearer(tok), "")
	h.want(401, 1013, code, m, "token of removed user")
	code, m = h.do("GET", "/v1/apps/demo/users/alice/devices", basic("alice", "password1"), "")
	h.want(401, 1013, code, m, "password of removed user")
	code, m = h.do("DELETE", "/v1/apps/demo/users/alice", admin, "")
	h.want(404, 1005, code, m, "remove twice")
}

func TestPolicyPut(t *testing.T) {
	h := newHarness(t)
	h.login("alice", "x1", 1)
	h.login("alice", "x2", 1)
	code, m := h.do("PUT", "/v1/apps/demo/policy", admin, `{"mode":"PLATFORM_MODE_MULTI","default_limit":1,"auto_login":"AUTO_LOGIN_POLICY_KICK_OLDEST","timeline_max_entries":"1000","version":7}`)
	if c := endedCodes(m); code != 200 || m["code"] != float64(0) || len(c) != 1 || c["x1"] != 217 {
		t.Fatalf("policy: %d %v", code, m)
	}
	code, m = h.do("GET", "/v1/apps/demo/policy", admin, "")
	if code != 200 || m["version"] != "1" || m["default_limit"] != float64(1) || m["timeline_max_entries"] != "1000" {
		t.Fatalf("policy after put: %d %v", code, m)
	}
	code, m = h.do("PUT", "/v1/apps/demo/policy", admin, `{"mode":"PLATFORM_MODE_MULTI","default_limit":0,"auto_login":"AUTO_LOGIN_POLICY_KICK_OLDEST"}`)
	h.want(400, 1001, code, m, "limit 0")
	code, m = h.do("PUT", "/v1/apps/demo/policy", admin, `{"mode":"PLATFORM_MODE_MULTI","default_limit":2,"auto_login":"AUTO_LOGIN_POLICY_KICK_OLDEST","bogus":1}`)
	h.want(400, 1001, code, m, "unknown field")
	code, m = h.do("PUT", "/v1/apps/demo/policy", admin, strings.Repeat(" ", MaxPolicyBodyBytes+1))
	h.want(413, 1004, code, m, "oversized policy")
}

func TestSecurity(t *testing.T) {
	h := newHarness(t)
	h.register("alice", "password1")
	h.register("bob", "password1")
	aliceTok := h.token("alice", basic("alice", "password1"), 0)

	code, m := h.do("GET", "/v1/apps/demo/users/alice/devices", basic("alice", "wrongpass"), "")
	h.want(401, 1013, code, m, "wrong password")
	code, m = h.do("GET", "/v1/apps/demo/users/alice/devices", basic("nobody", "password1"), "")
	h.want(401, 1013, code, m, "unknown user's password")
	code, m = h.do("GET", "/v1/apps/demo/users/alice/devices", "Basic !!!", "")
	h.want(401, 1013, code, m, "malformed Basic")
	code, m = h.do("GET", "/v1/apps/demo/users/alice/devices", bearer(aliceTok+"x"), "")
	h.want(401, 1013, code, m, "tampered token")
	code, m = h.do("GET", "/v1/apps/demo/users/alice/devices", "", "")
	h.want(401, 1013, code, m, "no credential")

	// Another user's valid credential on alice's path: 403.
	code, m = h.do("GET", "/v1/apps/demo/users/bob/devices", bearer(aliceTok), "")
	h.want(403, 1008, code, m, "alice's token on bob")
	code, m = h.do("DELETE", "/v1/apps/demo/users/bob/devices", basic("alice", "password1"), "")
	h.want(403, 1008, code, m, "alice's password on bob")
	code, m = h.do("GET", "/v1/apps/other/users/alice/devices", bearer(aliceTok), "")
	h.want(403, 1008, code, m, "alice's token in another app")

	// User credentials on admin routes: 401, not 403 (no user may).
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/v1/apps/demo/users", `{"user":"carol","password":"password1"}`},
		{"GET", "/v1/apps/demo/policy", ""},
		{"GET", "/v1/apps/demo/users/alice/audit", ""},
		{"POST", "/v1/operations", `{}`},
	} {
		for _, cred := range []string{basic("alice", "password1"), bearer(aliceTok)} {
			code, m := h.do(c.method, c.path, cred, c.body)
			h.want(401, 1013, code, m, "user credential on "+c.method+" "+c.path)
		}
	}
	code, m = h.do("POST", "/v1/apps/demo/users/alice/tokens", bearer(aliceTok), "")
	h.want(401, 1013, code, m, "token minting a token")

	// Body limits.
	code, m = h.do("POST", "/v1/apps/demo/users", admin, `{"user":"carol","password":"`+strings.Repeat("p", MaxSmallBodyBytes)+`"}`)
	h.want(413, 1004, code, m, "oversized register body")
	code, m = h.do("PUT", "/v1/apps/demo/users/alice/password", basic("alice", "password1"), strings.Repeat(" ", MaxSmallBodyBytes+1))
	h.want(413, 1004, code, m, "oversized password body")

	// Expired token.
	short := h.token("alice", admin, 60)
	h.clk.Add(61 * time.Second)
	code, m = h.do("GET", "/v1/apps/demo/users/alice/devices", bearer(short), "")
	h.want(401, 1013, code, m, "expired token")

	// Brute force: the per-user burst (10) is spent by wrong guesses, then
	// even the right password is 429; bob is unaffected.
	for i := 0; i < 10; i++ {
		code, m := h.do("GET", "/v1/apps/demo/users/alice/devices", basic("alice", fmt.Sprintf("guess%04d", i)), "")
		if code != 401 && code != 429 {
			t.Fatalf("guess %d: %d %v", i, code, m)
		}
	}
	code, m = h.do("GET", "/v1/apps/demo/users/alice/devices", basic("alice", "password1"), "")
	h.want(429, 1014, code, m, "after brute force")
	code, m = h.do("GET", "/v1/apps/demo/users/bob/devices", basic("bob", "password1"), "")
	if code != 200 {
		t.Fatalf("bob during alice's lockout: %d %v", code, m)
	}
	// Tokens are not password checks: alice's still works.
	if code, _ := h.do("GET", "/v1/apps/demo/users/alice/devices", bearer(aliceTok), ""); code != 200 {
		t.Fatalf("alice's token during lockout: %d", code)
	}

	met := h.metrics()
	for _, want := range []string{`mdsync_rest_auth_failures_total{result="forbidden"} 3`, `mdsync_rest_auth_failures_total{result="rate_limited"} 1`} {
		if !strings.Contains(met, want) {
			t.Fatalf("metrics lack %q:\n%s", want, met)
		}
	}
}

// Without a credential store the admin routes work and user credentials
// are refused.
func TestWithoutAuth(t *testing.T) {
	n, err := node.New(context.Background(), node.Options{Dir: t.TempDir(), Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	api, err := New(n.Engine, n.Store, Options{AdminToken: adminToken, Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, srv: httptest.NewServer(api)}
	defer h.srv.Close()
	code, m := h.do("POST", "/v1/apps/demo/users", admin, `{"user":"alice","password":"password1"}`)
	h.want(503, 1009, code, m, "register without a store")
	code, m = h.do("GET", "/v1/apps/demo/users/alice/devices", basic("alice", "password1"), "")
	h.want(401, 1013, code, m, "password without a store")
	if ids := h.deviceIDs("alice", admin); len(ids) != 0 {
		t.Fatalf("devices: %v", ids)
	}
}

// TestAggregatesRoute: the aggregates projection's route, mounted as serve
// mounts it, is admin-only and documented.
func TestAggregatesRoute(t *testing.T) {
	h := newHarness(t)
	for i := 1; i <= 2; i++ {
		if st, b := h.raw("POST", "/v1/operations", admin, fmt.Sprintf(`{"app":"demo","client_op_id":"l%d","kind":"KIND_LOGIN",
			"actor":{"user":"alice"},"login":{"platform":1,"login_id":"d%d"}}`, i, i)); st != 200 {
			t.Fatalf("login: %d %s", st, b)
		}
	}
	if err := h.agg.CatchUp(context.Background(), h.node.Log); err != nil {
		t.Fatal(err)
	}
	st, b := h.raw("GET", "/v1/apps/demo/aggregates", admin, "")
	var c aggregates.Counts
	if st != 200 || json.Unmarshal(b, &c) != nil || c.Logins != 2 || c.ActiveDevices["1"] != 2 {
		t.Fatalf("aggregates: %d %s", st, b)
	}
	if st, b := h.raw("GET", "/v1/apps/demo/aggregates", basic("alice", "whatever-pw"), ""); st != 401 {
		t.Fatalf("aggregates without the admin credential: %d %s", st, b)
	}
}

// POST /v1/internal/operations (a forwarded operation) keeps the actor as
// sent — the device's login id, not the admin — unlike POST
// /v1/operations, and only the admin credential may call it.
func TestInternalOperation(t *testing.T) {
	h := newHarness(t)
	h.register("alice", "password1")
	loginBody := func(op, id string) string {
		return fmt.Sprintf(`{"app":"demo","client_op_id":%q,"kind":"KIND_LOGIN","actor":{"user":"alice","login_id":%q},"login":{"platform":1,"login_id":%q,"device_name":"n"}}`, op, id, id)
	}
	code, m := h.do("POST", "/v1/internal/operations", "", loginBody("i1", "d1"))
	h.want(401, 1013, code, m, "no credential")
	code, m = h.do("POST", "/v1/internal/operations", basic("alice", "password1"), loginBody("i1", "d1"))
	h.want(401, 1013, code, m, "a user's credential")
	code, m = h.do("POST", "/v1/internal/operations", admin, strings.Repeat("x", MaxBodyBytes+1))
	h.want(413, 1004, code, m, "oversized body")
	code, m = h.do("POST", "/v1/internal/operations", admin, `{"app":`)
	h.want(400, 1001, code, m, "malformed body")

	actorAt := func(m map[string]any) *pb.Actor {
		t.Helper()
		off, _ := strconv.ParseInt(m["offset"].(string), 10, 64)
		es, err := h.node.Log.Read(context.Background(), int32(m["partition"].(float64)), off, 1)
		if err != nil || len(es) != 1 {
			t.Fatalf("read: %v %v", es, err)
		}
		ev, err := engine.Decode(es[0].Value)
		if err != nil {
			t.Fatal(err)
		}
		return ev.Actor
	}
	code, m = h.do("POST", "/v1/internal/operations", admin, loginBody("i1", "d1"), "X-Mdsync-Forwarded", "1")
	h.want(200, 0, code, m, "forwarded login")
	if a := actorAt(m); a.User != "alice" || a.LoginId != "d1" || a.Admin {
		t.Fatalf("forwarded actor logged as %v, want alice/d1, not admin", a)
	}
	// A retry returns the same decision.
	code, m2 := h.do("POST", "/v1/internal/operations", admin, loginBody("i1", "d1"))
	if code != 200 || m2["offset"] != m["offset"] || m2["partition"] != m["partition"] {
		t.Fatalf("retry: %d %v, first %v", code, m2, m)
	}
	code, m = h.do("POST", "/v1/operations", admin, loginBody("o2", "d2"))
	h.want(200, 0, code, m, "admin login")
	if a := actorAt(m); !a.Admin {
		t.Fatalf("POST /v1/operations logged actor %v, want admin", a)
	}
}

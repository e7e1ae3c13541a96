package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// restRecorder answers every request from a table keyed by "METHOD path"
// and records the Authorization header and body it got.
type restRecorder struct {
	auth, body map[string]string
	answers    map[string]func(w http.ResponseWriter)
}

func newREST(t *testing.T, answers map[string]func(w http.ResponseWriter)) (*REST, *restRecorder) {
	rr := &restRecorder{auth: map[string]string{}, body: map[string]string{}, answers: answers}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Method + " " + r.URL.EscapedPath()
		b, _ := io.ReadAll(r.Body)
		rr.auth[key], rr.body[key] = r.Header.Get("Authorization"), string(b)
		if a, ok := rr.answers[key]; ok {
			a(w)
			return
		}
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`{"code":1005,"message":"no route ` + key + `"}`))
	}))
	t.Cleanup(srv.Close)
	return NewREST(srv.URL+"/", nil), rr
}

func reply(status int, body string) func(w http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write([]byte(body))
	}
}

func TestRESTRoutesAndCredentials(t *testing.T) {
	ctx := context.Background()
	r, rr := newREST(t, map[string]func(http.ResponseWriter){
		"POST /v1/apps/demo/users":                     reply(201, `{}`),
		"PUT /v1/apps/demo/users/alice/password":       reply(200, `{"code":0,"ended":[{"code":216}]}`),
		"DELETE /v1/apps/demo/users/alice":             reply(200, `{"code":0}`),
		"POST /v1/apps/demo/users/alice/tokens":        reply(200, `{"token":"mdt1.x","expires_at_unix_ms":1700000000000}`),
		"POST /v1/apps/demo/users/alice/tokens/revoke": reply(200, `{"code":0,"kind":"KIND_TOKENS_REVOKE"}`),
		"GET /v1/apps/demo/users/alice/devices":        reply(200, `{"devices":[{"login_id":"A1","platform":1,"device_name":"Phone","connected":true,"extra":1}]}`),
		"DELETE /v1/apps/demo/users/alice/devices/A1":  reply(200, `{"code":0,"ended":[{"code":217}]}`),
		"DELETE /v1/apps/demo/users/alice/devices":     reply(200, `{"code":0}`),
		"GET /v1/apps/demo/policy":                     reply(200, `{"version":3,"mode":"PLATFORM_MODE_SINGLE","auto_login":"AUTO_LOGIN_POLICY_KEEP_CURRENT"}`),
		"PUT /v1/apps/demo/policy":                     reply(200, `{"code":0,"policy_version":4}`),
		"DELETE /v1/apps/demo/users/a%2Fb/devices":     reply(200, `{"code":0}`),
	})
	admin, pw, tok := Credential{Admin: "adm"}, Credential{Password: "s3cret"}, Credential{Token: "mdt1.t"}
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))

	if err := r.RegisterUser(ctx, "demo", "alice", "s3cret", admin); err != nil {
		t.Fatal(err)
	}
	if d, err := r.ChangePassword(ctx, "demo", "alice", "n3w", pw); err != nil || d.Ended[0].Code != 216 {
		t.Fatalf("%v %v", d, err)
	}
	if _, err := r.RemoveUser(ctx, "demo", "alice", admin); err != nil {
		t.Fatal(err)
	}
	if tk, err := r.IssueToken(ctx, "demo", "alice", time.Hour, pw); err != nil || tk.Token != "mdt1.x" || tk.ExpiresAt().UnixMilli() != 1700000000000 {
		t.Fatalf("%+v %v", tk, err)
	}
	if d, err := r.RevokeTokens(ctx, "demo", "alice", pw); err != nil || d.Kind != pb.Kind_KIND_TOKENS_REVOKE {
		t.Fatalf("revoke: %v %v", d, err)
	}
	devs, err := r.FetchLoggedInDevices(ctx, "demo", "alice", tok)
	if err != nil || len(devs) != 1 || devs[0].LoginID != "A1" || !devs[0].Connected || devs[0].DeviceName != "Phone" {
		t.Fatalf("%+v %v", devs, err)
	}
	if err := r.KickDevice(ctx, "demo", "alice", "A1", pw); err != nil {
		t.Fatal(err)
	}
	if err := r.KickAllDevices(ctx, "demo", "alice", pw); err != nil {
		t.Fatal(err)
	}
	if err := r.KickAllDevices(ctx, "demo", "a/b", admin); err != nil {
		t.Fatalf("path segments are escaped: %v", err)
	}
	p, err := r.GetPolicy(ctx, "demo", admin)
	if err != nil || p.Version != 3 || p.Mode != pb.PlatformMode_PLATFORM_MODE_SINGLE || p.AutoLogin != pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KEEP_CURRENT {
		t.Fatalf("%v %v", p, err)
	}
	if _, err := r.SetPolicy(ctx, "demo", &pb.PolicySet{Version: 4, Mode: pb.PlatformMode_PLATFORM_MODE_MULTI, DefaultLimit: 2}, admin); err != nil {
		t.Fatal(err)
	}

	for key, want := range map[string]string{
		"POST /v1/apps/demo/users":                     "Bearer adm",
		"PUT /v1/apps/demo/users/alice/password":       basic,
		"POST /v1/apps/demo/users/alice/tokens/revoke": basic,
		"GET /v1/apps/demo/users/alice/devices":        "Bearer mdt1.t",
		"DELETE /v1/apps/demo/users/alice/devices/A1":  basic,
		"PUT /v1/apps/demo/policy":                     "Bearer adm",
	} {
		if rr.auth[key] != want {
			t.Errorf("%s: Authorization %q, want %q", key, rr.auth[key], want)
		}
	}
	var reg map[string]string
	json.Unmarshal([]byte(rr.body["POST /v1/apps/demo/users"]), &reg)
	if reg["user"] != "alice" || reg["password"] != "s3cret" {
		t.Errorf("register body %q", rr.body["POST /v1/apps/demo/users"])
	}
	if b := rr.body["PUT /v1/apps/demo/users/alice/password"]; b != `{"new_password":"n3w"}` {
		t.Errorf("password body %q", b)
	}
	if b := rr.body["POST /v1/apps/demo/users/alice/tokens"]; b != `{"ttl_seconds":3600}` {
		t.Errorf("token body %q", b)
	}
	// Policy bodies use protobuf's JSON mapping with .proto field names.
	if b := rr.body["PUT /v1/apps/demo/policy"]; !strings.Contains(b, `"default_limit":2`) || !strings.Contains(b, `"PLATFORM_MODE_MULTI"`) {
		t.Errorf("policy body %q", b)
	}
}

func TestRESTErrorsCarryCodes(t *testing.T) {
	ctx := context.Background()
	r, _ := newREST(t, map[string]func(http.ResponseWriter){
		"GET /v1/apps/demo/users/alice/devices":       reply(401, `{"code":1013,"message":"bad credentials"}`),
		"DELETE /v1/apps/demo/users/alice/devices/A9": reply(200, `{"code":1005,"message":"device A9 is not logged in"}`),
		"GET /v1/apps/demo/policy":                    reply(502, `bad gateway`),
		"POST /v1/apps/demo/users":                    reply(409, `{"code":1006,"message":"user exists"}`),
	})
	_, err := r.FetchLoggedInDevices(ctx, "demo", "alice", Credential{Password: "wrong"})
	var e *Error
	if !errors.As(err, &e) || e.Code != 1013 || e.Message != "bad credentials" || e.HTTPStatus != 401 {
		t.Fatalf("%#v", err)
	}
	// A refused decision (HTTP 200, code != 0) is an error too.
	if err := r.KickDevice(ctx, "demo", "alice", "A9", Credential{Admin: "a"}); CodeOf(err) != 1005 {
		t.Fatalf("%v", err)
	}
	// A body that is not the API's error shape still yields a code.
	if _, err := r.GetPolicy(ctx, "demo", Credential{Admin: "a"}); CodeOf(err) != 1009 || !strings.Contains(err.Error(), "bad gateway") {
		t.Fatalf("%v", err)
	}
	if err := r.RegisterUser(ctx, "demo", "alice", "x", Credential{Admin: "a"}); CodeOf(err) != 1006 {
		t.Fatalf("%v", err)
	}
	if err := r.KickAllDevices(ctx, "nope", "alice", Credential{Admin: "a"}); CodeOf(err) != 1005 {
		t.Fatalf("unknown route: %v", err)
	}
}

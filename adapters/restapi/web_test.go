package restapi

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// The Easemob-shaped aliases map onto the device routes, with Easemob's
// envelope, and are validated against docs/openapi.yaml by h.do.
func TestEasemobAliases(t *testing.T) {
	h := newHarness(t)
	h.register("alice", "password1")
	for _, id := range []string{"a1", "a2", "a3"} {
		h.login("alice", id, 1)
	}
	code, m := h.do("GET", "/org1/demo/users/alice/resources", basic("alice", "password1"), "")
	if code != 200 || m["action"] != "get" || m["organization"] != "org1" || m["applicationName"] != "demo" {
		t.Fatalf("resources: %d %v", code, m)
	}
	var res []string
	for _, d := range m["data"].([]any) {
		res = append(res, d.(map[string]any)["res"].(string))
	}
	if strings.Join(res, ",") != "a1,a2,a3" {
		t.Fatalf("resources data: %v", m["data"])
	}
	code, m = h.do("DELETE", "/org1/demo/users/alice/disconnect/a2", admin, "")
	if code != 200 || m["data"].(map[string]any)["result"] != true {
		t.Fatalf("disconnect one: %d %v", code, m)
	}
	code, m = h.do("DELETE", "/org1/demo/users/alice/disconnect/a2", admin, "")
	if code != 200 || m["data"].(map[string]any)["result"] != false {
		t.Fatalf("disconnect a device not logged in: %d %v", code, m)
	}
	code, m = h.do("GET", "/org1/demo/users/alice/disconnect", admin, "")
	if code != 200 || m["data"].(map[string]any)["result"] != true {
		t.Fatalf("disconnect all: %d %v", code, m)
	}
	if ids := h.deviceIDs("alice", admin); len(ids) != 0 {
		t.Fatalf("after disconnect all: %v", ids)
	}
	code, m = h.do("GET", "/org1/demo/users/alice/resources", basic("alice", "wrong-password"), "")
	h.want(401, 1013, code, m, "resources with a bad password")
}

// Without --allowed-origins only the server's own origin may call; admin
// routes refuse any other origin whatever the list says (see the browser
// tests in client/web for the allowed case end to end).
func TestCrossOrigin(t *testing.T) {
	h := newHarness(t)
	h.register("alice", "password1")
	req := func(method, path, cred, origin string, hdr ...string) *http.Response {
		r, _ := http.NewRequest(method, h.srv.URL+path, nil)
		if cred != "" {
			r.Header.Set("Authorization", cred)
		}
		r.Header.Set("Origin", origin)
		for i := 0; i+1 < len(hdr); i += 2 {
			r.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if r := req("GET", "/v1/apps/demo/users/alice/devices", basic("alice", "password1"), h.srv.URL); r.StatusCode != 200 {
		t.Fatalf("same origin: %d", r.StatusCode)
	}
	if r := req("GET", "/v1/apps/demo/users/alice/devices", basic("alice", "password1"), "http://evil.test"); r.StatusCode != 403 || r.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("foreign origin, none allowed: %d %q", r.StatusCode, r.Header.Get("Access-Control-Allow-Origin"))
	}
	// A second API on the same node and credentials, with an allowed origin.
	api, err := New(h.node.Engine, h.node.Store, Options{AdminToken: adminToken, Registry: prometheus.NewRegistry(),
		Auth: h.auth, AllowedOrigins: []string{"http://app.test"}})
	if err != nil {
		t.Fatal(err)
	}
	allowed := httptest.NewServer(api)
	defer allowed.Close()
	h.srv = allowed
	if r := req("GET", "/v1/apps/demo/users/alice/devices", basic("alice", "password1"), "http://app.test"); r.StatusCode != 200 || r.Header.Get("Access-Control-Allow-Origin") != "http://app.test" {
		t.Fatalf("allowed origin: %d %q", r.StatusCode, r.Header.Get("Access-Control-Allow-Origin"))
	}
	if r := req("OPTIONS", "/v1/apps/demo/users/alice/devices/x", "", "http://app.test", "Access-Control-Request-Method", "DELETE"); r.StatusCode != 204 || r.Header.Get("Access-Control-Allow-Methods") != "DELETE" {
		t.Fatalf("preflight of a user route: %d %v", r.StatusCode, r.Header)
	}
	if r := req("GET", "/v1/apps/demo/policy", admin, "http://app.test"); r.StatusCode != 403 || r.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("admin route from an allowed origin: %d", r.StatusCode)
	}
	if r := req("OPTIONS", "/v1/apps/demo/policy", "", "http://app.test", "Access-Control-Request-Method", "PUT"); r.StatusCode != 403 || r.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("preflight of an admin route: %d", r.StatusCode)
	}
}

package restapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/mdsync/mdsync/adapters/node"
	"github.com/prometheus/client_golang/prometheus"
)

func TestAPI(t *testing.T) {
	n, err := node.Open(context.Background(), node.Options{Dir: t.TempDir(), Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	h, err := New(n.Engine, n.Store, Options{AdminToken: "secret", Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	do := func(method, path, token, body string) (int, map[string]any) {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	login := func(op, id string, platform int) string {
		return `{"app":"demo","client_op_id":"` + op + `","kind":"KIND_LOGIN","actor":{"user":"alice"},"login":{"platform":` +
			string(rune('0'+platform)) + `,"login_id":"` + id + `","device_name":"n-` + id + `"}}`
	}

	if code, m := do("POST", "/v1/operations", "", login("o1", "d1", 1)); code != 401 || m["code"] != float64(1013) {
		t.Fatalf("no credential: %d %v", code, m)
	}
	if code, m := do("POST", "/v1/operations", "wrong", login("o1", "d1", 1)); code != 401 || m["code"] != float64(1013) {
		t.Fatalf("wrong credential: %d %v", code, m)
	}
	if code, m := do("POST", "/v1/operations", "secret", strings.Repeat("x", MaxBodyBytes+1)); code != 413 || m["code"] != float64(1004) {
		t.Fatalf("oversized body: %d %v", code, m)
	}
	if code, m := do("POST", "/v1/operations", "secret", `{"app":`); code != 400 || m["code"] != float64(1001) {
		t.Fatalf("malformed body: %d %v", code, m)
	}
	if code, m := do("POST", "/v1/operations", "secret", login("o0", "d0", 0)); code != 400 || m["code"] != float64(1001) {
		t.Fatalf("platform 0: %d %v", code, m)
	}
	for i, id := range []string{"d1", "d2", "d3", "d4"} {
		if code, m := do("POST", "/v1/operations", "secret", login("o"+id, id, 1)); code != 200 || m["code"] != float64(0) {
			t.Fatalf("login %d: %d %v", i, code, m)
		}
	}
	code, m := do("POST", "/v1/operations", "secret", login("o5", "d5", 1))
	ended, _ := m["ended"].([]any)
	if code != 200 || len(ended) != 1 || ended[0].(map[string]any)["code"] != float64(206) {
		t.Fatalf("fifth login: %d %v", code, m)
	}
	code, m = do("GET", "/v1/apps/demo/users/alice/devices", "secret", "")
	if ss, _ := m["sessions"].([]any); code != 200 || len(ss) != 4 || ss[0].(map[string]any)["login_id"] != "d2" {
		t.Fatalf("devices: %d %v", code, m)
	}
	if code, m := do("GET", "/v1/apps/demo/users/al%2Fice/devices", "secret", ""); code != 400 || m["code"] != float64(1001) {
		t.Fatalf("bad user id: %d %v", code, m)
	}
	if code, m := do("GET", "/v1/apps/demo/policy", "secret", ""); code != 200 || m["default_limit"] != float64(4) {
		t.Fatalf("policy: %d %v", code, m)
	}
	req, _ := http.NewRequest("GET", srv.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	buf := make([]byte, 1<<16)
	for {
		k, err := resp.Body.Read(buf)
		sb.Write(buf[:k])
		if err != nil {
			break
		}
	}
	resp.Body.Close()
	for _, want := range []string{`mdsync_operations_submitted_total{code="0",kind="login"} 5`, `mdsync_operations_submitted_total{code="1001",kind="login"} 1`, "mdsync_submit_duration_seconds_bucket"} {
		if !strings.Contains(sb.String(), want) {
			t.Fatalf("metrics lack %q:\n%s", want, sb.String())
		}
	}
}

package admincli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/mdsync/mdsync/client"
)

// fakeAPI is the REST API's route table with canned answers; it checks the
// credential each route accepts and records request bodies.
type fakeAPI struct {
	mu     sync.Mutex
	bodies map[string]string
	auths  map[string]string
}

func newFakeAPI(t *testing.T) (*fakeAPI, string) {
	f := &fakeAPI{bodies: map[string]string{}, auths: map[string]string{}}
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:pw"))
	admin := "Bearer adm"
	routes := map[string]struct {
		auth   []string
		status int
		body   string
	}{
		"POST /v1/apps/demo/users":                    {[]string{admin}, 201, `{}`},
		"GET /v1/apps/demo/users/alice/devices":       {[]string{admin, basic}, 200, `{"devices":[{"login_id":"A1","platform":1,"device_name":"Pixel","extension":"{}","login_time_unix_ms":1700000000000,"last_seen_unix_ms":1700000001000,"remote_addr":"127.0.0.2:5000","connected":true},{"login_id":"A2","platform":2,"device_name":"Mac"}]}`},
		"DELETE /v1/apps/demo/users/alice/devices/A1": {[]string{admin, basic}, 200, `{"code":0,"ended":[{"session":{"login_id":"A1","platform":1,"device_name":"Pixel"},"reason":"REASON_KICKED","code":217}]}`},
		"DELETE /v1/apps/demo/users/alice/devices/A9": {[]string{admin, basic}, 200, `{"code":1005,"message":"device A9 is not logged in"}`},
		"DELETE /v1/apps/demo/users/alice/devices":    {[]string{admin, basic}, 200, `{"code":0,"ended":[{"code":217},{"code":217}]}`},
		"PUT /v1/apps/demo/users/alice/password":      {[]string{admin, basic}, 200, `{"code":0,"ended":[{"code":216}]}`},
		"DELETE /v1/apps/demo/users/alice":            {[]string{admin}, 200, `{"code":0}`},
		"GET /v1/apps/demo/policy":                    {[]string{admin}, 200, `{"version":2,"mode":"PLATFORM_MODE_MULTI","default_limit":4,"limits":[{"platform":1,"limit":4}],"auto_login":"AUTO_LOGIN_POLICY_KEEP_CURRENT"}`},
		"PUT /v1/apps/demo/policy":                    {[]string{admin}, 200, `{"code":0,"policy_version":3}`},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Method + " " + r.URL.Path
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.bodies[key], f.auths[key] = string(b), r.Header.Get("Authorization")
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		rt, ok := routes[key]
		if !ok {
			w.WriteHeader(404)
			w.Write([]byte(`{"code":1005,"message":"not found"}`))
			return
		}
		allowed := false
		for _, a := range rt.auth {
			allowed = allowed || r.Header.Get("Authorization") == a
		}
		if !allowed {
			w.WriteHeader(401)
			w.Write([]byte(`{"code":1013,"message":"bad credentials"}`))
			return
		}
		w.WriteHeader(rt.status)
		w.Write([]byte(rt.body))
	}))
	t.Cleanup(srv.Close)
	return f, srv.URL
}

func (f *fakeAPI) body(key string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bodies[key]
}

// run runs one command against the fake API at url.
func run(t *testing.T, url, stdin, command string, f Flags) (string, error) {
	t.Helper()
	var out bytes.Buffer
	a := &Admin{F: f, REST: client.NewREST(url, nil), Out: &out, Stdin: strings.NewReader(stdin)}
	err := a.Run(context.Background(), command)
	return out.String(), err
}

func TestUsersAndDevices(t *testing.T) {
	_, url := newFakeAPI(t)
	ok := func(command string, f Flags) string {
		t.Helper()
		f.App, f.User = "demo", "alice"
		out, err := run(t, url, "", command, f)
		if err != nil {
			t.Fatalf("%s: %v", command, err)
		}
		return out
	}
	if out := ok("users add", Flags{AdminToken: "adm", Password: "pw"}); out != "user alice created in app demo\n" {
		t.Fatalf("users add: %q", out)
	}
	out := ok("devices list", Flags{Password: "pw"})
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "LOGIN_ID") || !strings.Contains(lines[1], "Pixel") ||
		!strings.Contains(lines[1], "2023-11-14T22:13:20Z") || !strings.Contains(lines[1], "127.0.0.2:5000") || !strings.Contains(lines[2], "false") {
		t.Fatalf("devices list:\n%s", out)
	}
	var js struct {
		Devices []struct {
			LoginID   string `json:"login_id"`
			Connected bool   `json:"connected"`
		} `json:"devices"`
	}
	if err := json.Unmarshal([]byte(ok("devices list", Flags{AdminToken: "adm", JSON: true})), &js); err != nil || len(js.Devices) != 2 || !js.Devices[0].Connected {
		t.Fatalf("devices list --json: %+v %v", js, err)
	}
	// kick works with the user's password (no login needed).
	if out := ok("devices kick", Flags{LoginID: "A1", Password: "pw"}); !strings.Contains(out, "1 device(s) logged out") || !strings.Contains(out, "A1 (platform 1, \"Pixel\"): 217 REASON_KICKED") {
		t.Fatalf("kick: %q", out)
	}
	if out := ok("devices kick-all", Flags{Password: "pw"}); !strings.Contains(out, "2 device(s) logged out") {
		t.Fatalf("kick-all: %q", out)
	}
	if out := ok("users passwd", Flags{Password: "pw", NewPassword: "n"}); !strings.Contains(out, "1 device(s) logged out") {
		t.Fatalf("passwd: %q", out)
	}
	if out := ok("users remove", Flags{AdminToken: "adm", JSON: true}); !strings.Contains(out, `"code":0`) {
		t.Fatalf("remove --json: %q", out)
	}
}

func TestErrorsCarryCodes(t *testing.T) {
	_, url := newFakeAPI(t)
	_, err := run(t, url, "", "devices list", Flags{App: "demo", User: "alice", Password: "wrong"})
	if err == nil || err.Error() != "error 1013: bad credentials" {
		t.Fatalf("bad password: %v", err)
	}
	// A refused decision is a failure too.
	_, err = run(t, url, "", "devices kick", Flags{App: "demo", User: "alice", Password: "pw", LoginID: "A9"})
	if err == nil || err.Error() != "error 1005: device A9 is not logged in" {
		t.Fatalf("kick unknown: %v", err)
	}
	for _, c := range []struct {
		command string
		f       Flags
		want    string
	}{
		{"devices kick", Flags{App: "demo", User: "x"}, "--login-id is required"},
		{"devices list", Flags{App: "demo"}, "--user is required"},
		{"users frob", Flags{App: "demo"}, `unknown command "users frob"`},
		{"policy set", Flags{App: "demo", AdminToken: "adm", Mode: "both"}, `error 1001: --mode "both" is not multi or single`},
		{"policy set", Flags{App: "demo", AdminToken: "adm", Limits: "1=x"}, `error 1001: --limit "1=x": want PLATFORM=N`},
		{"policy get", Flags{App: "demo", Data: t.TempDir()}, "no admin token"},
	} {
		if _, err := run(t, url, "", c.command, c.f); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %+v: %v, want %q", c.command, c.f, err, c.want)
		}
	}
}

func TestPolicy(t *testing.T) {
	f, url := newFakeAPI(t)
	// The admin token is read from the data directory serve wrote it to.
	data := t.TempDir()
	if err := os.WriteFile(filepath.Join(data, "admin-token"), []byte("adm\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	common := Flags{App: "demo", Data: data}
	out, err := run(t, url, "", "policy get", common)
	if err != nil || !strings.Contains(out, "mode           multi") || !strings.Contains(out, "platform 1: 4") || !strings.Contains(out, "auto-login     keep-current") {
		t.Fatalf("policy get: %q %v", out, err)
	}
	// Flags change the current policy; the rest is kept.
	set := common
	set.Mode, set.Limits = "single", "3=2,1=5"
	out, err = run(t, url, "", "policy set", set)
	if err != nil || !strings.Contains(out, "policy version 3 installed") {
		t.Fatalf("policy set: %q %v", out, err)
	}
	var ps map[string]any
	json.Unmarshal([]byte(f.body("PUT /v1/apps/demo/policy")), &ps)
	lim, _ := json.Marshal(ps["limits"])
	if ps["mode"] != "PLATFORM_MODE_SINGLE" || ps["auto_login"] != "AUTO_LOGIN_POLICY_KEEP_CURRENT" || ps["default_limit"] != float64(4) ||
		string(lim) != `[{"limit":5,"platform":1},{"limit":2,"platform":3}]` {
		t.Fatalf("policy body %v", f.body("PUT /v1/apps/demo/policy"))
	}
	// A policy file from stdin replaces it.
	file := common
	file.File = "-"
	_, err = run(t, url, `{"mode":"PLATFORM_MODE_MULTI","default_limit":1,"auto_login":"AUTO_LOGIN_POLICY_KICK_OLDEST"}`, "policy set", file)
	if err != nil || !strings.Contains(f.body("PUT /v1/apps/demo/policy"), `"default_limit":1`) {
		t.Fatalf("policy set --file -: %v %s", err, f.body("PUT /v1/apps/demo/policy"))
	}
	if _, err := run(t, url, `{"mode":`, "policy set", file); err == nil || !strings.HasPrefix(err.Error(), "error 1001") {
		t.Fatalf("bad policy file: %v", err)
	}
}

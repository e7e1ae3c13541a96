package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// TestCLIFlags covers what the command line adds to adapters/admincli: the
// flags (and the environment) reach the request, `devices kick` takes the
// login ID as an argument, and usage errors name what is wrong.
func TestCLIFlags(t *testing.T) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"code":0}`))
	}))
	defer srv.Close()
	cli := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := runCLI(args[0], args[1:], strings.NewReader(""), &out)
		return out.String(), err
	}
	t.Setenv("MDSYNC_ADMIN_TOKEN", "adm")
	if out, err := cli("devices", "kick", "A1", "--server", srv.URL, "--app", "demo", "--user", "alice"); err != nil || !strings.Contains(out, "device A1 kicked") {
		t.Fatalf("devices kick A1: %q %v", out, err)
	}
	mu.Lock()
	if len(got) != 1 || got[0] != "DELETE /v1/apps/demo/users/alice/devices/A1 Bearer adm" {
		t.Errorf("requests %q", got)
	}
	mu.Unlock()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"devices", "list", "--server", srv.URL, "--user", "alice"}, "--app is required"},
		{[]string{"users", "frob", "--app", "demo"}, `unknown command "users frob"`},
		{[]string{"users"}, "missing subcommand"},
		{[]string{"devices", "kick", "A1", "A2", "--app", "demo"}, `unexpected arguments ["A1" "A2"]`},
		{[]string{"users", "add", "--nope"}, "flag provided but not defined: -nope"},
	} {
		if _, err := cli(c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}
}

package forward

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// ForwardRead sends the method, path and query with the cluster credential
// and the forwarded mark, keeps the caller's Host, and copies the owner's
// status, Content-Type, Retry-After and body; an owner that does not
// answer, or refuses the credential, is 503/1009 with Retry-After.
func TestForwardRead(t *testing.T) {
	var got *http.Request
	owner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Clone(r.Context())
		if r.URL.Path == "/refuse" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Header().Set("Retry-After", "3")
		w.Header().Set("X-Other", "dropped")
		w.WriteHeader(http.StatusTeapot)
		io.WriteString(w, "owner's body")
	}))
	defer owner.Close()
	addr := strings.TrimPrefix(owner.URL, "http://")
	f, err := NewReads(Options{Token: "cluster"})
	if err != nil {
		t.Fatal(err)
	}

	r := httptest.NewRequest("GET", "http://api.example/v1/apps/a/users/u/audit?x=1", nil)
	r.Header.Set("Authorization", "Basic dTpw")
	w := httptest.NewRecorder()
	f.ForwardRead(w, r, addr)
	if w.Code != http.StatusTeapot || w.Body.String() != "owner's body" || w.Header().Get("Content-Type") != "application/x-ndjson" ||
		w.Header().Get("Retry-After") != "3" || w.Header().Get("X-Other") != "" {
		t.Fatalf("answer %d %q %v", w.Code, w.Body.String(), w.Header())
	}
	if got.URL.RequestURI() != "/v1/apps/a/users/u/audit?x=1" || got.Header.Get("Authorization") != "Bearer cluster" ||
		!Forwarded(got) || got.Host != "api.example" {
		t.Fatalf("owner saw %s %v host %q", got.URL.RequestURI(), got.Header, got.Host)
	}

	unavailable := func(what string, addr, path string) {
		t.Helper()
		w := httptest.NewRecorder()
		f.ForwardRead(w, httptest.NewRequest("GET", "http://api.example"+path, nil), addr)
		var e struct{ Code int32 }
		json.Unmarshal(w.Body.Bytes(), &e)
		if w.Code != http.StatusServiceUnavailable || e.Code != 1009 || w.Header().Get("Retry-After") == "" {
			t.Errorf("%s: %d %s %v", what, w.Code, w.Body.String(), w.Header())
		}
	}
	unavailable("credential refused", addr, "/refuse")
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	unavailable("owner down", dead, "/v1/apps/a/users/u/devices")
}

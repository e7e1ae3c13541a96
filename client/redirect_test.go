package client

import (
	"strings"
	"testing"
)

// A 1018 at login names the process that serves the user: Dial goes there,
// and reconnects keep going there.
func TestNotOwnerRedirects(t *testing.T) {
	a, b := newFakeServer(t), newFakeServer(t)
	cfg := baseConfig(a.url())
	cfg.AutoLogin = true // reconnects
	ch := dialAsync(cfg)
	fa := a.next(t)
	m := fa.read("login")
	if m["auto_login"] == true {
		t.Fatalf("a first login without a login ID is not an auto-login: %v", m)
	}
	fa.send(map[string]any{"type": "error", "id": m["id"], "code": 1018, "message": "served elsewhere",
		"addr": strings.TrimPrefix(b.URL, "http://")})
	fb := b.next(t)
	fb.acceptLogin("A1")
	r := <-ch
	if r.err != nil {
		t.Fatalf("dial after a redirect: %v", r.err)
	}
	defer r.c.Close()
	if r.c.LoginID() != "A1" {
		t.Fatalf("login ID %q", r.c.LoginID())
	}
	// The connection drops: the reconnect resumes at the owner, not at a.
	fb.close()
	fb2 := b.next(t)
	if m := fb2.acceptLogin("A1"); m["type"] != "resume" {
		t.Fatalf("reconnect sent %v, want a resume at the owner", m["type"])
	}
	if n := a.accepted.Load(); n != 1 {
		t.Fatalf("the first server saw %d connections, want 1", n)
	}
}

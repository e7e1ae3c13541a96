package restapi

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// gatedEngine holds every Submit until open is closed.
type gatedEngine struct {
	Submitter
	open    chan struct{}
	waiting atomic.Int32
}

func (g *gatedEngine) Submit(ctx context.Context, op *pb.Event) (*pb.Decision, error) {
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	select {
	case <-g.open:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.Submitter.Submit(ctx, op)
}

func loginBody(user, id string) string {
	return fmt.Sprintf(`{"app":"demo","client_op_id":"busy-%s","kind":"KIND_LOGIN","actor":{"user":%q},"login":{"platform":1,"login_id":%q}}`, id, user, id)
}

// TestSubmitsPastTheBoundAreBusy fills MaxSubmitsInFlight with operations
// the engine holds, and checks that every further write, on any route, is
// refused at once with 429/1019, Retry-After and retry_after_ms (and is
// documented so); reads still work; once the held operations are decided
// (each exactly as submitted) writes are accepted again.
func TestSubmitsPastTheBoundAreBusy(t *testing.T) {
	var gate *gatedEngine
	h := newHarnessWith(t, func(s Submitter) Submitter {
		gate = &gatedEngine{Submitter: s, open: make(chan struct{})}
		return gate
	}, func(o *Options) { o.MaxSubmitsInFlight = 2; o.BusyRetryAfter = 1500 * time.Millisecond })
	var release sync.Once
	openGate := func() { release.Do(func() { close(gate.open) }) }
	t.Cleanup(openGate) // before the server's Close, on failure too

	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("POST", h.srv.URL+"/v1/operations", strings.NewReader(loginBody("alice", fmt.Sprint("held", i))))
			req.Header.Set("Authorization", admin)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			codes[i] = resp.StatusCode
		}()
	}
	for deadline := time.Now().Add(10 * time.Second); gate.waiting.Load() < 2; {
		if time.Now().After(deadline) {
			t.Fatal("the held submits did not reach the engine")
		}
		time.Sleep(5 * time.Millisecond)
	}

	for _, c := range []struct{ method, path, body string }{
		{"POST", "/v1/operations", loginBody("alice", "third")},
		{"DELETE", "/v1/apps/demo/users/alice/devices/held0", ""},
		{"PUT", "/v1/apps/demo/policy", `{"mode":"PLATFORM_MODE_MULTI","default_limit":2,"auto_login":"AUTO_LOGIN_POLICY_KICK_OLDEST"}`},
	} {
		code, out := h.raw(c.method, c.path, admin, c.body)
		if code != http.StatusTooManyRequests || !strings.Contains(string(out), `"code":1019`) || !strings.Contains(string(out), `"retry_after_ms":1500`) {
			t.Fatalf("%s %s past the bound: %d %s", c.method, c.path, code, out)
		}
	}
	// The header, read directly (raw checked it against the document).
	req, _ := http.NewRequest("POST", h.srv.URL+"/v1/operations", strings.NewReader(loginBody("alice", "fourth")))
	req.Header.Set("Authorization", admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "2" {
		t.Fatalf("busy: %d Retry-After %q, want 429 and 2 (1.5 s rounded up)", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if code, _ := h.raw("GET", "/v1/apps/demo/policy", admin, ""); code != 200 {
		t.Fatalf("a read while writes are busy: %d", code)
	}
	if !strings.Contains(h.metrics(), "mdsync_rest_submits_busy_total 4") {
		t.Fatal("mdsync_rest_submits_busy_total is not 4")
	}

	openGate()
	wg.Wait()
	if codes[0] != 200 || codes[1] != 200 {
		t.Fatalf("held submits: %v", codes)
	}
	// Nothing refused was appended: the refused logins are unknown, the
	// held ones are sessions.
	ids := strings.Join(h.deviceIDs("alice", admin), ",")
	if ids != "held0,held1" && ids != "held1,held0" {
		t.Fatalf("alice's devices %q, want the two held logins only", ids)
	}
	code, m := h.do("POST", "/v1/operations", admin, loginBody("alice", "after"))
	h.want(200, 0, code, m, "a submit once the bound has room")
}

// TestUnavailableHasRetryAfter: an operation with no decision within
// SubmitTimeout is 503/1009 with Retry-After (a retry with the same
// Idempotency-Key may succeed), as documented.
func TestUnavailableHasRetryAfter(t *testing.T) {
	h := newHarnessWith(t, func(s Submitter) Submitter {
		return &gatedEngine{Submitter: s, open: make(chan struct{})}
	}, func(o *Options) { o.SubmitTimeout = 50 * time.Millisecond })
	code, m := h.do("POST", "/v1/operations", admin, loginBody("bob", "slow"))
	h.want(503, 1009, code, m, "no decision in time")
	req, _ := http.NewRequest("DELETE", h.srv.URL+"/v1/apps/demo/users/bob/devices", nil)
	req.Header.Set("Authorization", admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("kick-all with no decision: %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

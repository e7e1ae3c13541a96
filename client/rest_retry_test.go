package client

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// A refusal a retry cures is sent again after the delay the server asked
// for: 429/1019 (busy) and 503/1018 (no owner known yet) on any route, and
// any 503 of a read. A write refused with 503/1009 is not repeated: it may
// have been appended.
func TestRESTRetriesWhatARetryCures(t *testing.T) {
	var n atomic.Int32
	seq := func(first int, status int, body string) func(w http.ResponseWriter) {
		return func(w http.ResponseWriter) {
			if int(n.Add(1)) <= first {
				w.Header().Set("Retry-After", "1")
				reply(status, body)(w)
				return
			}
			reply(200, `{"code":0,"devices":[]}`)(w)
		}
	}
	cred := Credential{Password: "pw"}
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		answer   func(w http.ResponseWriter)
		call     func(r *REST) error
		attempts int32
		code     int32
	}{
		{"busy write", seq(2, 429, `{"code":1019,"message":"busy","retry_after_ms":10}`),
			func(r *REST) error { return r.KickAllDevices(ctx, "demo", "alice", cred) }, 3, 0},
		{"no owner yet", seq(1, 503, `{"code":1018,"message":"owner not known yet","retry_after_ms":10}`),
			func(r *REST) error { return r.KickAllDevices(ctx, "demo", "alice", cred) }, 2, 0},
		{"unavailable write", seq(1, 503, `{"code":1009,"message":"log not answering"}`),
			func(r *REST) error { return r.KickAllDevices(ctx, "demo", "alice", cred) }, 1, 1009},
		{"unavailable read", seq(1, 503, `{"code":1009,"message":"log not answering","retry_after_ms":10}`),
			func(r *REST) error { _, err := r.FetchLoggedInDevices(ctx, "demo", "alice", cred); return err }, 2, 0},
		{"busy for ever", seq(100, 429, `{"code":1019,"message":"busy","retry_after_ms":1}`),
			func(r *REST) error { return r.KickAllDevices(ctx, "demo", "alice", cred) }, maxRetries, 1019},
		{"busy, returned to the caller", seq(100, 429, `{"code":1019,"message":"busy","retry_after_ms":70}`),
			func(r *REST) error {
				r.ReturnBusy = true
				err := r.KickAllDevices(ctx, "demo", "alice", cred)
				if e, ok := err.(*Error); !ok || e.RetryAfter != 70*time.Millisecond {
					t.Errorf("ReturnBusy: %#v, want the server's retry_after_ms (70 ms)", err)
				}
				return err
			}, 1, 1019},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n.Store(0)
			r, _ := newREST(t, map[string]func(w http.ResponseWriter){
				"DELETE /v1/apps/demo/users/alice/devices": tc.answer,
				"GET /v1/apps/demo/users/alice/devices":    tc.answer,
			})
			err := tc.call(r)
			if got := CodeOf(err); got != tc.code || n.Load() != tc.attempts {
				t.Fatalf("code %d after %d attempts (%v), want %d after %d", got, n.Load(), err, tc.code, tc.attempts)
			}
		})
	}
}

package forward

import (
	"context"
	"encoding/json"
	"io"
	"net/http"

	"github.com/mdsync/mdsync/engine"
)

// MaxReadResponseBytes bounds an owner's answer to a forwarded read (an
// audit trail is the longest); past it the answer is cut and the caller
// sees a truncated body, never an unbounded one.
const MaxReadResponseBytes = 16 << 20

// Reads sends a REST read about a user to the process that owns the user's
// partition, so every process answers it the same way (the owner's
// projection and its gateway's live connections are the answer). It is
// the read counterpart of Submitter: one hop, the admin credential, and
// the Header mark that keeps the owner from forwarding again. Safe for
// concurrent use.
type Reads struct{ opts Options }

// NewReads returns a Reads; opts as for New (Token is required).
func NewReads(opts Options) (*Reads, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Reads{opts: opts}, nil
}

// Forwarded reports whether r was forwarded by another process: it is
// answered here or refused, never forwarded again.
func Forwarded(r *http.Request) bool { return r.Header.Get(Header) == "1" }

// ForwardRead sends r's method, path and query to the process at addr
// with the cluster credential (the caller has authenticated r already) and
// copies the answer's status, Content-Type, Retry-After and body to w.
// When addr does not answer, w gets 503 with code 1009 and Retry-After:
// the owner may be restarting, a retry shortly may reach it or its
// successor.
func (f *Reads) ForwardRead(w http.ResponseWriter, r *http.Request, addr string) {
	ctx, cancel := context.WithTimeout(r.Context(), f.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, r.Method, "http://"+addr+r.URL.RequestURI(), nil)
	if err != nil {
		unavailable(w, "forward to the owner "+addr+": "+err.Error())
		return
	}
	req.Host = r.Host // the owner renders links with the caller's host
	req.Header.Set("Authorization", "Bearer "+f.opts.Token)
	req.Header.Set(Header, "1")
	if a := r.Header.Get("Accept"); a != "" {
		req.Header.Set("Accept", a)
	}
	resp, err := f.opts.Client.Do(req)
	if err != nil {
		unavailable(w, "the owner "+addr+" did not answer: "+err.Error()+"; retry")
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized {
		unavailable(w, "the owner "+addr+" refused the cluster credential; do all processes share --admin-token?")
		return
	}
	for _, h := range []string{"Content-Type", "Retry-After"} {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, io.LimitReader(resp.Body, MaxReadResponseBytes))
}

// unavailable answers 503/1009 with Retry-After, in the API's error shape.
func unavailable(w http.ResponseWriter, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Retry-After", "1")
	w.WriteHeader(http.StatusServiceUnavailable)
	json.NewEncoder(w).Encode(struct {
		Code    int32  `json:"code"`
		Message string `json:"message"`
	}{int32(engine.CodeUnavailable), msg})
}

package restapi

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/mdsync/mdsync/engine"
)

// Cross-origin rules. A browser page on another origin may call the routes
// a user calls on their own account (devices, kick, kick-all, tokens,
// password, the Easemob-shaped aliases) when its origin is in
// Options.AllowedOrigins; by default no other origin is. Admin routes are
// never served to another origin: a request that carries a foreign Origin
// is refused (403/1008) before its credential is looked at, and their
// preflights get no CORS headers. Same-origin requests (the console) are
// untouched.

// corsHeaders are the request headers a cross-origin caller may send.
const corsHeaders = "Authorization, Content-Type, Idempotency-Key"

// sameOrigin reports whether origin names the host the request was sent to.
func sameOrigin(origin string, r *http.Request) bool {
	u, err := url.Parse(origin)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host)
}

// originAllowed reports whether origin is in the allowed list ("*" allows
// any). Entries are full origins: scheme://host[:port].
func (a *api) originAllowed(origin string) bool {
	for _, o := range a.opts.AllowedOrigins {
		if o == "*" || strings.EqualFold(strings.TrimRight(o, "/"), origin) {
			return true
		}
	}
	return false
}

// crossOrigin applies the rules above to a request for a route with access
// acc. It returns false when it refused the request (the answer is written).
func (a *api) crossOrigin(w http.ResponseWriter, r *http.Request, acc access) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || acc == public || sameOrigin(origin, r) {
		return true
	}
	if acc == adminOnly {
		writeError(w, http.StatusForbidden, engine.CodeForbidden, "admin routes are not served to other origins")
		return false
	}
	if !a.originAllowed(origin) {
		writeError(w, http.StatusForbidden, engine.CodeForbidden, "origin "+origin+" is not allowed (serve --allowed-origins)")
		return false
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", origin)
	h.Add("Vary", "Origin")
	h.Set("Access-Control-Expose-Headers", "WWW-Authenticate, Retry-After")
	return true
}

// preflight answers a CORS preflight (OPTIONS with
// Access-Control-Request-Method) for the route mux would serve; routes
// that are not user-facing, and origins not allowed, get a 403 without
// CORS headers, which the browser reads as a refusal.
func (a *api) preflight(w http.ResponseWriter, r *http.Request, mux *http.ServeMux) {
	origin := r.Header.Get("Origin")
	method := r.Header.Get("Access-Control-Request-Method")
	probe := r.Clone(r.Context())
	probe.Method = method
	_, pattern := mux.Handler(probe)
	acc, known := a.access[pattern]
	if !known || acc == adminOnly || acc == public || origin == "" || !a.originAllowed(origin) {
		writeError(w, http.StatusForbidden, engine.CodeForbidden, "cross-origin "+method+" "+r.URL.Path+" is not allowed")
		return
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", origin)
	h.Add("Vary", "Origin")
	h.Set("Access-Control-Allow-Methods", method)
	h.Set("Access-Control-Allow-Headers", corsHeaders)
	h.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
}

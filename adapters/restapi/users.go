package restapi

import (
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"strings"

	"github.com/mdsync/mdsync/adapters/forward"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// userTokenPrefix starts a user token (adapters/auth.TokenPrefix); any other
// bearer value is taken as the admin token.
const userTokenPrefix = "mdt1."

// guard authenticates a request for rt and calls its handler with the
// principal. Refusals: no or bad credential 401/1013, a valid credential of
// another user 403/1008, password checks over the rate limit 429/1014.
func (a *api) guard(rt route) http.Handler {
	wantAdmin := []byte("Bearer " + a.opts.AdminToken)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.crossOrigin(w, r, rt.access) {
			return
		}
		if rt.access == public {
			rt.handle(a, w, r, principal{})
			return
		}
		h := r.Header.Get("Authorization")
		// Constant-time, and first, so the admin token's bytes leak nothing.
		if subtle.ConstantTimeCompare([]byte(h), wantAdmin) == 1 {
			if rt.userRead && !a.servedHere(w, r) {
				return
			}
			rt.handle(a, w, r, principal{admin: true})
			return
		}
		p, err := a.authenticateUser(rt.access, h, r)
		if err != nil {
			code := engine.CodeOf(err)
			switch code {
			case engine.CodeUnauthenticated:
				a.authFails.WithLabelValues("unauthenticated").Inc()
				w.Header().Set("WWW-Authenticate", `Basic realm="mdsync", Bearer realm="mdsync"`)
			case engine.CodeForbidden:
				a.authFails.WithLabelValues("forbidden").Inc()
			case engine.CodeRateLimited:
				a.authFails.WithLabelValues("rate_limited").Inc()
				w.Header().Set("Retry-After", "6")
			}
			a.writeCoded(w, err)
			return
		}
		if rt.userRead && !a.servedHere(w, r) {
			return
		}
		rt.handle(a, w, r, p)
	})
}

// servedHere reports whether this process answers a read about the path's
// user; when not, it has answered the request: with the owner's answer
// (one hop: a read forwarded here is never forwarded again), or 503/1018
// with Retry-After while the owner is not known. Ids that are not valid
// are left to the route, which refuses them.
func (a *api) servedHere(w http.ResponseWriter, r *http.Request) bool {
	app, user := r.PathValue("app"), r.PathValue("user")
	if a.opts.Owner == nil || !engine.ValidID(app) || !engine.ValidID(user) {
		return true
	}
	addr, local := a.opts.Owner.Owner(app, user)
	switch {
	case local:
		return true
	case addr == "":
		writeError(w, http.StatusServiceUnavailable, engine.CodeNotOwner, "the user's partition is not served here and its owner is not known yet; retry")
	case forward.Forwarded(r):
		writeError(w, http.StatusServiceUnavailable, engine.CodeNotOwner, "the user's partition moved from this process; retry")
	default:
		a.opts.Reads.ForwardRead(w, r, addr)
	}
	return false
}

var (
	errNoCredential = engine.Errorf(engine.CodeUnauthenticated, "a valid credential is required")
	errOtherUser    = engine.Errorf(engine.CodeForbidden, "the credential belongs to another user")
)

// authenticateUser checks a user's password or token against the path's
// {app} and {user}. A credential that is valid but names another user is
// 1008; one that is not valid is 1013, whoever it names.
func (a *api) authenticateUser(acc access, h string, r *http.Request) (principal, error) {
	if acc == adminOnly || a.opts.Auth == nil {
		return principal{}, errNoCredential
	}
	app, user := r.PathValue("app"), r.PathValue("user")
	scheme, cred, _ := strings.Cut(h, " ")
	switch {
	case strings.EqualFold(scheme, "Basic"):
		raw, err := base64.StdEncoding.DecodeString(cred)
		if err != nil {
			return principal{}, errNoCredential
		}
		name, pw, ok := strings.Cut(string(raw), ":")
		if !ok || pw == "" {
			return principal{}, errNoCredential
		}
		if err := a.opts.Auth.CheckPassword(app, name, pw, a.opts.ClientAddr(r)); err != nil {
			return principal{}, err
		}
		if name != user {
			return principal{}, errOtherUser
		}
		return principal{user: user}, nil
	case strings.EqualFold(scheme, "Bearer") && acc == adminOrOwner && strings.HasPrefix(cred, userTokenPrefix):
		tApp, tUser, err := a.opts.Auth.VerifyToken(cred)
		if err != nil {
			return principal{}, err
		}
		if tApp != app || tUser != user {
			return principal{}, errOtherUser
		}
		return principal{user: user}, nil
	}
	return principal{}, errNoCredential
}

// needAuth answers 503 when no credential store is configured.
func (a *api) needAuth(w http.ResponseWriter) bool {
	if a.opts.Auth == nil {
		writeError(w, http.StatusServiceUnavailable, engine.CodeUnavailable, "no credential store is configured")
		return false
	}
	return true
}

// actor is who an operation of a user route is recorded as: the path's
// user, performed by the admin credential or by the user's own.
func actor(r *http.Request, p principal) *pb.Actor {
	return &pb.Actor{User: r.PathValue("user"), Admin: p.admin}
}

func (a *api) register(w http.ResponseWriter, r *http.Request, _ principal) {
	if !validPath(w, r, "app") || !a.needAuth(w) {
		return
	}
	body, ok := readBody(w, r, MaxSmallBodyBytes)
	if !ok {
		return
	}
	req, err := decodeRegister(body)
	if err != nil {
		a.writeCoded(w, err)
		return
	}
	if err := a.opts.Auth.Register(r.PathValue("app"), req.User, req.Password); err != nil {
		a.writeCoded(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"user": req.User})
}

// setPassword changes the password, then ends every session of the user
// with 216 through the log, so each device learns it in order. The store
// changes first: a device must not be able to log in again with the old
// password after it was kicked. A failed submit is retried by the caller
// (with the same Idempotency-Key); the store change is idempotent enough
// (one more epoch bump).
func (a *api) setPassword(w http.ResponseWriter, r *http.Request, p principal) {
	if !validPath(w, r, "app", "user") || !a.needAuth(w) {
		return
	}
	body, ok := readBody(w, r, MaxSmallBodyBytes)
	if !ok {
		return
	}
	pw, err := decodePassword(body)
	if err != nil {
		a.writeCoded(w, err)
		return
	}
	id, ok := opID(w, r)
	if !ok {
		return
	}
	if err := a.opts.Auth.SetPassword(r.PathValue("app"), r.PathValue("user"), pw); err != nil {
		a.writeCoded(w, err)
		return
	}
	op := &pb.Event{App: r.PathValue("app"), ClientOpId: id, Kind: pb.Kind_KIND_PASSWORD_CHANGE, Actor: actor(r, p)}
	if d, ok := a.decide(w, r, op); ok {
		writeProto(w, http.StatusOK, d)
	}
}

// removeUser ends every session with 207 through the log, then removes the
// credential. In that order a failure half-way leaves the user able to retry
// the removal (the credential still exists); the other order would leave
// devices online for a user that can no longer be addressed.
func (a *api) removeUser(w http.ResponseWriter, r *http.Request, _ principal) {
	if !validPath(w, r, "app", "user") || !a.needAuth(w) {
		return
	}
	app, user := r.PathValue("app"), r.PathValue("user")
	if ok, err := a.opts.Auth.Exists(app, user); err != nil {
		a.writeCoded(w, err)
		return
	} else if !ok {
		writeError(w, http.StatusNotFound, engine.CodeNotFound, "user "+user+" does not exist")
		return
	}
	id, ok := opID(w, r)
	if !ok {
		return
	}
	op := &pb.Event{App: app, ClientOpId: id, Kind: pb.Kind_KIND_USER_REMOVE, Actor: &pb.Actor{User: user, Admin: true}}
	d, ok := a.decide(w, r, op)
	if !ok {
		return
	}
	if err := a.opts.Auth.Remove(app, user); err != nil {
		a.writeCoded(w, err)
		return
	}
	writeProto(w, http.StatusOK, d)
}

type tokenResponse struct {
	Token           string `json:"token"`
	ExpiresAtUnixMs int64  `json:"expires_at_unix_ms"`
}

func (a *api) issueToken(w http.ResponseWriter, r *http.Request, _ principal) {
	if !validPath(w, r, "app", "user") || !a.needAuth(w) {
		return
	}
	body, ok := readBody(w, r, MaxSmallBodyBytes)
	if !ok {
		return
	}
	ttl, err := decodeTokenRequest(body)
	if err != nil {
		a.writeCoded(w, err)
		return
	}
	tok, exp, err := a.opts.Auth.IssueToken(r.PathValue("app"), r.PathValue("user"), ttl)
	if err != nil {
		a.writeCoded(w, err)
		return
	}
	writeJSON(w, http.StatusOK, tokenResponse{Token: tok, ExpiresAtUnixMs: exp.UnixMilli()})
}

// device is one entry of fetchLoggedInDevices: the session as the log
// decided it, what the log recorded of its connections (last seen, remote
// address), and whether it is connected now, which only the gateway
// serving it knows: the owner of the user's partition, which answers this
// read on every process (servedHere).
type device struct {
	LoginID         string `json:"login_id"`
	Platform        int32  `json:"platform"`
	DeviceName      string `json:"device_name"`
	Extension       string `json:"extension"`
	LoginTimeUnixMs int64  `json:"login_time_unix_ms"`
	LastSeenUnixMs  int64  `json:"last_seen_unix_ms"`
	RemoteAddr      string `json:"remote_addr"`
	Connected       bool   `json:"connected"`
	// Process serves the connected device ("" when not connected).
	Process string `json:"process"`
}

// devicesOf reads the path's app and user, their active sessions and
// presence; it answers the request itself (400 or 503) when it returns
// ok=false. Both device lists (ours and the Easemob alias) start with it.
func (a *api) devicesOf(w http.ResponseWriter, r *http.Request) ([]device, bool) {
	if !validPath(w, r, "app", "user") {
		return nil, false
	}
	app, user := r.PathValue("app"), r.PathValue("user")
	ss, err := a.sessions.Devices(app, user)
	var pres map[string]*pb.Presence
	if err == nil {
		pres, err = a.sessions.Presence(app, user)
	}
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, engine.CodeUnavailable, err.Error())
		return nil, false
	}
	out := make([]device, 0, len(ss))
	for _, s := range ss {
		d := device{LoginID: s.LoginId, Platform: s.Platform, DeviceName: s.DeviceName, Extension: s.Extension,
			LoginTimeUnixMs: s.LoginTimeUnixMs}
		p, logged := pres[s.LoginId]
		if logged {
			d.LastSeenUnixMs, d.RemoteAddr = p.LastSeenUnixMs, p.RemoteAddr
		}
		if a.opts.Presence != nil {
			// A connection the log records on another process, or on an
			// earlier run of this one, is not live: only this gateway's
			// connections are (the device's login went to this owner).
			seen, remote, connected := a.opts.Presence.DeviceInfo(app, user, s.LoginId)
			if connected || (!logged && !seen.IsZero()) {
				d.LastSeenUnixMs, d.RemoteAddr, d.Connected = seen.UnixMilli(), remote, connected
			}
			if connected {
				d.Process = a.opts.Process
			}
		}
		out = append(out, d)
	}
	return out, true
}

func (a *api) devices(w http.ResponseWriter, r *http.Request, _ principal) {
	out, ok := a.devicesOf(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, map[string][]device{"devices": out})
}

// kickDevice ends one session with 217 (kickDevice; works without being
// logged in). 404/1005 when that device is not logged in.
func (a *api) kickDevice(w http.ResponseWriter, r *http.Request, p principal) {
	if !validPath(w, r, "app", "user", "login_id") {
		return
	}
	id, ok := opID(w, r)
	if !ok {
		return
	}
	op := &pb.Event{App: r.PathValue("app"), ClientOpId: id, Kind: pb.Kind_KIND_KICK_DEVICE, Actor: actor(r, p),
		Payload: &pb.Event_KickDevice{KickDevice: &pb.KickDevice{LoginId: r.PathValue("login_id")}}}
	if d, ok := a.decide(w, r, op); ok {
		writeProto(w, http.StatusOK, d)
	}
}

// kickAll ends every session of the user with 217 (kickAllDevices).
func (a *api) kickAll(w http.ResponseWriter, r *http.Request, p principal) {
	if !validPath(w, r, "app", "user") {
		return
	}
	id, ok := opID(w, r)
	if !ok {
		return
	}
	op := &pb.Event{App: r.PathValue("app"), ClientOpId: id, Kind: pb.Kind_KIND_KICK_ALL_DEVICES, Actor: actor(r, p)}
	if d, ok := a.decide(w, r, op); ok {
		writeProto(w, http.StatusOK, d)
	}
}

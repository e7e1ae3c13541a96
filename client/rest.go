package client

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// maxResponseBytes bounds a REST response body.
const maxResponseBytes = 8 << 20

// REST is a client of mdsync's HTTP API (users, devices, policy,
// operations). Every failure with a code is an *Error.
type REST struct {
	base string
	hc   *http.Client
	// ReturnBusy makes a call refused as busy (429/1019) return at once,
	// its *Error carrying the server's RetryAfter, instead of being sent
	// again (Config.ReturnBusy for the REST API): for callers that count
	// refusals or schedule their own retries, such as load generators.
	ReturnBusy bool
}

// NewREST returns a client of the API at baseURL (http://127.0.0.1:8080).
// hc nil uses a client with a 30s timeout.
func NewREST(baseURL string, hc *http.Client) *REST {
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	return &REST{base: strings.TrimRight(baseURL, "/"), hc: hc}
}

// Credential authenticates one REST call: the admin token, or the user's
// password (HTTP Basic) or token. The first set one is used, admin first.
type Credential struct {
	Password, Token, Admin string
}

// Device is one logged-in device of a user.
type Device struct {
	LoginID         string `json:"login_id"`
	Platform        int32  `json:"platform"`
	DeviceName      string `json:"device_name"`
	Extension       string `json:"extension"`
	LoginTimeUnixMs int64  `json:"login_time_unix_ms"`
	LastSeenUnixMs  int64  `json:"last_seen_unix_ms"`
	RemoteAddr      string `json:"remote_addr"`
	Connected       bool   `json:"connected"`
	// Process serves the connected device (its host:port); "" when not
	// connected.
	Process string `json:"process"`
}

// Token is an issued user token.
type Token struct {
	Token           string `json:"token"`
	ExpiresAtUnixMs int64  `json:"expires_at_unix_ms"`
}

func (t Token) ExpiresAt() time.Time { return time.UnixMilli(t.ExpiresAtUnixMs) }

func (cr Credential) header(user string) string {
	switch {
	case cr.Admin != "":
		return "Bearer " + cr.Admin
	case cr.Token != "":
		return "Bearer " + cr.Token
	case cr.Password != "":
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+cr.Password))
	}
	return ""
}

func path(parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(p))
	}
	return b.String()
}

// do sends a request, again after Retry-After while a retry cures its refusal
// (retryable, at most maxRetries attempts, within ctx). body is JSON-encoded (a proto.Message with the
// protobuf mapping); out, when not nil, receives the 2xx body.
func (r *REST) do(ctx context.Context, method, p, auth string, body any, out any) error {
	var b []byte
	if body != nil {
		var err error
		if m, ok := body.(proto.Message); ok {
			b, err = pjson.Marshal(m)
		} else {
			b, err = json.Marshal(body)
		}
		if err != nil {
			return &Error{Code: CodeInvalidArgument, Message: err.Error()}
		}
	}
	for attempt := 1; ; attempt++ {
		err := r.once(ctx, method, p, auth, b, body != nil, out)
		var e *Error
		if !errors.As(err, &e) || !retryable(method, e) || attempt == maxRetries || r.ReturnBusy && e.Code == CodeBusy {
			return err
		}
		wait := e.RetryAfter
		if wait <= 0 {
			wait = 200 * time.Millisecond
		}
		select {
		case <-time.After(min(wait, 5*time.Second)):
		case <-ctx.Done():
			return err
		}
	}
}

// maxRetries bounds the attempts of one request refused with a code a
// retry cures.
const maxRetries = 5

// retryable: 429/1019 (busy: not decided) and 503/1018 (no owner known yet:
// nothing appended) are sent again after Retry-After; any 503 of a read
// too. A write refused with 503/1009 is not: it may have been appended, and
// only the caller knows whether repeating it is harmless.
func retryable(method string, e *Error) bool {
	switch {
	case e.Code == CodeBusy, e.Code == CodeNotOwner && e.HTTPStatus == http.StatusServiceUnavailable:
		return true
	case method == http.MethodGet && e.HTTPStatus == http.StatusServiceUnavailable:
		return true
	}
	return false
}

// once sends one request and decodes its answer.
func (r *REST) once(ctx context.Context, method, p, auth string, b []byte, hasBody bool, out any) error {
	var rd io.Reader
	if hasBody {
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.base+p, rd)
	if err != nil {
		return err
	}
	if hasBody {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		e := &Error{HTTPStatus: resp.StatusCode}
		var body struct {
			Code         int32  `json:"code"`
			Message      string `json:"message"`
			RetryAfterMs int64  `json:"retry_after_ms"`
		}
		if json.Unmarshal(data, &body) == nil {
			e.Code, e.Message = body.Code, body.Message
			e.RetryAfter = time.Duration(body.RetryAfterMs) * time.Millisecond
		}
		if sec, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && e.RetryAfter == 0 {
			e.RetryAfter = time.Duration(sec) * time.Second
		}
		if e.Code == 0 {
			e.Code, e.Message = statusCode(resp.StatusCode), strings.TrimSpace(string(data))
			if e.Message == "" {
				e.Message = resp.Status
			}
		}
		return e
	}
	if out == nil {
		return nil
	}
	if m, ok := out.(proto.Message); ok {
		err = pread.Unmarshal(data, m)
	} else {
		err = json.Unmarshal(data, out)
	}
	if err != nil {
		return fmt.Errorf("client: %s %s: bad response: %w", method, p, err)
	}
	return nil
}

// UnmarshalJSON reads the API's error body {"code","message"}.
func (e *Error) UnmarshalJSON(b []byte) error {
	var w struct {
		Code    int32  `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	e.Code, e.Message = w.Code, w.Message
	return nil
}

// statusCode maps an HTTP status without an error body to a code.
func statusCode(status int) int32 {
	switch status {
	case http.StatusUnauthorized:
		return CodeUnauthenticated
	case http.StatusForbidden:
		return CodeForbidden
	case http.StatusNotFound:
		return CodeNotFound
	case http.StatusTooManyRequests:
		return CodeRateLimited
	case http.StatusRequestEntityTooLarge:
		return CodeTooLarge
	case http.StatusConflict:
		return CodeConflict
	}
	if status >= 500 {
		return 1009 // unavailable
	}
	return CodeInvalidArgument
}

// decision calls the API and turns a refused decision into an *Error.
func (r *REST) decision(ctx context.Context, method, p, auth string, body any) (*pb.Decision, error) {
	d := &pb.Decision{}
	if err := r.do(ctx, method, p, auth, body, d); err != nil {
		return nil, err
	}
	if d.Code != 0 {
		return d, &Error{Code: d.Code, Message: d.Message, HTTPStatus: http.StatusOK}
	}
	return d, nil
}

// RegisterUser creates a user with a password (admin).
func (r *REST) RegisterUser(ctx context.Context, app, user, password string, cred Credential) error {
	return r.do(ctx, http.MethodPost, "/v1/apps"+path(app, "users"), cred.header(user),
		map[string]string{"user": user, "password": password}, nil)
}

// ChangePassword sets a new password (admin, or the user's password); every
// device of the user is logged out with 216.
func (r *REST) ChangePassword(ctx context.Context, app, user, newPassword string, cred Credential) (*pb.Decision, error) {
	return r.decision(ctx, http.MethodPut, "/v1/apps"+path(app, "users", user, "password"), cred.header(user),
		map[string]string{"new_password": newPassword})
}

// RemoveUser removes a user (admin); its devices get 207.
func (r *REST) RemoveUser(ctx context.Context, app, user string, cred Credential) (*pb.Decision, error) {
	return r.decision(ctx, http.MethodDelete, "/v1/apps"+path(app, "users", user), cred.header(user), nil)
}

// RevokeTokens refuses every token of the user issued before it, on every
// process (admin, or the user's password); the password and the logged-in
// devices stay.
func (r *REST) RevokeTokens(ctx context.Context, app, user string, cred Credential) (*pb.Decision, error) {
	return r.decision(ctx, http.MethodPost, "/v1/apps"+path(app, "users", user, "tokens", "revoke"), cred.header(user), nil)
}

// IssueToken issues a user token valid for ttl (admin or the user's
// password).
func (r *REST) IssueToken(ctx context.Context, app, user string, ttl time.Duration, cred Credential) (Token, error) {
	var t Token
	err := r.do(ctx, http.MethodPost, "/v1/apps"+path(app, "users", user, "tokens"), cred.header(user),
		map[string]int64{"ttl_seconds": int64(ttl / time.Second)}, &t)
	return t, err
}

// FetchLoggedInDevices lists the user's logged-in devices
// (fetchLoggedInDevices; no login needed, the password or token will do).
func (r *REST) FetchLoggedInDevices(ctx context.Context, app, user string, cred Credential) ([]Device, error) {
	var out struct {
		Devices []Device `json:"devices"`
	}
	err := r.do(ctx, http.MethodGet, "/v1/apps"+path(app, "users", user, "devices"), cred.header(user), nil, &out)
	return out.Devices, err
}

// KickDevice logs one device out (kickDevice); it gets 217.
func (r *REST) KickDevice(ctx context.Context, app, user, loginID string, cred Credential) error {
	_, err := r.KickDeviceDecision(ctx, app, user, loginID, cred)
	return err
}

// KickDeviceDecision is KickDevice returning the decision.
func (r *REST) KickDeviceDecision(ctx context.Context, app, user, loginID string, cred Credential) (*pb.Decision, error) {
	return r.decision(ctx, http.MethodDelete, "/v1/apps"+path(app, "users", user, "devices", loginID), cred.header(user), nil)
}

// KickAllDevices logs every device of the user out (kickAllDevices).
func (r *REST) KickAllDevices(ctx context.Context, app, user string, cred Credential) error {
	_, err := r.KickAllDevicesDecision(ctx, app, user, cred)
	return err
}

// KickAllDevicesDecision is KickAllDevices returning the decision.
func (r *REST) KickAllDevicesDecision(ctx context.Context, app, user string, cred Credential) (*pb.Decision, error) {
	return r.decision(ctx, http.MethodDelete, "/v1/apps"+path(app, "users", user, "devices"), cred.header(user), nil)
}

// GetPolicy returns the app's device policy (admin).
func (r *REST) GetPolicy(ctx context.Context, app string, cred Credential) (*pb.Policy, error) {
	p := &pb.Policy{}
	if err := r.do(ctx, http.MethodGet, "/v1/apps"+path(app, "policy"), cred.header(""), nil, p); err != nil {
		return nil, err
	}
	return p, nil
}

// SetPolicy installs a policy (admin); its version must exceed the current.
func (r *REST) SetPolicy(ctx context.Context, app string, ps *pb.PolicySet, cred Credential) (*pb.Decision, error) {
	return r.decision(ctx, http.MethodPut, "/v1/apps"+path(app, "policy"), cred.header(""), ps)
}

// Submit performs any operation as the admin (POST /v1/operations).
func (r *REST) Submit(ctx context.Context, ev *pb.Event, cred Credential) (*pb.Decision, error) {
	return r.decision(ctx, http.MethodPost, "/v1/operations", cred.header(""), ev)
}

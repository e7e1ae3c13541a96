package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// tinyArgon keeps tests fast; production parameters are tested once.
var tinyArgon = Argon2Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}

var testKey = []byte("0123456789abcdef0123456789abcdef")

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fixture is a Store following the log of an embedded node, with the
// account operations submitted through the node's engine as the REST API
// submits them: hash here, append, wait until this store applied it.
type fixture struct {
	*Store
	n     *node.Node
	start int64 // op ids differ between fixtures on one log
	op    atomic.Int64
}

func open(t *testing.T, dir string, mod func(*Options)) (*fixture, *clock) {
	t.Helper()
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	n, err := node.New(context.Background(), node.Options{Dir: dir, Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Dir: filepath.Join(dir, "accounts"), Log: n.Log, TokenKey: testKey, Now: c.Now, Argon2: tinyArgon}
	if mod != nil {
		mod(&o)
	}
	s, err := Open(o)
	if err != nil {
		n.Close()
		t.Fatal(err)
	}
	f := &fixture{Store: s, n: n, start: time.Now().UnixNano()}
	t.Cleanup(func() { f.Close() })
	return f, c
}

func (f *fixture) Close() error { return errors.Join(f.Store.Close(), f.n.Close()) }

// submit appends an account operation of user and waits until f applied it;
// a refusal is returned as the *engine.Error it carries.
func (f *fixture) submit(app, user string, kind pb.Kind, password string) error {
	op := &pb.Event{App: app, Kind: kind, ClientOpId: fmt.Sprintf("op%d-%d", f.start, f.op.Add(1)), Actor: &pb.Actor{User: user, Admin: true}}
	if kind == pb.Kind_KIND_USER_REGISTER || kind == pb.Kind_KIND_PASSWORD_CHANGE {
		h, err := f.HashPassword(password)
		if err != nil {
			return err
		}
		op.Payload = &pb.Event_Credential{Credential: &pb.Credential{PasswordHash: h}}
	}
	d, err := f.n.Engine.Submit(context.Background(), op)
	if err != nil {
		return err
	}
	if err := f.WaitApplied(context.Background(), engine.Position{Partition: d.Partition, Offset: d.Offset}); err != nil {
		return err
	}
	if d.Code != 0 {
		return engine.Errorf(engine.Code(d.Code), "%s", d.Message)
	}
	return nil
}

func (f *fixture) Register(app, user, pw string) error {
	return f.submit(app, user, pb.Kind_KIND_USER_REGISTER, pw)
}
func (f *fixture) SetPassword(app, user, pw string) error {
	return f.submit(app, user, pb.Kind_KIND_PASSWORD_CHANGE, pw)
}
func (f *fixture) Remove(app, user string) error {
	return f.submit(app, user, pb.Kind_KIND_USER_REMOVE, "")
}
func (f *fixture) Revoke(app, user string) error {
	return f.submit(app, user, pb.Kind_KIND_TOKENS_REVOKE, "")
}

// hashOf is the stored hash of a user.
func (f *fixture) hashOf(t *testing.T, app, user string) string {
	t.Helper()
	a, ok, err := f.accounts.Account(app, user)
	if err != nil || !ok {
		t.Fatalf("account %s/%s: %v %v", app, user, ok, err)
	}
	return a.PasswordHash
}

func counter(s *fixture, result string) float64 {
	var m dto.Metric
	s.checks.WithLabelValues(result).Write(&m)
	return m.GetCounter().GetValue()
}

func wantCode(t *testing.T, err error, code engine.Code, what string) {
	t.Helper()
	if engine.CodeOf(err) != code {
		t.Fatalf("%s: got %v, want code %d", what, err, code)
	}
}

func TestRegisterAndCheck(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, _ := open(t, t.TempDir(), func(o *Options) { o.Registerer = reg })
	if err := s.Register("demo", "alice", "password1"); err != nil {
		t.Fatal(err)
	}
	wantCode(t, s.Register("demo", "alice", "password2"), engine.CodeConflict, "register twice")
	wantCode(t, s.CheckPassword("demo", "alice", "password1", "10.0.0.1:5000"), engine.CodeOK, "right password")
	wantCode(t, s.CheckPassword("demo", "alice", "password2", "10.0.0.1:5000"), engine.CodeUnauthenticated, "wrong password")
	wantCode(t, s.CheckPassword("demo", "bob", "password1", "10.0.0.1:5000"), engine.CodeUnauthenticated, "unknown user")
	wantCode(t, s.CheckPassword("other", "alice", "password1", "10.0.0.1:5000"), engine.CodeUnauthenticated, "other app")
	if ok, err := s.Exists("demo", "alice"); !ok || err != nil {
		t.Fatalf("Exists(alice) = %v %v", ok, err)
	}
	if ok, err := s.Exists("demo", "bob"); ok || err != nil {
		t.Fatalf("Exists(bob) = %v %v", ok, err)
	}
	if got := counter(s, "denied"); got != 3 {
		t.Fatalf("denied checks = %v, want 3", got)
	}
	if got := counter(s, "ok"); got != 1 {
		t.Fatalf("ok checks = %v, want 1", got)
	}
	// The stored hash is a PHC string with the configured parameters.
	if h := s.hashOf(t, "demo", "alice"); !strings.HasPrefix(h, "$argon2id$v=19$m=64,t=1,p=1$") {
		t.Fatalf("stored hash %q", h)
	}
}

func TestLimits(t *testing.T) {
	s, _ := open(t, t.TempDir(), nil)
	for _, c := range []struct {
		app, user, pw string
		code          engine.Code
	}{
		{"demo", "alice", "short", engine.CodeInvalidArgument},
		{"demo", "alice", strings.Repeat("p", MaxPasswordBytes+1), engine.CodeInvalidArgument},
		{"demo", "al/ice", "password1", engine.CodeInvalidArgument},
		{"", "alice", "password1", engine.CodeMissingField},
		{"demo", strings.Repeat("u", engine.MaxIDBytes+1), "password1", engine.CodeTooLarge},
	} {
		wantCode(t, s.Register(c.app, c.user, c.pw), c.code, "register "+c.user)
	}
	if err := s.Register("demo", "alice", strings.Repeat("p", MaxPasswordBytes)); err != nil {
		t.Fatal(err)
	}
	if err := s.Register("demo", "bob", strings.Repeat("p", MinPasswordBytes)); err != nil {
		t.Fatal(err)
	}
	wantCode(t, s.CheckPassword("demo", "alice", strings.Repeat("p", MaxPasswordBytes+1), "r"), engine.CodeUnauthenticated, "overlong password")
	wantCode(t, s.SetPassword("demo", "alice", "x"), engine.CodeInvalidArgument, "short new password")
	wantCode(t, s.SetPassword("demo", "nobody", "password1"), engine.CodeNotFound, "set password of unknown user")
	wantCode(t, s.Remove("demo", "nobody"), engine.CodeNotFound, "remove unknown user")
	wantCode(t, s.Revoke("demo", "nobody"), engine.CodeNotFound, "revoke tokens of unknown user")
	_, _, err := s.IssueToken("demo", "alice", MaxTokenTTL+time.Second)
	wantCode(t, err, engine.CodeInvalidArgument, "ttl over 30 days")
	_, _, err = s.IssueToken("demo", "alice", -time.Second)
	wantCode(t, err, engine.CodeInvalidArgument, "negative ttl")
	_, _, err = s.IssueToken("demo", "nobody", 0)
	wantCode(t, err, engine.CodeNotFound, "token for unknown user")
	_, _, err = s.VerifyToken(TokenPrefix + strings.Repeat("a", MaxTokenBytes))
	wantCode(t, err, engine.CodeUnauthenticated, "oversized token")

	lg := s.n.Log
	for _, o := range []Options{
		{Dir: t.TempDir(), Log: lg, TokenKey: testKey[:31]},
		{Dir: t.TempDir(), Log: lg, TokenKey: testKey, TokenTTL: MaxTokenTTL + time.Hour},
		{Dir: t.TempDir(), Log: lg, TokenKey: testKey, Argon2: Argon2Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 4, KeyLen: 32}},
		{Dir: "", Log: lg, TokenKey: testKey},
		{Dir: t.TempDir(), TokenKey: testKey},
	} {
		if s, err := Open(o); err == nil {
			s.Close()
			t.Fatalf("Open(%+v) accepted", o)
		}
	}
}

func TestTokens(t *testing.T) {
	s, clk := open(t, t.TempDir(), func(o *Options) { o.TokenTTL = time.Hour })
	for _, u := range []string{"alice", "bob"} {
		if err := s.Register("demo", u, "password1"); err != nil {
			t.Fatal(err)
		}
	}
	tok, exp, err := s.IssueToken("demo", "alice", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, TokenPrefix) || !exp.Equal(clk.Now().Add(time.Hour)) {
		t.Fatalf("token %q expires %v", tok, exp)
	}
	if app, user, err := s.VerifyToken(tok); err != nil || app != "demo" || user != "alice" {
		t.Fatalf("VerifyToken = %q %q %v", app, user, err)
	}
	wantCode(t, s.Authenticate("demo", "alice", "", tok, "r"), engine.CodeOK, "authenticate by token")
	wantCode(t, s.Authenticate("demo", "bob", "", tok, "r"), engine.CodeUnauthenticated, "alice's token for bob")
	wantCode(t, s.Authenticate("demo", "bob", "password1", tok, "r"), engine.CodeOK, "password wins over token")
	wantCode(t, s.Authenticate("demo", "bob", "", "", "r"), engine.CodeUnauthenticated, "no credential")

	// Tampering: a changed payload, a changed signature, a foreign key.
	payload, sig, _ := strings.Cut(strings.TrimPrefix(tok, TokenPrefix), ".")
	raw, _ := base64.RawURLEncoding.DecodeString(payload)
	forged := TokenPrefix + base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(raw), `"alice"`, `"bob"`, 1))) + "." + sig
	sigb, _ := base64.RawURLEncoding.DecodeString(sig)
	sigb[0] ^= 1
	flipped := TokenPrefix + payload + "." + base64.RawURLEncoding.EncodeToString(sigb)
	other, _ := open(t, t.TempDir(), func(o *Options) { o.TokenKey = []byte(strings.Repeat("k", 32)) })
	if err := other.Register("demo", "alice", "password1"); err != nil {
		t.Fatal(err)
	}
	foreign, _, _ := other.IssueToken("demo", "alice", 0)
	for name, bad := range map[string]string{
		"forged payload": forged, "flipped signature": flipped, "foreign key": foreign,
		"empty": "", "no prefix": strings.TrimPrefix(tok, TokenPrefix), "no signature": TokenPrefix + payload,
		"garbage": TokenPrefix + "!!.!!",
	} {
		_, _, err := s.VerifyToken(bad)
		wantCode(t, err, engine.CodeUnauthenticated, name)
	}

	// Expiry, by the injected clock.
	short, _, err := s.IssueToken("demo", "alice", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(59 * time.Second)
	if _, _, err := s.VerifyToken(short); err != nil {
		t.Fatalf("token before expiry: %v", err)
	}
	clk.Add(time.Second)
	_, _, err = s.VerifyToken(short)
	wantCode(t, err, engine.CodeUnauthenticated, "expired token")

	// SetPassword revokes earlier tokens; new ones verify.
	if err := s.SetPassword("demo", "alice", "password2"); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.VerifyToken(tok)
	wantCode(t, err, engine.CodeUnauthenticated, "token after password change")
	wantCode(t, s.CheckPassword("demo", "alice", "password1", "r"), engine.CodeUnauthenticated, "old password")
	wantCode(t, s.CheckPassword("demo", "alice", "password2", "r"), engine.CodeOK, "new password")
	tok2, _, _ := s.IssueToken("demo", "alice", 0)
	if _, _, err := s.VerifyToken(tok2); err != nil {
		t.Fatal(err)
	}

	// A revocation refuses every earlier token and keeps the password.
	if err := s.Revoke("demo", "alice"); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.VerifyToken(tok2)
	wantCode(t, err, engine.CodeUnauthenticated, "token after revocation")
	wantCode(t, s.CheckPassword("demo", "alice", "password2", "r"), engine.CodeOK, "password after revocation")
	tok2, _, _ = s.IssueToken("demo", "alice", 0)

	// Remove revokes, and registering the name again does not revive them.
	if err := s.Remove("demo", "alice"); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.VerifyToken(tok2)
	wantCode(t, err, engine.CodeUnauthenticated, "token after remove")
	wantCode(t, s.CheckPassword("demo", "alice", "password2", "r2"), engine.CodeUnauthenticated, "password after remove")
	if ok, _ := s.Exists("demo", "alice"); ok {
		t.Fatal("removed user exists")
	}
	if err := s.Register("demo", "alice", "password2"); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.VerifyToken(tok2)
	wantCode(t, err, engine.CodeUnauthenticated, "old token after re-register")
}

func TestBruteForce(t *testing.T) {
	s, clk := open(t, t.TempDir(), nil) // defaults: burst 10, one per 6s
	for _, u := range []string{"alice", "bob"} {
		if err := s.Register("demo", u, "password1"); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 10; i++ {
		wantCode(t, s.CheckPassword("demo", "alice", "guess"+string(rune('a'+i))+"xxxx", "10.0.0.1:1"), engine.CodeUnauthenticated, "guess")
	}
	// The burst is spent: even the right password is refused, from any IP.
	wantCode(t, s.CheckPassword("demo", "alice", "password1", "10.0.0.2:1"), engine.CodeRateLimited, "after burst")
	// Another user from another IP is unaffected.
	wantCode(t, s.CheckPassword("demo", "bob", "password1", "10.0.0.3:1"), engine.CodeOK, "bob")
	// The attacking IP is spent too, for every user.
	wantCode(t, s.CheckPassword("demo", "bob", "password1", "10.0.0.1:2"), engine.CodeRateLimited, "attacker IP on bob")
	// One attempt refills every 6s; a right password spends nothing, a
	// wrong one spends the refilled attempt.
	clk.Add(6 * time.Second)
	wantCode(t, s.CheckPassword("demo", "alice", "password1", "10.0.0.4:1"), engine.CodeOK, "after refill")
	wantCode(t, s.CheckPassword("demo", "alice", "password1", "10.0.0.4:1"), engine.CodeOK, "a success spends nothing")
	wantCode(t, s.CheckPassword("demo", "alice", "wrong-guess", "10.0.0.4:1"), engine.CodeUnauthenticated, "guess after refill")
	wantCode(t, s.CheckPassword("demo", "alice", "password1", "10.0.0.4:1"), engine.CodeRateLimited, "refill is one")
}

// TestSharedAddressNotLimited: many users behind one address (a NAT, a
// load generator) who type their passwords right are never limited.
func TestSharedAddressNotLimited(t *testing.T) {
	s, _ := open(t, t.TempDir(), nil)
	for i := 0; i < 5; i++ {
		if err := s.Register("demo", fmt.Sprintf("u%d", i), "password1"); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 40; i++ {
		wantCode(t, s.CheckPassword("demo", fmt.Sprintf("u%d", i%5), "password1", "10.9.9.9:1"), engine.CodeOK, "shared address")
	}
}

func TestLimiterBound(t *testing.T) {
	s, clk := open(t, t.TempDir(), func(o *Options) { o.MaxLimiters = 3 })
	if err := s.Register("demo", "alice", "password1"); err != nil {
		t.Fatal(err)
	}
	// Failures are what limiters count: three addresses fill the map.
	for _, ip := range []string{"a", "b", "c"} {
		wantCode(t, s.CheckPassword("demo", "alice", "wrong-pw", ip), engine.CodeUnauthenticated, ip)
	}
	if n := s.ips.size(); n != 3 {
		t.Fatalf("ip limiters = %d, want 3", n)
	}
	// Full of limiters still refilling: a new IP is refused, not admitted
	// by forgetting someone's budget.
	wantCode(t, s.CheckPassword("demo", "alice", "password1", "d"), engine.CodeRateLimited, "new IP while full")
	// Once they have refilled they are evicted and new keys get room.
	clk.Add(time.Minute)
	wantCode(t, s.CheckPassword("demo", "alice", "password1", "d"), engine.CodeOK, "new IP after idle")
	wantCode(t, s.CheckPassword("demo", "alice", "wrong-pw", "d"), engine.CodeUnauthenticated, "a failure from d")
	if n := s.ips.size(); n != 1 {
		t.Fatalf("ip limiters after sweep = %d, want 1", n)
	}
}

func TestReopenKeepsUsers(t *testing.T) {
	dir := t.TempDir()
	s, _ := open(t, dir, nil)
	if err := s.Register("demo", "alice", "password1"); err != nil {
		t.Fatal(err)
	}
	tok, _, err := s.IssueToken("demo", "alice", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = s.Exists("demo", "alice")
	wantCode(t, err, engine.CodeUnavailable, "read after close")
	s2, _ := open(t, dir, nil)
	wantCode(t, s2.CheckPassword("demo", "alice", "password1", "r"), engine.CodeOK, "password after reopen")
	if _, _, err := s2.VerifyToken(tok); err != nil {
		t.Fatalf("token after reopen: %v", err)
	}
	wantCode(t, s2.Register("demo", "alice", "password1"), engine.CodeConflict, "register after reopen")
}

func TestProductionParams(t *testing.T) {
	s, _ := open(t, t.TempDir(), func(o *Options) { o.Argon2 = Argon2Params{} })
	if err := s.Register("demo", "alice", "password1"); err != nil {
		t.Fatal(err)
	}
	h := s.hashOf(t, "demo", "alice")
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("hash %q", h)
	}
	p, salt, key, err := parsePHC(h)
	if err != nil || p != DefaultArgon2 || len(salt) != 16 || len(key) != 32 {
		t.Fatalf("parsePHC: %+v %d %d %v", p, len(salt), len(key), err)
	}
	wantCode(t, s.CheckPassword("demo", "alice", "password1", "r"), engine.CodeOK, "production params")
	wantCode(t, s.CheckPassword("demo", "alice", "password2", "r"), engine.CodeUnauthenticated, "production params, wrong")
}

func TestParsePHCRejects(t *testing.T) {
	for _, phc := range []string{
		"", "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=16$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=64,t=1,p=1$!!$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
	} {
		if _, _, _, err := parsePHC(phc); err == nil {
			t.Fatalf("parsePHC(%q) accepted", phc)
		}
	}
}

// An account whose hash is engine.RedactedHash (a replayed export) exists
// but refuses every password, like a wrong one: no password is restored.
func TestRedactedHashRefusesEveryPassword(t *testing.T) {
	s, _ := open(t, t.TempDir(), nil)
	op := &pb.Event{App: "demo", Kind: pb.Kind_KIND_USER_REGISTER, ClientOpId: "replayed", Actor: &pb.Actor{User: "alice", Admin: true},
		Payload: &pb.Event_Credential{Credential: &pb.Credential{PasswordHash: engine.RedactedHash}}}
	d, err := s.n.Engine.Submit(context.Background(), op)
	if err != nil || d.Code != 0 {
		t.Fatalf("register: %v %v", d, err)
	}
	if err := s.WaitApplied(context.Background(), engine.Position{Partition: d.Partition, Offset: d.Offset}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.Exists("demo", "alice"); !ok {
		t.Fatal("the replayed account does not exist")
	}
	for _, pw := range []string{engine.RedactedHash, "password1", ""} {
		wantCode(t, s.CheckPassword("demo", "alice", pw, "r"), engine.CodeUnauthenticated, "password "+pw)
	}
	// An admin sets a password: it works from then on.
	if err := s.SetPassword("demo", "alice", "password2"); err != nil {
		t.Fatal(err)
	}
	wantCode(t, s.CheckPassword("demo", "alice", "password2", "r"), engine.CodeOK, "password set after the replay")
}

// slowLog delays every read, so a store following it lags behind the log.
type slowLog struct{ engine.Log }

func (l slowLog) Read(ctx context.Context, p int32, from int64, max int) ([]engine.Entry, error) {
	select {
	case <-time.After(300 * time.Millisecond):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return l.Log.Read(ctx, p, from, max)
}

// A check that would fail first brings the store to the end of the user's
// partition: an account registered, and a token issued, through another
// process a moment ago are accepted by a process whose follower lags.
func TestLaggingStoreCatchesUpBeforeRefusing(t *testing.T) {
	f, c := open(t, t.TempDir(), nil)
	lag, err := Open(Options{Dir: filepath.Join(t.TempDir(), "lagging"), Log: slowLog{f.n.Log}, TokenKey: testKey, Argon2: tinyArgon, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer lag.Close()
	for i := range 3 {
		user := fmt.Sprintf("late%d", i)
		if err := f.Register("app", user, "password-1"); err != nil {
			t.Fatal(err)
		}
		// f applied the registration; lag has not (each of its reads takes
		// 300 ms), and must not answer "bad credentials" for it.
		if err := lag.CheckPassword("app", user, "password-1", "192.0.2.1:1"); err != nil {
			t.Fatalf("%s: password refused by a lagging store: %v", user, err)
		}
		if err := lag.CheckPassword("app", user, "wrong-password", "192.0.2.1:1"); engine.CodeOf(err) != engine.CodeUnauthenticated {
			t.Fatalf("%s: wrong password: %v", user, err)
		}
		if err := f.SetPassword("app", user, "password-2"); err != nil {
			t.Fatal(err)
		}
		tok, _, err := f.IssueToken("app", user, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := lag.VerifyToken(tok); err != nil {
			t.Fatalf("%s: a token of a newer epoch refused by a lagging store: %v", user, err)
		}
	}
}

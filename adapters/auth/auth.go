// Package auth checks user credentials: passwords against argon2id hashes,
// HMAC-signed user tokens, and rate limits on password checks. It decides
// who a caller is; what that caller may do is decided by the engine
// (invariant 7: nothing is trusted that a caller claims).
//
// Accounts are events of the log (engine.ApplyAccount): registration,
// password change, token revocation and removal are appended through the
// engine like any operation, ordered in the user's stream. A Store follows
// the account kinds of every partition of the log into its own Pebble
// database (projections.Accounts), so every process that shares the log
// authenticates every user. The password never enters the log: the process
// that receives it hashes it (HashPassword) and the event carries the hash.
//
// Every user has a credential epoch. Each account event bumps it, and a
// token carries the epoch it was issued under, so a password change, a
// revocation or a removal revokes every token issued before it without a
// revocation list. A removed user keeps a tombstone with its epoch, so
// registering the same name again cannot bring the old tokens back.
package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/argon2"
)

// Limits.
const (
	MinPasswordBytes = 8
	MaxPasswordBytes = 128
	MaxTokenTTL      = 30 * 24 * time.Hour
	DefaultTokenTTL  = 24 * time.Hour
	MinTokenKeyBytes = 32
	// MaxTokenBytes bounds a token before any decoding is attempted.
	MaxTokenBytes = 1024
	// TokenPrefix starts every user token; the digit is the format version.
	TokenPrefix = "mdt1."
)

// Argon2Params are the argon2id cost parameters of new hashes. Stored hashes
// carry their own parameters, so changing these re-costs only new passwords.
type Argon2Params struct {
	Memory  uint32 // KiB
	Time    uint32 // passes
	Threads uint8
	SaltLen uint32 // bytes
	KeyLen  uint32 // bytes
}

// DefaultArgon2 is the OWASP-recommended argon2id minimum (m=19 MiB, t=2, p=1).
var DefaultArgon2 = Argon2Params{Memory: 19456, Time: 2, Threads: 1, SaltLen: 16, KeyLen: 32}

// Bounds on parameters, applied to configured ones and to stored hashes, so
// a corrupt record cannot make one check allocate gigabytes.
const (
	maxArgonMemory  = 1 << 20 // 1 GiB
	maxArgonTime    = 16
	maxArgonThreads = 16
	minSaltLen      = 8
	maxSaltLen      = 64
	minKeyLen       = 16
	maxKeyLen       = 64
)

func (p Argon2Params) validate() error {
	switch {
	case p.Memory < 8*uint32(p.Threads) || p.Memory > maxArgonMemory:
		return fmt.Errorf("argon2 memory %d KiB is outside [8*threads,%d]", p.Memory, maxArgonMemory)
	case p.Time < 1 || p.Time > maxArgonTime:
		return fmt.Errorf("argon2 time %d is outside [1,%d]", p.Time, maxArgonTime)
	case p.Threads < 1 || p.Threads > maxArgonThreads:
		return fmt.Errorf("argon2 threads %d is outside [1,%d]", p.Threads, maxArgonThreads)
	case p.SaltLen < minSaltLen || p.SaltLen > maxSaltLen:
		return fmt.Errorf("argon2 salt length %d is outside [%d,%d]", p.SaltLen, minSaltLen, maxSaltLen)
	case p.KeyLen < minKeyLen || p.KeyLen > maxKeyLen:
		return fmt.Errorf("argon2 key length %d is outside [%d,%d]", p.KeyLen, minKeyLen, maxKeyLen)
	}
	return nil
}

// RateLimit is a token bucket: Burst checks at once, then one per Every.
type RateLimit struct {
	Burst int
	Every time.Duration
}

// Options configure a Store.
type Options struct {
	// Dir is the Pebble directory of the account projection (its own, with
	// its own checkpoint). Required.
	Dir string
	// Log is the log whose account events the store follows, every
	// partition of it, from Open until Close. Required.
	Log engine.Log
	// TokenKey is the HMAC-SHA256 key that signs tokens. Required, at
	// least 32 bytes. Changing it invalidates every token; processes that
	// share a log share their users, and must share the key.
	TokenKey []byte
	// TokenTTL is the lifetime of a token issued with ttl 0. Default 24h,
	// at most 30 days.
	TokenTTL time.Duration
	// Now is the clock of token expiry and rate limits. Default time.Now.
	Now func() time.Time
	// Argon2 are the parameters of new hashes; zero means DefaultArgon2.
	Argon2 Argon2Params
	// Registerer, optional, receives mdsync_auth_checks_total{result}.
	Registerer prometheus.Registerer
	// Logger; default slog.Default().
	Logger *slog.Logger
	// PerUser and PerRemote limit password checks per (app, user) and per
	// remote IP, in this process. Default: burst 10, then one per 6s each.
	PerUser, PerRemote RateLimit
	// MaxLimiters bounds each limiter map. Default 100_000. When a map is
	// full of limiters that are still refilling, checks from new keys are
	// refused (1014) rather than forgetting someone's spent budget.
	MaxLimiters int
	// MaxConcurrentHashes bounds argon2 computations in flight (each holds
	// Argon2.Memory KiB). Default 2*GOMAXPROCS.
	MaxConcurrentHashes int
	// CatchUpWait bounds how long a check that would fail first waits for
	// this store to reach the end of the user's partition (see fresh).
	// Default 2s; negative: never wait.
	CatchUpWait time.Duration
}

// Store is the credential checker over the account projection. It is safe
// for concurrent use.
type Store struct {
	opts     Options
	accounts *projections.Accounts
	cancel   context.CancelFunc
	done     chan struct{} // closed when the follower returned
	runErr   error         // the follower's error, once done
	dummy    string        // a PHC hash checked for unknown users (equal timing)
	hashes   chan struct{}
	users    *limiters
	ips      *limiters
	checks   *prometheus.CounterVec
}

// Open opens (or creates) the account projection in Dir and starts
// following Log's account events from its checkpoint.
func Open(o Options) (*Store, error) {
	if o.Dir == "" {
		return nil, errors.New("auth: Options.Dir is required")
	}
	if o.Log == nil {
		return nil, errors.New("auth: Options.Log is required")
	}
	if len(o.TokenKey) < MinTokenKeyBytes {
		return nil, fmt.Errorf("auth: Options.TokenKey must be at least %d bytes", MinTokenKeyBytes)
	}
	if o.TokenTTL == 0 {
		o.TokenTTL = DefaultTokenTTL
	}
	if o.TokenTTL < time.Second || o.TokenTTL > MaxTokenTTL {
		return nil, fmt.Errorf("auth: Options.TokenTTL %v is outside [1s,%v]", o.TokenTTL, MaxTokenTTL)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Argon2 == (Argon2Params{}) {
		o.Argon2 = DefaultArgon2
	}
	if err := o.Argon2.validate(); err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	for _, rl := range []*RateLimit{&o.PerUser, &o.PerRemote} {
		if *rl == (RateLimit{}) {
			*rl = RateLimit{Burst: 10, Every: 6 * time.Second}
		}
		if rl.Burst < 1 || rl.Every <= 0 {
			return nil, fmt.Errorf("auth: rate limit %+v needs Burst >= 1 and Every > 0", *rl)
		}
	}
	if o.MaxLimiters == 0 {
		o.MaxLimiters = 100_000
	}
	if o.MaxLimiters < 1 {
		return nil, errors.New("auth: Options.MaxLimiters must be positive")
	}
	if o.MaxConcurrentHashes == 0 {
		o.MaxConcurrentHashes = 2 * runtime.GOMAXPROCS(0)
	}
	if o.MaxConcurrentHashes < 1 {
		return nil, errors.New("auth: Options.MaxConcurrentHashes must be positive")
	}
	if o.CatchUpWait == 0 {
		o.CatchUpWait = 2 * time.Second
	}
	if o.CatchUpWait > time.Minute {
		return nil, fmt.Errorf("auth: Options.CatchUpWait %v is over a minute", o.CatchUpWait)
	}
	o.TokenKey = append([]byte(nil), o.TokenKey...)

	s := &Store{
		opts:   o,
		done:   make(chan struct{}),
		hashes: make(chan struct{}, o.MaxConcurrentHashes),
		users:  newLimiters(o.PerUser, o.MaxLimiters),
		ips:    newLimiters(o.PerRemote, o.MaxLimiters),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdsync_auth_checks_total",
			Help: "Credential checks (passwords and tokens) by result: ok, denied, rate_limited.",
		}, []string{"result"}),
	}
	if o.Registerer != nil {
		if err := o.Registerer.Register(s.checks); err != nil {
			return nil, fmt.Errorf("auth: register metrics: %w", err)
		}
	}
	dummy, err := s.hash("mdsync-dummy-password")
	if err != nil {
		return nil, err
	}
	s.dummy = dummy
	acc, err := projections.OpenAccounts(projections.AccountsOptions{Dir: o.Dir, Partitions: o.Log.Partitions(), Logger: o.Logger})
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	s.accounts = acc
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() {
		defer close(s.done)
		s.runErr = acc.Run(ctx, o.Log)
		if s.runErr != nil {
			o.Logger.Error("auth: the account follower stopped", "err", s.runErr)
		}
	}()
	return s, nil
}

// Close stops following the log and closes the database. Later reads
// return 1009; a second Close is a no-op.
func (s *Store) Close() error {
	s.cancel()
	<-s.done
	return s.accounts.Close()
}

// Err returns the follower's error once it stopped on one, nil while it
// runs (or after Close).
func (s *Store) Err() error {
	select {
	case <-s.done:
		return s.runErr
	default:
		return nil
	}
}

// WaitApplied blocks until this store has applied the log position pos
// (the position of an account operation's decision), so that a change
// acknowledged by this process is visible to its next check: a 1009 when
// the follower stopped, ctx's error when ctx ends first.
func (s *Store) WaitApplied(ctx context.Context, pos engine.Position) error {
	if err := s.accounts.WaitApplied(ctx, pos); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &engine.Error{Code: engine.CodeUnavailable, Message: "auth: account projection: " + err.Error(), Err: err}
	}
	return nil
}

// fresh brings this store to the end of the user's partition, as far as
// it gets within CatchUpWait, and tells whether it got there. A check that
// would fail calls it before failing: the store follows the log, so an
// account registered, or a token issued, through another process a moment
// ago may not be applied here yet. Only failing checks pay for it (one end
// offset read), and those are rate limited. A revocation made elsewhere is
// the other way round (a check that would pass): it reaches this process
// within the follower's lag (docs/design-notes.md, "Accounts in the log").
func (s *Store) fresh(app, user string) bool {
	if s.opts.CatchUpWait < 0 {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.CatchUpWait)
	defer cancel()
	p := engine.PartitionFor([]byte(engine.UserStream(app, user)), s.opts.Log.Partitions())
	end, err := s.opts.Log.End(ctx, p)
	if err != nil || end == 0 {
		return false
	}
	return s.accounts.WaitApplied(ctx, engine.Position{Partition: p, Offset: end - 1}) == nil
}

// account returns the user's live account; ok is false for a user that was
// never registered or was removed.
func (s *Store) account(app, user string) (*pb.Account, bool, error) {
	a, ok, err := s.accounts.Account(app, user)
	if errors.Is(err, projections.ErrClosed) {
		return nil, false, errClosed
	}
	if err != nil {
		return nil, false, engine.Errorf(engine.CodeUnavailable, "auth: read: %v", err)
	}
	return a, ok && !a.Removed, nil
}

var errClosed = engine.Errorf(engine.CodeUnavailable, "auth: store is closed")

func checkIDs(app, user string) error {
	if !engine.ValidID(app) {
		return engine.Errorf(engine.CodeInvalidArgument, "app is not a valid id (1..%d bytes of letters, digits, _-.@)", engine.MaxIDBytes)
	}
	if !engine.ValidID(user) {
		return engine.Errorf(engine.CodeInvalidArgument, "user is not a valid id (1..%d bytes of letters, digits, _-.@)", engine.MaxIDBytes)
	}
	return nil
}

func checkPassword(p string) error {
	if len(p) < MinPasswordBytes || len(p) > MaxPasswordBytes {
		return engine.Errorf(engine.CodeInvalidArgument, "password must be %d..%d bytes", MinPasswordBytes, MaxPasswordBytes)
	}
	return nil
}

// HashPassword checks a new password's length (1001) and returns its
// argon2id hash in PHC form, with a fresh salt: what an account event
// carries (Credential.password_hash). The password itself goes nowhere.
func (s *Store) HashPassword(password string) (string, error) {
	if err := checkPassword(password); err != nil {
		return "", err
	}
	return s.hash(password)
}

// Exists reports whether the user is registered (and not removed), as far
// as this store has followed the log.
func (s *Store) Exists(app, user string) (bool, error) {
	if checkIDs(app, user) != nil {
		return false, nil
	}
	_, ok, err := s.account(app, user)
	return ok, err
}

var errBadCredentials = engine.Errorf(engine.CodeUnauthenticated, "bad credentials")

// CheckPassword checks a user's password. An unknown user and a wrong
// password give the same 1013, after the same amount of hashing. A failed
// check spends from the user's and the remote IP's rate limit; when either
// is spent it returns 1014 without hashing. Right passwords spend nothing,
// so users sharing an address are not limited by each other's logins.
func (s *Store) CheckPassword(app, user, password, remote string) error {
	now := s.opts.Now()
	userKey, ipKey := app+"\x00"+user, remoteIP(remote)
	if s.users.blocked(userKey, now) || s.ips.blocked(ipKey, now) {
		s.checks.WithLabelValues("rate_limited").Inc()
		return engine.Errorf(engine.CodeRateLimited, "too many password attempts; retry later")
	}
	if len(password) > MaxPasswordBytes {
		password = "" // never hash an unbounded input; it matches nothing
	}
	match, known, err := s.checkStored(app, user, password)
	if err == nil && (!match || !known) && checkIDs(app, user) == nil && s.fresh(app, user) {
		// Registered or changed through another process a moment ago?
		match, known, err = s.checkStored(app, user, password)
	}
	if err != nil {
		return err
	}
	if !match || !known {
		s.users.fail(userKey, now)
		s.ips.fail(ipKey, now)
		s.checks.WithLabelValues("denied").Inc()
		return errBadCredentials
	}
	s.checks.WithLabelValues("ok").Inc()
	return nil
}

// checkStored compares password with the user's stored hash (the dummy for
// an unknown user, so both take the same time). known is false for an
// unknown user and for an account whose hash no password matches (one
// replayed from an export, whose hash is RedactedHash).
func (s *Store) checkStored(app, user, password string) (match, known bool, err error) {
	stored := s.dummy
	if checkIDs(app, user) == nil {
		a, ok, err := s.account(app, user)
		if err != nil {
			return false, false, err
		}
		if ok {
			if _, _, _, perr := parsePHC(a.PasswordHash); perr == nil {
				stored, known = a.PasswordHash, true
			}
		}
	}
	match, err = s.verify(stored, password)
	return match, known, err
}

// Authenticate checks the password when it is non-empty, else the token,
// whose app and user must be app and user. Neither given is 1013.
func (s *Store) Authenticate(app, user, password, token, remote string) error {
	if password != "" {
		return s.CheckPassword(app, user, password, remote)
	}
	if token == "" {
		return engine.Errorf(engine.CodeUnauthenticated, "a password or a token is required")
	}
	ta, tu, err := s.VerifyToken(token)
	if err != nil {
		return err
	}
	if ta != app || tu != user {
		return errBadCredentials
	}
	return nil
}

// --- hashing ---

var b64 = base64.RawStdEncoding

func (s *Store) hash(password string) (string, error) {
	p := s.opts.Argon2
	salt := make([]byte, p.SaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", engine.Errorf(engine.CodeInternal, "auth: salt: %v", err)
	}
	s.hashes <- struct{}{}
	key := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, p.KeyLen)
	<-s.hashes
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.Memory, p.Time, p.Threads,
		b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// parsePHC reads "$argon2id$v=19$m=..,t=..,p=..$salt$hash".
func parsePHC(phc string) (p Argon2Params, salt, key []byte, err error) {
	parts := strings.Split(phc, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" || parts[2] != "v="+strconv.Itoa(argon2.Version) {
		return p, nil, nil, errors.New("not an argon2id v19 PHC string")
	}
	var m, t, th uint64
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &th); err != nil {
		return p, nil, nil, fmt.Errorf("parameters %q: %w", parts[3], err)
	}
	if salt, err = b64.DecodeString(parts[4]); err != nil {
		return p, nil, nil, fmt.Errorf("salt: %w", err)
	}
	if key, err = b64.DecodeString(parts[5]); err != nil {
		return p, nil, nil, fmt.Errorf("hash: %w", err)
	}
	if m > maxArgonMemory || t > maxArgonTime || th > maxArgonThreads {
		return p, nil, nil, errors.New("parameters out of range")
	}
	p = Argon2Params{Memory: uint32(m), Time: uint32(t), Threads: uint8(th), SaltLen: uint32(len(salt)), KeyLen: uint32(len(key))}
	return p, salt, key, p.validate()
}

func (s *Store) verify(phc, password string) (bool, error) {
	p, salt, want, err := parsePHC(phc)
	if err != nil {
		return false, engine.Errorf(engine.CodeInternal, "auth: stored hash: %v", err)
	}
	s.hashes <- struct{}{}
	got := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, p.KeyLen)
	<-s.hashes
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// --- tokens ---

// claims are a token's payload. V is the claims' version: 2 since
// accounts are events of the log; tokens without it were issued against
// the per-process store before, under epochs that the log restarted, and
// are refused.
type claims struct {
	V     int    `json:"v"`
	App   string `json:"app"`
	User  string `json:"user"`
	Epoch uint64 `json:"epoch"`
	Exp   int64  `json:"exp"` // unix milliseconds
}

const claimsVersion = 2

var b64url = base64.RawURLEncoding

func (s *Store) sign(payload string) []byte {
	m := hmac.New(sha256.New, s.opts.TokenKey)
	m.Write([]byte(TokenPrefix + payload))
	return m.Sum(nil)
}

// IssueToken returns a token for a registered user, valid for ttl (0: the
// configured TokenTTL; at most 30 days) or until the user's next account
// event (password change, token revocation, removal). 1005 if the user is
// unknown to this store.
func (s *Store) IssueToken(app, user string, ttl time.Duration) (string, time.Time, error) {
	if err := checkIDs(app, user); err != nil {
		return "", time.Time{}, err
	}
	if ttl == 0 {
		ttl = s.opts.TokenTTL
	}
	if ttl < time.Second || ttl > MaxTokenTTL {
		return "", time.Time{}, engine.Errorf(engine.CodeInvalidArgument, "token ttl %v is outside [1s,%v]", ttl, MaxTokenTTL)
	}
	a, ok, err := s.account(app, user)
	if err != nil {
		return "", time.Time{}, err
	}
	if !ok {
		return "", time.Time{}, engine.Errorf(engine.CodeNotFound, "user %s does not exist in app %s", user, app)
	}
	exp := s.opts.Now().Add(ttl).Truncate(time.Millisecond)
	b, _ := json.Marshal(claims{V: claimsVersion, App: app, User: user, Epoch: a.Epoch, Exp: exp.UnixMilli()})
	payload := b64url.EncodeToString(b)
	return TokenPrefix + payload + "." + b64url.EncodeToString(s.sign(payload)), exp, nil
}

// VerifyToken returns the app and user of a valid token. Any fault
// (malformed, bad signature, expired, revoked) is 1013.
func (s *Store) VerifyToken(token string) (string, string, error) {
	c, err := s.verifyToken(token)
	if err != nil {
		s.checks.WithLabelValues("denied").Inc()
		return "", "", err
	}
	s.checks.WithLabelValues("ok").Inc()
	return c.App, c.User, nil
}

func (s *Store) verifyToken(token string) (claims, error) {
	bad := func(why string) (claims, error) {
		return claims{}, engine.Errorf(engine.CodeUnauthenticated, "token %s", why)
	}
	if len(token) > MaxTokenBytes || !strings.HasPrefix(token, TokenPrefix) {
		return bad("is malformed")
	}
	payload, sig, ok := strings.Cut(token[len(TokenPrefix):], ".")
	if !ok {
		return bad("is malformed")
	}
	got, err := b64url.DecodeString(sig)
	if err != nil || !hmac.Equal(got, s.sign(payload)) {
		return bad("signature is invalid")
	}
	raw, err := b64url.DecodeString(payload)
	if err != nil {
		return bad("is malformed")
	}
	var c claims
	if err := json.Unmarshal(raw, &c); err != nil || checkIDs(c.App, c.User) != nil {
		return bad("is malformed")
	}
	if c.V != claimsVersion {
		return bad("was revoked")
	}
	if s.opts.Now().UnixMilli() >= c.Exp {
		return bad("has expired")
	}
	a, ok, err := s.account(c.App, c.User)
	if err == nil && (!ok || a.Epoch < c.Epoch) && s.fresh(c.App, c.User) {
		// Issued by a process that has applied more of the log than this
		// one (a registration or an epoch this store has not reached).
		a, ok, err = s.account(c.App, c.User)
	}
	if err != nil {
		return claims{}, err
	}
	if !ok || a.Epoch != c.Epoch {
		return bad("was revoked")
	}
	return c, nil
}

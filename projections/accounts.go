package projections

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// Accounts are decided in two places by the same code: the sessions
// handler of the main projection (on the partitions this process owns, so
// that a password change ends the user's sessions in the same decision) and
// the accounts handler of an Accounts runner, which follows every partition
// of the log for the account kinds only, so that every process can
// authenticate every user. Only the latter keeps password hashes. Both read nothing but the user's account table
// (engine.ApplyAccount; the actor rule does not apply to account kinds), so
// they decide every account event alike.

// decideAccount applies an account event to the user's account in t. It
// returns the refusal, or nil once the new account is written: with its
// password hash when keepHash, else without (engine.ApplyAccount never reads
// it). The main projection keeps none: it needs only who exists, and so its
// state, its digest and a replay of a redacted export stay free of hashes.
func decideAccount(t *Txn, ev *pb.Event, keepHash bool) (*engine.Error, error) {
	k := accountKey(ev.App, ev.Actor.User)
	st := &pb.Account{}
	if _, err := t.get(k, st); err != nil {
		return nil, err
	}
	next, refused := engine.ApplyAccount(st, ev)
	if refused != nil {
		return refused, nil
	}
	if !keepHash {
		next.PasswordHash = ""
	}
	return nil, t.put(k, next)
}

// accountDecision is decideAccount as a decision.
func accountDecision(t *Txn, ev *pb.Event, pos engine.Position, pol *pb.Policy, keepHash bool) (*pb.Decision, error) {
	refused, err := decideAccount(t, ev, keepHash)
	if err != nil {
		return nil, err
	}
	d := engine.NewDecision(ev, pos, pol)
	if refused != nil {
		d.Code, d.Message = int32(refused.Code), refused.Message
	}
	return d, nil
}

// accountKinds are the kinds the accounts handler decides.
var accountKinds = []pb.Kind{pb.Kind_KIND_USER_REGISTER, pb.Kind_KIND_PASSWORD_CHANGE, pb.Kind_KIND_TOKENS_REVOKE, pb.Kind_KIND_USER_REMOVE}

// AccountsHandler decides the account kinds into the account table only.
// It is the topology of an Accounts runner; the main projection decides the
// same kinds in its sessions handler (which also ends sessions).
func AccountsHandler() Handler {
	return Handler{Name: "accounts", Kinds: accountKinds, Tables: []byte{tagAccount},
		Decide: func(t *Txn, ev *pb.Event, pos engine.Position, pol *pb.Policy) (*pb.Decision, error) {
			return accountDecision(t, ev, pos, pol, true)
		}}
}

// AccountsOptions configure OpenAccounts.
type AccountsOptions struct {
	// Dir holds the Pebble files. Required unless FS is in-memory.
	Dir string
	// FS is the file system; default vfs.Default.
	FS vfs.FS
	// Partitions must equal the log's partition count (1..1024). Required.
	Partitions int32
	// Logger receives Pebble's messages. Default slog.Default().
	Logger *slog.Logger
}

// Accounts is the account projection of a whole log: a Runner (Run,
// CatchUp, WaitApplied, Checkpoint, Close) with the accounts handler over
// its own Pebble database, and Account to read it. Run keeps reading
// through failed log reads (RunnerOptions.ReadRetry, every second). Its batches are
// committed with fsync: a password change acknowledged by this process is
// visible here, and stays visible after a crash. Events of other kinds are
// skipped without a write (RunnerOptions.HandledOnly). Safe for concurrent
// use.
type Accounts struct {
	*Runner
	db *pebble.DB

	mu     sync.RWMutex // readers of db hold it for reading, Close for writing
	closed bool
}

// OpenAccounts opens or creates an account projection.
func OpenAccounts(o AccountsOptions) (*Accounts, error) {
	if o.Partitions < 1 || o.Partitions > 1024 {
		return nil, fmt.Errorf("projections: AccountsOptions.Partitions %d is outside [1,1024]", o.Partitions)
	}
	if o.FS == nil {
		o.FS = vfs.Default
	}
	db, err := pebble.Open(o.Dir, &pebble.Options{FS: o.FS, Logger: PebbleLogger(o.Logger)})
	if err != nil {
		return nil, fmt.Errorf("projections: open accounts %s: %w", o.Dir, err)
	}
	if err := checkPartitionCount(db, o.Partitions); err != nil {
		db.Close()
		return nil, err
	}
	logger := o.Logger
	if logger == nil {
		logger = slog.Default()
	}
	r, err := NewRunner(db, RunnerOptions{Partitions: o.Partitions, Sync: true, HandledOnly: true, DedupMarks: true,
		Handlers: []Handler{AccountsHandler()},
		// Nobody restarts this runner: it reads through a broker restart.
		ReadRetry: time.Second,
		OnReadRetry: func(p int32, err error) {
			logger.Warn("projections: accounts: log read failed; retrying", "partition", p, "err", err)
		}})
	if err != nil {
		db.Close()
		return nil, err
	}
	return &Accounts{Runner: r, db: db}, nil
}

// Account returns the committed account of a user; ok is false when the
// log never registered it. A removed user's tombstone is returned with ok
// true and Removed set.
func (a *Accounts) Account(app, user string) (acc *pb.Account, ok bool, err error) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.closed {
		return nil, false, ErrClosed
	}
	acc = &pb.Account{}
	ok, err = getProto(a.db, accountKey(app, user), acc)
	return acc, ok, err
}

// Close stops the runner and closes the database; later reads return
// ErrClosed.
func (a *Accounts) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	return a.Runner.Close()
}

// checkPartitionCount stores the partition count on first open and refuses
// another count later: checkpoints are kept per partition.
func checkPartitionCount(db *pebble.DB, n int32) error {
	k := key(tagOperational, "partitions")
	v, closer, err := db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return db.Set(k, []byte(fmt.Sprint(n)), pebble.Sync)
	}
	if err != nil {
		return fmt.Errorf("projections: read partition count: %w", err)
	}
	defer closer.Close()
	if string(v) != fmt.Sprint(n) {
		return fmt.Errorf("projections: accounts built for %s partitions, opened with %d", v, n)
	}
	return nil
}

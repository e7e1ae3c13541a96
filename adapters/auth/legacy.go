package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// Before accounts were events, each process kept its users in its own
// Pebble store (DATA/auth): key "u\x00<app>\x00<user>", value the JSON of
// legacyRecord. MigrateLegacy appends one USER_REGISTER per live user of
// such a store, once.

type legacyRecord struct {
	Hash    string `json:"hash,omitempty"`
	Epoch   uint64 `json:"epoch"`
	Removed bool   `json:"removed,omitempty"`
}

// LegacyOpID is the client op id of a migrated registration: the same on
// every attempt, so a migration interrupted and run again appends nothing
// twice (the engine's dedup returns the first decision).
const LegacyOpID = "migrate.auth-v1"

// legacyDone names the file written into the old store's directory once
// every user is migrated.
const legacyDone = "MIGRATED-TO-LOG"

// Submit is how MigrateLegacy appends an operation: the engine, or the
// forwarding submitter of a process that shares the log.
type Submit func(ctx context.Context, op *pb.Event) (*pb.Decision, error)

// MigrateLegacy moves the users of an old per-process store at dir into
// the log: one USER_REGISTER per live user, carrying its stored hash, so
// its password keeps working on every process. Removed users are skipped
// (their old tokens are refused anyway: tokens now carry claims v2). A user
// the log already has (registered since, or by another process's
// migration) is refused with 1006 and kept as the log has it. A refusal
// that a retry cures (1009, 1018 while the cluster settles, 1019) is
// retried until ctx ends. When every user is done it writes a marker file
// into dir, and later calls return at once. It returns how many users it
// registered. A dir that does not exist is nothing to migrate.
func MigrateLegacy(ctx context.Context, dir string, submit Submit, logger *slog.Logger) (int, error) {
	if logger == nil {
		logger = slog.Default()
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return 0, nil // no old store
	}
	if _, err := os.Stat(filepath.Join(dir, legacyDone)); err == nil {
		return 0, nil
	}
	users, err := readLegacy(dir, logger)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, u := range users {
		op := &pb.Event{App: u.app, ClientOpId: LegacyOpID, Kind: pb.Kind_KIND_USER_REGISTER,
			Actor:   &pb.Actor{User: u.user, Admin: true},
			Payload: &pb.Event_Credential{Credential: &pb.Credential{PasswordHash: u.hash}}}
		for {
			d, err := submit(ctx, op)
			switch code := engine.CodeOf(err); {
			case err == nil && d.Code == 0:
				n++
			case err == nil && d.Code == int32(engine.CodeConflict):
				logger.Warn("auth: migration: the log already has this user; its password there stands", "app", u.app, "user", u.user)
			case err == nil:
				logger.Warn("auth: migration: registration refused", "app", u.app, "user", u.user, "code", d.Code, "message", d.Message)
			case code == engine.CodeUnavailable || code == engine.CodeNotOwner || code == engine.CodeBusy:
				select {
				case <-ctx.Done():
					return n, ctx.Err()
				case <-time.After(200 * time.Millisecond):
				}
				continue
			default:
				return n, fmt.Errorf("auth: migrate %s/%s: %w", u.app, u.user, err)
			}
			break
		}
	}
	if err := os.WriteFile(filepath.Join(dir, legacyDone), []byte(fmt.Sprintf("%d users registered in the log\n", n)), 0o600); err != nil {
		return n, fmt.Errorf("auth: migration: %w", err)
	}
	return n, nil
}

type legacyUser struct{ app, user, hash string }

// readLegacy lists the live users of the old store, in key order. A record
// that does not parse, or names an invalid id or hash, is skipped with a
// warning: it could not be registered anyway.
func readLegacy(dir string, logger *slog.Logger) ([]legacyUser, error) {
	db, err := pebble.Open(dir, &pebble.Options{ReadOnly: true, Logger: projections.PebbleLogger(logger)})
	if err != nil {
		return nil, fmt.Errorf("auth: open the old store %s: %w", dir, err)
	}
	defer db.Close()
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte("u\x00"), UpperBound: []byte("u\x01")})
	if err != nil {
		return nil, fmt.Errorf("auth: read the old store: %w", err)
	}
	defer it.Close()
	var out []legacyUser
	for it.First(); it.Valid(); it.Next() {
		app, user, ok := strings.Cut(string(it.Key()[2:]), "\x00")
		var r legacyRecord
		if !ok || json.Unmarshal(it.Value(), &r) != nil || !engine.ValidID(app) || !engine.ValidID(user) {
			logger.Warn("auth: migration: skipping an unreadable record of the old store", "key", fmt.Sprintf("%q", it.Key()))
			continue
		}
		if r.Removed {
			continue
		}
		if _, _, _, err := parsePHC(r.Hash); err != nil {
			logger.Warn("auth: migration: skipping a user whose stored hash is not argon2id", "app", app, "user", user)
			continue
		}
		out = append(out, legacyUser{app: app, user: user, hash: r.Hash})
	}
	return out, it.Error()
}

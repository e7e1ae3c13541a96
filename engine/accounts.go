package engine

import (
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// This file is the pure core of accounts: who is registered, under which
// password hash and credential epoch. Accounts are events of the user's own
// stream (USER_REGISTER, PASSWORD_CHANGE, TOKENS_REVOKE, USER_REMOVE), so
// they are ordered with the user's sessions, and every process that follows
// the log derives the same accounts with ApplyAccount
// (docs/design-notes.md, "Accounts in the log").

// MaxPasswordHashBytes bounds Credential.password_hash. An argon2id PHC
// string with a 64-byte salt and key and the largest parameters is under
// 250 bytes.
const MaxPasswordHashBytes = 256

// RedactedHash is what exports and the operations JSON write in place of a
// password hash. An account event read back with it can no longer check a
// password (docs/operations.md).
const RedactedHash = "[redacted]"

// IsAccountKind reports whether k changes an account (ApplyAccount decides
// it).
func IsAccountKind(k pb.Kind) bool {
	switch k {
	case pb.Kind_KIND_USER_REGISTER, pb.Kind_KIND_PASSWORD_CHANGE, pb.Kind_KIND_TOKENS_REVOKE, pb.Kind_KIND_USER_REMOVE:
		return true
	}
	return false
}

// checkPasswordHash bounds a hash and keeps it printable ASCII: it is an
// opaque string here (the auth adapter parses it), but it must not carry
// bytes that a log line or a terminal would interpret.
func checkPasswordHash(h string) error {
	if h == "" {
		return Errorf(CodeMissingField, "credential.password_hash is required")
	}
	if len(h) > MaxPasswordHashBytes {
		return Errorf(CodeTooLarge, "credential.password_hash is %d bytes, limit %d", len(h), MaxPasswordHashBytes)
	}
	for i := 0; i < len(h); i++ {
		if h[i] < 0x21 || h[i] > 0x7e {
			return Errorf(CodeInvalidArgument, "credential.password_hash must be printable ASCII without spaces")
		}
	}
	return nil
}

// ApplyAccount applies one account event to a user's account: st is the
// current account (nil or the zero Account when the user was never
// registered). It never mutates st; it returns the new account, or st and
// the refusal:
//
//   - USER_REGISTER: the first registration wins; an existing user is
//     refused with 1006. A removed user may register again, one epoch past
//     its tombstone, so the removed user's tokens stay refused.
//   - PASSWORD_CHANGE: replaces the hash and bumps the epoch; 1005 for a
//     user that does not exist (never registered, or removed).
//   - TOKENS_REVOKE: bumps the epoch; 1005 for a user that does not exist.
//   - USER_REMOVE: leaves a tombstone (no hash) one epoch up; 1005 for a
//     user that does not exist.
//
// It reads nothing but its arguments: no session, no policy, no clock; and
// of st only the epoch and whether it is removed decide, never the hash, so
// a projection may keep accounts without their hashes (the main one does)
// and decide exactly alike.
func ApplyAccount(st *pb.Account, ev *pb.Event) (*pb.Account, *Error) {
	user := ev.GetActor().GetUser()
	exists := st.GetEpoch() > 0 && !st.GetRemoved()
	if !IsAccountKind(ev.Kind) {
		return st, Errorf(CodeInternal, "%s is not an account operation", KindName(ev.Kind))
	}
	if ev.Kind != pb.Kind_KIND_USER_REGISTER && !exists {
		return st, Errorf(CodeNotFound, "user %s does not exist in app %s", user, ev.App)
	}
	hash := ev.GetCredential().GetPasswordHash()
	if (ev.Kind == pb.Kind_KIND_USER_REGISTER || ev.Kind == pb.Kind_KIND_PASSWORD_CHANGE) && hash == "" {
		// A record without its payload (the log is not validated on read):
		// refused alike everywhere, so no account exists without a hash.
		return st, Errorf(CodeMissingField, "%s carries no credential.password_hash", KindName(ev.Kind))
	}
	next := &pb.Account{Epoch: st.GetEpoch() + 1}
	switch ev.Kind {
	case pb.Kind_KIND_USER_REGISTER:
		if exists {
			return st, Errorf(CodeConflict, "user %s already exists in app %s", user, ev.App)
		}
		next.PasswordHash = hash
	case pb.Kind_KIND_PASSWORD_CHANGE:
		next.PasswordHash = hash
	case pb.Kind_KIND_TOKENS_REVOKE:
		next.PasswordHash = st.GetPasswordHash()
	case pb.Kind_KIND_USER_REMOVE:
		next.Removed = true
	}
	return next, nil
}

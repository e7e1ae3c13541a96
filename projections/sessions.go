package projections

import (
	"fmt"
	"slices"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// Sessions is the handler of the session kinds (login, logout, kicks,
// password change, user removal), of the accounts (accounts.go) and of the
// policy: each user's devices in
// login order, the audit of ended sessions, how each login ID's session
// ended (which the runner's actor rule reads), the app's policy per
// partition, and the opening of a user's timeline at its first login. The
// main projection runs it; so does the aggregates runner, on its own copy,
// so the counts follow the same decisions.
func Sessions(partitions int32) Handler {
	h := sessionsHandler{partitions: partitions}
	return Handler{
		Name:       "sessions",
		Categories: []engine.Category{engine.CatSession},
		Tables:     []byte{tagSessions, tagPolicy, tagAudit, tagEnded, tagMeta, tagAccount},
		Decide:     h.decide,
	}
}

type sessionsHandler struct{ partitions int32 }

func (h sessionsHandler) decide(t *Txn, ev *pb.Event, pos engine.Position, pol *pb.Policy) (*pb.Decision, error) {
	if ev.Kind == pb.Kind_KIND_POLICY_SET {
		return h.applyPolicy(t, pol, ev, pos)
	}
	return h.applySession(t, pol, ev, pos)
}

func (h sessionsHandler) applySession(t *Txn, pol *pb.Policy, ev *pb.Event, pos engine.Position) (*pb.Decision, error) {
	if engine.IsAccountKind(ev.Kind) {
		// The account decides first: a password change or a removal of a
		// user that does not exist ends nothing.
		d, err := accountDecision(t, ev, pos, pol, false)
		if err != nil || d.Code != 0 {
			return d, err
		}
		if ev.Kind == pb.Kind_KIND_USER_REGISTER || ev.Kind == pb.Kind_KIND_TOKENS_REVOKE {
			return d, nil // no session ends: a revoked token ends no session
		}
	}
	st, err := t.sessionsOf(ev.App, ev.Actor.User)
	if err != nil {
		return nil, err
	}
	next, d := engine.ApplySession(st, pol, ev, pos)
	if next != st {
		if err := putSessions(t, ev.App, ev.Actor.User, st, next); err != nil {
			return nil, err
		}
	}
	if ev.Kind == pb.Kind_KIND_LOGIN && d.Code == 0 {
		meta, err := t.peekState(t.lookupKey(tagMeta, ev.App, ev.Actor.User), newMeta)
		if err != nil {
			return nil, err
		}
		if m := engine.OpenTimeline(meta.(*pb.TimelineMeta), ev); m != nil {
			if err := t.put(metaKey(ev.App, ev.Actor.User), m); err != nil {
				return nil, err
			}
		}
	}
	return d, audit(t, ev.App, ev.Actor.User, d.Ended)
}

// putSessions writes a user's sessions and records the change for the
// observers of the decision.
func putSessions(t *Txn, app, user string, before, st *pb.UserSessions) error {
	t.sessions = append(t.sessions, SessionChange{App: app, User: user, Before: before, After: st})
	sk := sessionsKey(app, user)
	if len(st.Sessions) == 0 && st.CredentialEpoch == 0 {
		// No state left: delete, so a user who logged out is not kept.
		if err := t.del(sk); err != nil {
			return err
		}
		t.decoded[string(sk)] = &pb.UserSessions{} // what a read of the deleted key gives
		return nil
	}
	v, err := engine.EncodeState(st)
	if err != nil {
		return err
	}
	if err := t.may(sk); err != nil {
		return err
	}
	// Not t.set: its forget would delete the decoded form that the next
	// line replaces (a map delete and a new key per event).
	if err := t.write(sk, v); err != nil {
		return err
	}
	// st is new (ApplySession and EnforcePolicy clone what they change) and
	// nobody modifies it from here on: later reads share it.
	t.decoded[string(sk)] = st
	return nil
}

func audit(t *Txn, app, user string, ended []*pb.Ended) error {
	for i, e := range ended {
		if err := t.put(auditKey(app, user, e.Partition, e.Offset, i), e); err != nil {
			return err
		}
		if err := t.put(endedKey(app, user, e.GetSession().GetLoginId()), endedRef(e)); err != nil {
			return err
		}
	}
	return nil
}

// applyPolicy installs a newer policy on this partition and ends, for every
// user of the app whose stream lives on this partition, the sessions above
// the new limits. Users are visited in key order, so the outcome is
// deterministic.
func (h sessionsHandler) applyPolicy(t *Txn, cur *pb.Policy, ev *pb.Event, pos engine.Position) (*pb.Decision, error) {
	pol, changed := engine.ApplyPolicy(cur, ev, pos)
	d := engine.NewDecision(ev, pos, pol)
	if !changed {
		d.Code, d.Message = int32(engine.CodeConflict), fmt.Sprintf("policy version %d is not newer than %d", ev.GetPolicySet().GetVersion(), cur.GetVersion())
		return d, nil
	}
	if err := t.put(policyKey(ev.App, pos.Partition), pol); err != nil {
		return nil, err
	}
	// Scan committed state merged with this batch's overlay.
	users, err := usersOf(t, ev.App)
	if err != nil {
		return nil, err
	}
	n := h.partitions
	for _, user := range users {
		if engine.PartitionFor([]byte(engine.UserStream(ev.App, user)), n) != pos.Partition {
			continue
		}
		st, err := t.sessionsOf(ev.App, user)
		if err != nil {
			return nil, err
		}
		next, ended := engine.EnforcePolicy(user, st, pol, ev, pos)
		if len(ended) == 0 {
			continue
		}
		if err := putSessions(t, ev.App, user, st, next); err != nil {
			return nil, err
		}
		if err := audit(t, ev.App, user, ended); err != nil {
			return nil, err
		}
		d.Ended = append(d.Ended, ended...)
	}
	return d, nil
}

// usersOf lists the users of app with sessions, in key order, from the
// committed state and the batch's overlay.
func usersOf(t *Txn, app string) ([]string, error) {
	prefix := append(key(tagSessions, app), 0)
	set := map[string]bool{}
	it, err := t.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return nil, err
	}
	for it.First(); it.Valid(); it.Next() {
		set[string(it.Key()[len(prefix):])] = true
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	for k, v := range t.overlay {
		if strings.HasPrefix(k, string(prefix)) {
			set[k[len(prefix):]] = v != nil
		}
	}
	users := make([]string, 0, len(set))
	for u, live := range set {
		if live {
			users = append(users, u)
		}
	}
	// Go orders strings bytewise, as Pebble orders keys: map order never leaks.
	slices.Sort(users)
	return users, nil
}

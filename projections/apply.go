package projections

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// ErrGap is returned when entries handed to Apply do not start at the
// partition's checkpoint: applying them would skip or repeat events.
var ErrGap = errors.New("projections: entries do not continue the checkpoint")

// txn is one Pebble batch with a read-your-writes overlay, so several events
// can be applied in one batch while each sees the state the previous ones
// produced.
type txn struct {
	db      *pebble.DB
	b       *pebble.Batch
	overlay map[string][]byte
	entries []AppliedEntry // timeline entries appended in this batch
}

// get reads k as of this batch. Reads from Pebble are remembered in the
// overlay, misses as nil, so a batch reads each key (the app's policy, a busy
// user's sessions) from Pebble at most once.
func (t *txn) get(k []byte, m proto.Message) (bool, error) {
	v, ok := t.overlay[string(k)]
	if !ok {
		raw, closer, err := t.db.Get(k)
		switch {
		case errors.Is(err, pebble.ErrNotFound):
		case err != nil:
			return false, fmt.Errorf("projections: get: %w", err)
		default:
			v = append([]byte(nil), raw...)
			closer.Close()
		}
		t.overlay[string(k)] = v
	}
	if v == nil { // absent, or deleted in this batch
		return false, nil
	}
	if err := proto.Unmarshal(v, m); err != nil {
		return false, fmt.Errorf("projections: decode %q: %w", k, err)
	}
	return true, nil
}

func (t *txn) put(k []byte, m proto.Message) error {
	v, err := engine.EncodeState(m)
	if err != nil {
		return err
	}
	t.overlay[string(k)] = v
	return t.b.Set(k, v, nil)
}

func (t *txn) del(k []byte) error {
	t.overlay[string(k)] = nil
	return t.b.Delete(k, nil)
}

// Apply applies entries of partition p, which must continue its checkpoint,
// in one atomic Pebble batch together with the new checkpoint. It is what
// the projector loop calls; tests and tools call it directly.
func (s *Store) Apply(p int32, entries []engine.Entry) error {
	if len(entries) == 0 {
		return nil
	}
	if p < 0 || int(p) >= len(s.parts) {
		return fmt.Errorf("projections: apply: %w", engine.ErrBadPartition)
	}
	ps := s.parts[p]
	start := time.Now()
	ps.apply.Lock()
	defer ps.apply.Unlock()
	if s.isClosed() {
		return ErrClosed
	}
	ps.mu.Lock()
	cp := proto.Clone(ps.cp).(*pb.Checkpoint)
	ps.mu.Unlock()

	t := &txn{db: s.db, b: s.db.NewBatch(), overlay: map[string][]byte{}}
	defer t.b.Close()
	var decisions []*pb.Decision
	for _, en := range entries {
		if en.Partition != p || en.Offset != cp.NextOffset {
			return fmt.Errorf("%w: partition %d at %d, got %d/%d", ErrGap, p, cp.NextOffset, en.Partition, en.Offset)
		}
		d, dup, err := s.applyOne(t, en)
		if err != nil {
			return err
		}
		switch {
		case dup:
			cp.Duplicates++
		case d == nil:
			cp.Skipped++
		default:
			cp.Applied++
			decisions = append(decisions, d)
		}
		cp.NextOffset = en.Offset + 1
	}
	if err := t.put(checkpointKey(p), cp); err != nil {
		return err
	}
	if err := t.b.Commit(s.wo); err != nil {
		return fmt.Errorf("projections: commit partition %d: %w", p, err)
	}
	// Only now, after Commit returned, do waiters see the new position.
	ps.mu.Lock()
	ps.cp = cp
	close(ps.changed)
	ps.changed = make(chan struct{})
	ps.mu.Unlock()
	if s.opts.OnApplied != nil && (len(decisions) > 0 || len(t.entries) > 0) {
		s.opts.OnApplied(p, Applied{Decisions: decisions, Entries: t.entries, Events: len(entries), Duration: time.Since(start)})
	}
	return nil
}

// applyOne applies one entry. It returns the decision, or dup=true for a
// retried append of an operation already decided, or (nil, false) for a
// record this build cannot apply (undecodable or of an unknown kind): such
// records are skipped deterministically and counted.
func (s *Store) applyOne(t *txn, en engine.Entry) (*pb.Decision, bool, error) {
	ev, err := engine.Decode(en.Value)
	if err != nil {
		return nil, false, nil
	}
	if _, known := engine.LookupKind(ev.Kind); !known || ev.Actor == nil {
		return nil, false, nil
	}
	pos := engine.Position{Partition: en.Partition, Offset: en.Offset}
	dk := decisionKey(ev.StreamKey, ev.Actor.User, ev.ClientOpId)
	if ok, err := t.get(dk, &pb.Decision{}); err != nil {
		return nil, false, err
	} else if ok {
		return nil, true, nil
	}
	pol, err := s.policy(t, ev.App, en.Partition)
	if err != nil {
		return nil, false, err
	}

	var d *pb.Decision
	if refused, err := s.checkActor(t, ev); err != nil {
		return nil, false, err
	} else if refused != nil {
		d = engine.NewDecision(ev, pos, pol)
		d.Code, d.Message = int32(refused.Code), refused.Message
		if err := t.put(dk, d); err != nil {
			return nil, false, err
		}
		return d, false, nil
	}
	switch {
	case ev.Kind == pb.Kind_KIND_POLICY_SET:
		d, err = s.applyPolicy(t, pol, ev, pos)
	case isSessionKind(ev.Kind):
		d, err = s.applySession(t, pol, ev, pos)
	case ev.Kind == pb.Kind_KIND_DELIVER:
		dl := ev.GetDeliver()
		if dl.GetSource() == nil || dl.Recipient == "" {
			return nil, false, nil // malformed derived record: skipped, counted
		}
		d = engine.NewDecision(ev, pos, pol)
		err = s.applyDelivery(t, en.Partition, dl)
	default:
		d, err = s.applySync(t, pol, ev, pos)
	}
	if err != nil {
		return nil, false, err
	}
	if err := t.put(dk, d); err != nil {
		return nil, false, err
	}
	return d, false, nil
}

// checkActor applies engine.CheckActor to an operation decided on its
// actor's own stream, where the actor's sessions live: an ended or unknown
// login ID is refused, in log order, identically on every rebuild. A login
// starts a session and a policy change or a derived copy has no device
// actor. Operations decided on another stream (a group's, a chatroom's) are
// checked by the engine against this stream before they are appended
// (docs/design-notes.md, "An ended session can do nothing").
func (s *Store) checkActor(t *txn, ev *pb.Event) (*engine.Error, error) {
	switch ev.Kind {
	case pb.Kind_KIND_LOGIN, pb.Kind_KIND_POLICY_SET, pb.Kind_KIND_DELIVER:
		return nil, nil
	}
	if ev.Actor.LoginId == "" || ev.StreamKey != engine.UserStream(ev.App, ev.Actor.User) {
		return nil, nil
	}
	st := &pb.UserSessions{}
	if _, err := t.get(sessionsKey(ev.App, ev.Actor.User), st); err != nil {
		return nil, err
	}
	if engine.CheckActor(st, ev.Actor.LoginId, nil) == nil {
		return nil, nil
	}
	last := &pb.Ended{}
	ok, err := t.get(endedKey(ev.App, ev.Actor.User, ev.Actor.LoginId), last)
	if err != nil {
		return nil, err
	}
	if !ok {
		last = nil
	}
	return engine.CheckActor(st, ev.Actor.LoginId, last), nil
}

func isSessionKind(k pb.Kind) bool {
	ki, ok := engine.LookupKind(k)
	return ok && ki.Category == engine.CatSession && k != pb.Kind_KIND_POLICY_SET
}

func (s *Store) policy(t *txn, app string, p int32) (*pb.Policy, error) {
	pol := &pb.Policy{}
	ok, err := t.get(policyKey(app, p), pol)
	if err != nil {
		return nil, err
	}
	if !ok {
		return engine.DefaultPolicy(), nil
	}
	return pol, nil
}

func (s *Store) applySession(t *txn, pol *pb.Policy, ev *pb.Event, pos engine.Position) (*pb.Decision, error) {
	sk := sessionsKey(ev.App, ev.Actor.User)
	st := &pb.UserSessions{}
	if _, err := t.get(sk, st); err != nil {
		return nil, err
	}
	next, d := engine.ApplySession(st, pol, ev, pos)
	if next != st {
		if err := s.putSessions(t, sk, next); err != nil {
			return nil, err
		}
	}
	if ev.Kind == pb.Kind_KIND_LOGIN && d.Code == 0 {
		mk := metaKey(ev.App, ev.Actor.User)
		meta := &pb.TimelineMeta{}
		if _, err := t.get(mk, meta); err != nil {
			return nil, err
		}
		if m := engine.OpenTimeline(meta, ev); m != nil {
			if err := t.put(mk, m); err != nil {
				return nil, err
			}
		}
	}
	return d, s.audit(t, ev.App, ev.Actor.User, d.Ended)
}

func (s *Store) putSessions(t *txn, sk []byte, st *pb.UserSessions) error {
	if len(st.Sessions) == 0 && st.CredentialEpoch == 0 {
		// No state left: delete, so a user who logged out is not kept.
		return t.del(sk)
	}
	return t.put(sk, st)
}

func (s *Store) audit(t *txn, app, user string, ended []*pb.Ended) error {
	for i, e := range ended {
		if err := t.put(auditKey(app, user, e.Partition, e.Offset, i), e); err != nil {
			return err
		}
		if err := t.put(endedKey(app, user, e.GetSession().GetLoginId()), e); err != nil {
			return err
		}
	}
	return nil
}

// applyPolicy installs a newer policy on this partition and ends, for every
// user of the app whose stream lives on this partition, the sessions above
// the new limits. Users are visited in key order, so the outcome is
// deterministic.
func (s *Store) applyPolicy(t *txn, cur *pb.Policy, ev *pb.Event, pos engine.Position) (*pb.Decision, error) {
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
	users, err := s.usersOf(t, ev.App)
	if err != nil {
		return nil, err
	}
	n := s.opts.Partitions
	for _, user := range users {
		if engine.PartitionFor([]byte(engine.UserStream(ev.App, user)), n) != pos.Partition {
			continue
		}
		sk := sessionsKey(ev.App, user)
		st := &pb.UserSessions{}
		if _, err := t.get(sk, st); err != nil {
			return nil, err
		}
		next, ended := engine.EnforcePolicy(user, st, pol, ev, pos)
		if len(ended) == 0 {
			continue
		}
		if err := s.putSessions(t, sk, next); err != nil {
			return nil, err
		}
		if err := s.audit(t, ev.App, user, ended); err != nil {
			return nil, err
		}
		d.Ended = append(d.Ended, ended...)
	}
	return d, nil
}

// usersOf lists the users of app with sessions, in key order, from the
// committed state and the batch's overlay.
func (s *Store) usersOf(t *txn, app string) ([]string, error) {
	prefix := append(key(tagSessions, app), 0)
	set := map[string]bool{}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
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

package projections

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

var _ engine.Projector = (*Store)(nil)

// Devices returns a user's logged-in devices in login order (what
// fetchLoggedInDevices returns).
func (s *Store) Devices(app, user string) ([]*pb.Session, error) {
	if s.isClosed() {
		return nil, ErrClosed
	}
	st := &pb.UserSessions{}
	if _, err := s.getProto(sessionsKey(app, user), st); err != nil {
		return nil, err
	}
	return st.Sessions, nil
}

// SelfIDs returns the login IDs of the user's devices other than loginID
// (getSelfIdsOnOtherPlatform), in login order.
func (s *Store) SelfIDs(app, user, loginID string) ([]string, error) {
	ss, err := s.Devices(app, user)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(ss))
	for _, x := range ss {
		if x.LoginId != loginID {
			ids = append(ids, x.LoginId)
		}
	}
	return ids, nil
}

// Audit returns every session of the user that an operation ended, in log
// order: who caused it, why, under which policy version, at which offset.
func (s *Store) Audit(app, user string) ([]*pb.Ended, error) {
	if s.isClosed() {
		return nil, ErrClosed
	}
	prefix := auditPrefix(app, user)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []*pb.Ended
	for it.First(); it.Valid(); it.Next() {
		e := &pb.Ended{}
		if err := unmarshal(it.Value(), e); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, it.Error()
}

// ActorSession implements engine.Projector: nil while loginID has an
// active session, else engine.CheckActor's refusal.
func (s *Store) ActorSession(app, user, loginID string) error {
	if s.isClosed() {
		return ErrClosed
	}
	refused, err := actorRefusal(s.getProto, func(app, user string) (*pb.UserSessions, error) {
		st := &pb.UserSessions{}
		_, err := s.getProto(sessionsKey(app, user), st)
		return st, err
	}, app, user, loginID)
	if err != nil {
		return err
	}
	if refused != nil {
		return refused // not a nil *engine.Error in a non-nil error
	}
	return nil
}

// Decision implements engine.Projector.
func (s *Store) Decision(app, stream, user, op string) (*pb.Decision, bool, error) {
	if s.isClosed() {
		return nil, false, ErrClosed
	}
	k := decisionKey(stream, user, op)
	if s.filter != nil && !s.filter.mayContain(k) {
		// The engine's dedup of a new operation: no Pebble read. The runner
		// is the only writer of decision keys and adds each to the filter
		// before its batch commits (Runner.Apply), so "absent" here is
		// what a Pebble read at this instant would have said.
		return nil, false, nil
	}
	d := &pb.Decision{}
	ok, err := s.getProto(k, d)
	if err != nil || !ok {
		return nil, false, err
	}
	if err := expandDecision(func(k []byte, e *pb.Ended) (bool, error) { return s.getProto(k, e) }, stream, user, op, d); err != nil {
		return nil, false, err
	}
	return d, true, nil
}

// Policy implements engine.Projector: the newest version applied on any
// partition, or the default policy.
func (s *Store) Policy(app string) (*pb.Policy, error) {
	if s.isClosed() {
		return nil, ErrClosed
	}
	best := engine.DefaultPolicy()
	for p := int32(0); p < s.opts.Partitions; p++ {
		pol := &pb.Policy{}
		ok, err := s.getProto(policyKey(app, p), pol)
		if err != nil {
			return nil, err
		}
		if ok && pol.Version > best.Version {
			best = pol
		}
	}
	return best, nil
}

// UserDevices is one row of the device table.
type UserDevices struct {
	App      string
	User     string
	Sessions []*pb.Session
}

// DeviceTable returns every user with at least one session, in key order.
func (s *Store) DeviceTable() ([]UserDevices, error) {
	if s.isClosed() {
		return nil, ErrClosed
	}
	prefix := []byte{tagSessions, 0}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []UserDevices
	for it.First(); it.Valid(); it.Next() {
		app, user, ok := splitPair(it.Key()[len(prefix):])
		if !ok {
			return nil, fmt.Errorf("projections: malformed sessions key %q", it.Key())
		}
		st := &pb.UserSessions{}
		if err := unmarshal(it.Value(), st); err != nil {
			return nil, err
		}
		if len(st.Sessions) > 0 {
			out = append(out, UserDevices{App: app, User: user, Sessions: st.Sessions})
		}
	}
	return out, it.Error()
}

// Digest is a SHA-256 over every key and value of the projection state, in
// key order, each length-prefixed; operational tables (relay positions,
// device cursors) are not state derived from the log and are left out. Two
// stores built from the same log to the same offsets have equal digests
// (invariant 2).
func (s *Store) Digest() (string, error) {
	if s.isClosed() {
		return "", ErrClosed
	}
	it, err := s.db.NewIter(&pebble.IterOptions{})
	if err != nil {
		return "", err
	}
	defer it.Close()
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	for it.First(); it.Valid(); it.Next() {
		if it.Key()[0] == tagOperational {
			continue
		}
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(it.Key())))])
		h.Write(it.Key())
		v := it.Value()
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(v)))])
		h.Write(v)
	}
	if err := it.Error(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func splitPair(b []byte) (string, string, bool) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), string(b[i+1:]), true
		}
	}
	return "", "", false
}

// Diff lists up to max keys (outside the operational table) whose values
// differ between s and o, or that only one of them holds, as "key: why"
// lines with the key printed with %q. It is what a digest mismatch is
// explained with (a rebuild against a live store).
func (s *Store) Diff(o *Store, max int) ([]string, error) {
	if s.isClosed() || o.isClosed() {
		return nil, ErrClosed
	}
	a, err := s.db.NewIter(&pebble.IterOptions{})
	if err != nil {
		return nil, err
	}
	defer a.Close()
	b, err := o.db.NewIter(&pebble.IterOptions{})
	if err != nil {
		return nil, err
	}
	defer b.Close()
	skip := func(it *pebble.Iterator) {
		for it.Valid() && it.Key()[0] == tagOperational {
			it.Next()
		}
	}
	var out []string
	a.First()
	b.First()
	for len(out) < max {
		skip(a)
		skip(b)
		if !a.Valid() && !b.Valid() {
			break
		}
		switch c := compareIters(a, b); {
		case c < 0:
			out = append(out, fmt.Sprintf("%q: only in the first", a.Key()))
			a.Next()
		case c > 0:
			out = append(out, fmt.Sprintf("%q: only in the second", b.Key()))
			b.Next()
		default:
			if !bytes.Equal(a.Value(), b.Value()) {
				out = append(out, fmt.Sprintf("%q: values differ (%x vs %x)", a.Key(), a.Value(), b.Value()))
			}
			a.Next()
			b.Next()
		}
	}
	if err := a.Error(); err != nil {
		return out, err
	}
	return out, b.Error()
}

func compareIters(a, b *pebble.Iterator) int {
	switch {
	case !a.Valid():
		return 1
	case !b.Valid():
		return -1
	}
	return bytes.Compare(a.Key(), b.Key())
}

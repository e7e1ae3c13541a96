package projections

import (
	"github.com/cockroachdb/pebble/v2"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// tagPresence is the presence table:
//
//	D 0 <app> 0 <user> 0 <login>    what the log says of a device's connections
//
// It is a function of the log (in the digest): the gateway appends a
// DEVICE_CONNECTED and a DEVICE_DISCONNECTED per connection, never per
// heartbeat (docs/design-notes.md, "Device presence").
const tagPresence = 'D'

func presenceKey(app, user, loginID string) []byte { return key(tagPresence, app, user, loginID) }

// PresenceHandlers are the presence kinds' handlers: one decides
// DEVICE_CONNECTED and DEVICE_DISCONNECTED (engine.ApplyPresence); the
// other observes the session kinds and forgets the presence of every
// session that ends, so the table holds active sessions only. The runner's
// actor rule has already refused a presence op of a session that is not
// active.
func PresenceHandlers() []Handler {
	return []Handler{
		{
			Name:       "presence",
			Categories: []engine.Category{engine.CatPresence},
			Tables:     []byte{tagPresence},
			Decide:     decidePresence,
		},
		{
			Name:       "presence-ends",
			Categories: []engine.Category{engine.CatSession},
			Tables:     []byte{tagPresence},
			Observe:    forgetEndedPresence,
		},
	}
}

func decidePresence(t *Txn, ev *pb.Event, pos engine.Position, pol *pb.Policy) (*pb.Decision, error) {
	k := presenceKey(ev.App, ev.Actor.User, ev.Actor.LoginId)
	cur := &pb.Presence{}
	ok, err := t.get(k, cur)
	if err != nil {
		return nil, err
	}
	if !ok {
		cur = nil
	}
	if next, changed := engine.ApplyPresence(cur, ev); changed {
		if err := t.put(k, next); err != nil {
			return nil, err
		}
	}
	return engine.NewDecision(ev, pos, pol), nil
}

func forgetEndedPresence(t *Txn, o *Outcome) error {
	for _, e := range o.Decision.GetEnded() {
		if err := t.del(presenceKey(o.Event.App, e.User, e.GetSession().GetLoginId())); err != nil {
			return err
		}
	}
	return nil
}

// Presence returns what the log says of the connections of the user's
// devices, by login ID, for the devices that have a record (committed
// state only).
func (s *Store) Presence(app, user string) (map[string]*pb.Presence, error) {
	if s.isClosed() {
		return nil, ErrClosed
	}
	prefix := append(key(tagPresence, app, user), 0)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return nil, err
	}
	out := map[string]*pb.Presence{}
	for it.First(); it.Valid(); it.Next() {
		p := &pb.Presence{}
		if err := unmarshal(it.Value(), p); err != nil {
			it.Close()
			return nil, err
		}
		out[string(it.Key()[len(prefix):])] = p
	}
	if err := it.Error(); err != nil {
		it.Close()
		return nil, err
	}
	return out, it.Close()
}

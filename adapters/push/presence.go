package push

import "sync"

// Presence tells whether any device of a user is connected and so receives
// live deliveries; such users get no push. Implementations must be safe for
// concurrent use and must not block: Connected is called on the projection
// goroutine. The answer is advisory: a device that connects right after a
// check may get both a push and the live delivery, and one that drops right
// after gets neither until it catches up on reconnect.
type Presence interface {
	Connected(app, user string) bool
}

var _ Presence = (*PresenceSet)(nil)

// PresenceSet is an in-memory Presence counting connected devices per user,
// for tests and for a process whose gateway calls Connect and Disconnect.
// It is safe for concurrent use.
type PresenceSet struct {
	mu sync.RWMutex
	n  map[presenceKey]int
}

type presenceKey struct{ app, user string }

// NewPresenceSet returns an empty set: nobody connected.
func NewPresenceSet() *PresenceSet { return &PresenceSet{n: map[presenceKey]int{}} }

// Connect records one more connected device of (app, user).
func (s *PresenceSet) Connect(app, user string) {
	s.mu.Lock()
	s.n[presenceKey{app, user}]++
	s.mu.Unlock()
}

// Disconnect records one device of (app, user) gone. More Disconnects than
// Connects leave the user disconnected, never at a negative count, so a
// stray duplicate Disconnect cannot hide a later Connect.
func (s *PresenceSet) Disconnect(app, user string) {
	s.mu.Lock()
	k := presenceKey{app, user}
	if s.n[k] <= 1 {
		delete(s.n, k) // keeps the map bounded by connected users
	} else {
		s.n[k]--
	}
	s.mu.Unlock()
}

// Connected reports whether at least one device of (app, user) is connected.
func (s *PresenceSet) Connected(app, user string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.n[presenceKey{app, user}] > 0
}

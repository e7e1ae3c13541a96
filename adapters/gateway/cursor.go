package gateway

import (
	"sync"
	"time"
)

// A device acknowledges its position with ack frames (the Go SDK sends one
// every 200 ms while events arrive), and each one written is a read and a
// write of the projections store: half as many store writes as messages
// delivered in the throughput scenario. A cursor is operational state,
// written without fsync: a lost or late one only makes the next catch-up
// re-send entries the device drops by seq (projections.Store.SetCursor).
// So a connection writes at most one cursor per Options.CursorInterval:
// an ack within it of the last write is kept, and written (the latest
// one) when the interval has passed, or when the connection's reader ends.

// cursorState is a connection's acknowledged position not yet written.
type cursorState struct {
	// mu is held across the store write, so that the writes of one
	// connection are made in order (SetCursor reads, then writes).
	mu      sync.Mutex
	epoch   string
	seq     uint64
	dirty   bool        // epoch and seq are not written yet: timer is armed
	written int64       // unix nanoseconds of the last write
	timer   *time.Timer // writes a kept ack once the interval has passed
}

// ack records an acknowledged position: written at once when the last
// write is at least CursorInterval old (its error is the ack's), else
// kept for the timer or the end of the connection.
func (c *conn) ack(epoch string, seq uint64) error {
	s := &c.cursor
	s.mu.Lock()
	defer s.mu.Unlock()
	s.epoch, s.seq = epoch, seq
	now := time.Now()
	if wait := c.g.o.CursorInterval - now.Sub(time.Unix(0, s.written)); wait > 0 {
		if !s.dirty {
			s.dirty = true
			if s.timer == nil {
				s.timer = time.AfterFunc(wait, c.flushCursor)
			} else {
				s.timer.Reset(wait)
			}
		}
		return nil
	}
	if s.dirty {
		s.timer.Stop() // written now
		s.dirty = false
	}
	s.written = now.UnixNano()
	return c.g.o.Store.SetCursor(c.app, c.user, c.loginID, epoch, seq)
}

// flushCursor writes a kept ack. A failed write stays kept, for the next
// ack or the end of the connection.
func (c *conn) flushCursor() {
	s := &c.cursor
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.dirty {
		return
	}
	s.written = time.Now().UnixNano()
	if err := c.g.o.Store.SetCursor(c.app, c.user, c.loginID, s.epoch, s.seq); err == nil {
		s.dirty = false
	}
}

// endCursor writes a kept ack at the end of the connection's reader.
func (c *conn) endCursor() {
	s := &c.cursor
	s.mu.Lock()
	if s.timer != nil {
		s.timer.Stop()
	}
	s.mu.Unlock()
	c.flushCursor()
}

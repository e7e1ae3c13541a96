package gateway

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// cursorStore records the cursors written.
type cursorStore struct {
	Store // nil: only SetCursor is called
	mu    sync.Mutex
	got   []string
}

func (s *cursorStore) SetCursor(app, user, loginID, epoch string, seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, fmt.Sprintf("%s/%d", epoch, seq))
	return nil
}

func (s *cursorStore) writes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

// A connection writes its first ack at once, keeps the acks that follow
// within CursorInterval and writes the latest of them once the interval
// has passed, and writes a kept ack when its reader ends.
func TestAcksWriteOneCursorPerInterval(t *testing.T) {
	st := &cursorStore{}
	const every = 300 * time.Millisecond
	c, _ := sendqPair(t, func(o *Options) { o.Store, o.CursorInterval = st, every }, nil)
	start := time.Now()
	for seq := uint64(1); seq <= 5; seq++ {
		if err := c.ack("e", seq); err != nil {
			t.Fatal(err)
		}
	}
	if got := st.writes(); len(got) != 1 || got[0] != "e/1" {
		t.Fatalf("after 5 acks at once: wrote %v, want only the first", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(st.writes()) < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	got := st.writes()
	if len(got) != 2 || got[1] != "e/5" {
		t.Fatalf("after the interval: wrote %v, want e/1 then the latest, e/5", got)
	}
	if since := time.Since(start); since < every-20*time.Millisecond {
		t.Fatalf("the kept ack was written after %v, before the interval (%v)", since, every)
	}
	time.Sleep(2 * every)
	if got := st.writes(); len(got) != 2 {
		t.Fatalf("nothing acked since, yet wrote %v", got)
	}
	// An ack past the interval is written at once; the next is kept until
	// the reader ends.
	c.ack("e", 6)
	c.ack("e", 7)
	if got := st.writes(); len(got) != 3 || got[2] != "e/6" {
		t.Fatalf("an ack past the interval: wrote %v, want e/6 at once", got)
	}
	c.endCursor()
	if got := st.writes(); len(got) != 4 || got[3] != "e/7" {
		t.Fatalf("at the end: wrote %v, want the kept e/7", got)
	}
	time.Sleep(2 * every)
	if got := st.writes(); len(got) != 4 {
		t.Fatalf("after the end: wrote %v, want nothing more", got)
	}
}

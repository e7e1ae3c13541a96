package projections

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections/storetest"
)

// memLog is an in-memory engine.Log for the projector's own tests (the
// embedded log imports this package).
type memLog struct {
	mu      sync.Mutex
	parts   [][]engine.Entry
	changed chan struct{}
	closed  bool
}

func newMemLog(parts int32) *memLog {
	return &memLog{parts: make([][]engine.Entry, parts), changed: make(chan struct{})}
}

func (l *memLog) Partitions() int32 { return int32(len(l.parts)) }

func (l *memLog) Append(_ context.Context, recs []engine.Record) ([]engine.Position, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, engine.ErrLogClosed
	}
	var pos []engine.Position
	for _, r := range recs {
		off := int64(len(l.parts[r.Partition]))
		l.parts[r.Partition] = append(l.parts[r.Partition], engine.Entry{Partition: r.Partition, Offset: off, Key: r.Key, Value: r.Value})
		pos = append(pos, engine.Position{Partition: r.Partition, Offset: off})
	}
	close(l.changed)
	l.changed = make(chan struct{})
	return pos, nil
}

func (l *memLog) Read(ctx context.Context, p int32, from int64, max int) ([]engine.Entry, error) {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil, engine.ErrLogClosed
		}
		es, ch := l.parts[p], l.changed
		l.mu.Unlock()
		if int64(len(es)) > from {
			return es[from:min(int64(len(es)), from+int64(max))], nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (l *memLog) End(context.Context, int32) (int64, error) {
	return 0, errors.New("memLog: End not used")
}

func (l *memLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	return nil
}

// WaitRelayed returns once the relay appended the copies of an offset's
// entry, not before, and the copies are then in the recipients' partitions.
func TestWaitRelayed(t *testing.T) {
	const parts = 3
	hist := storetest.History(parts, 400, 7)
	lg := newMemLog(parts)
	s, err := Open(Options{FS: vfs.NewMem(), Partitions: parts})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Before anything is applied or relayed, a wait for offset 0 waits.
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if err := s.WaitRelayed(short, 0, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitRelayed before the relay ran: %v, want the deadline", err)
	}
	if err := s.WaitRelayed(ctx, 0, -1); err != nil {
		t.Fatalf("WaitRelayed(-1): %v", err)
	}
	if err := s.WaitRelayed(ctx, parts, 0); !errors.Is(err, engine.ErrBadPartition) {
		t.Fatalf("WaitRelayed of a bad partition: %v", err)
	}

	go func() { _ = s.Run(ctx, lg) }()
	go func() { _ = s.RunRelay(ctx, lg) }()
	var recs []engine.Record
	for _, es := range hist {
		for _, e := range es {
			recs = append(recs, engine.Record{Partition: e.Partition, Key: e.Key, Value: e.Value})
		}
	}
	if _, err := lg.Append(ctx, recs); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	fanout := 0
	for p := int32(0); p < parts; p++ {
		last := int64(len(hist[p]) - 1)
		if err := s.WaitRelayed(wctx, p, last); err != nil {
			t.Fatalf("WaitRelayed(%d, %d): %v", p, last, err)
		}
		if got := s.RelayPosition(p); got <= last {
			t.Fatalf("partition %d: relay position %d after WaitRelayed(%d)", p, got, last)
		}
		for _, e := range hist[p] {
			ev, err := engine.Decode(e.Value)
			if err != nil || ev.Actor == nil {
				continue
			}
			d, ok, err := s.Decision(ev.App, ev.StreamKey, ev.Actor.User, ev.ClientOpId)
			if err != nil {
				t.Fatal(err)
			}
			if ok && d.Partition == p && d.Offset == e.Offset {
				fanout += len(d.Fanout)
			}
		}
	}
	if fanout == 0 {
		t.Fatal("the history fans out nothing: the test proves nothing")
	}
	lg.mu.Lock()
	var delivers int
	for p := range lg.parts {
		for _, e := range lg.parts[p][len(hist[p]):] {
			if ev, err := engine.Decode(e.Value); err == nil && ev.Kind == pb.Kind_KIND_DELIVER {
				delivers++
			}
		}
	}
	lg.mu.Unlock()
	if delivers < fanout {
		t.Fatalf("%d copies in the log after WaitRelayed, the decisions fan out %d", delivers, fanout)
	}

	// Closing the store wakes a waiter.
	done := make(chan error, 1)
	go func() { done <- s.WaitRelayed(context.Background(), 0, 1<<40) }()
	time.Sleep(10 * time.Millisecond)
	cancel()
	s.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("WaitRelayed after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitRelayed still waiting after Close")
	}
}

// A relay that stops on an error wakes its waiters with that error.
func TestWaitRelayedReturnsWhenRelayFails(t *testing.T) {
	s, err := Open(Options{FS: vfs.NewMem(), Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	hist := storetest.History(2, 50, 3)
	if err := s.Apply(1, hist[1]); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.WaitRelayed(context.Background(), 1, 0) }()
	if err := s.RunRelay(context.Background(), brokenLog{}); !errors.Is(err, errBroken) {
		t.Fatalf("RunRelay: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, errBroken) {
			t.Fatalf("WaitRelayed: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitRelayed still waiting after the relay failed")
	}
}

package projections

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/engine"
)

// brokenLog fails every Read, as a log whose storage broke would.
type brokenLog struct{ engine.Log }

var errBroken = errors.New("disk on fire")

func (brokenLog) Partitions() int32 { return 2 }
func (brokenLog) Read(context.Context, int32, int64, int) ([]engine.Entry, error) {
	return nil, errBroken
}

// A writer waiting for its event must learn that the projector stopped,
// not wait for ever (Submit has no other way to find out).
func TestWaitAppliedReturnsWhenProjectorFails(t *testing.T) {
	s, err := Open(Options{FS: vfs.NewMem(), Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitErr := make(chan error, 1)
	go func() { waitErr <- s.WaitApplied(context.Background(), engine.Position{Partition: 1, Offset: 0}) }()
	if err := s.Run(context.Background(), brokenLog{}); !errors.Is(err, errBroken) {
		t.Fatalf("Run: %v", err)
	}
	select {
	case err := <-waitErr:
		if !errors.Is(err, errBroken) {
			t.Fatalf("WaitApplied: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitApplied still waiting after the projector failed")
	}
}

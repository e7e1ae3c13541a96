package aggregates_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections/aggregates"
)

// flakyLog fails the first reads (a broker restarting), then reads.
type flakyLog struct {
	engine.Log
	failures atomic.Int64
}

func (l *flakyLog) Read(ctx context.Context, p int32, from int64, max int) ([]engine.Entry, error) {
	if l.failures.Add(-1) >= 0 {
		return nil, io.ErrUnexpectedEOF
	}
	return l.Log.Read(ctx, p, from, max)
}

// With ReadRetry, Run reads through failed log reads and applies the log;
// without it, the first failed read ends Run with that error.
func TestReadRetryReadsThroughFailures(t *testing.T) {
	ctx := context.Background()
	n, err := node.New(ctx, node.Options{Dir: t.TempDir(), Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	d, err := n.Engine.Submit(ctx, &pb.Event{App: "demo", ClientOpId: "l1", Kind: pb.Kind_KIND_LOGIN,
		Actor:   &pb.Actor{User: "ann", LoginId: "d1"},
		Payload: &pb.Event_Login{Login: &pb.Login{Platform: 1, LoginId: "d1"}}})
	if err != nil || d.Code != 0 {
		t.Fatalf("login: %v %v", d, err)
	}
	quiet := slog.New(slog.DiscardHandler)

	ag, err := aggregates.Open(aggregates.Options{Dir: filepath.Join(t.TempDir(), "a"), Partitions: 2, Logger: quiet, ReadRetry: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	fl := &flakyLog{Log: n.Log}
	fl.failures.Store(6)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ag.Run(rctx, fl) }()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := ag.WaitApplied(wctx, engine.Position{Partition: d.Partition, Offset: d.Offset}); err != nil {
		t.Fatalf("not applied through 6 failed reads: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}

	strict, err := aggregates.Open(aggregates.Options{Dir: filepath.Join(t.TempDir(), "s"), Partitions: 2, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer strict.Close()
	fl.failures.Store(1)
	if err := strict.Run(ctx, fl); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Run without ReadRetry: %v, want the read's error", err)
	}
}

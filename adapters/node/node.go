// Package node wires one mdsync process: a log, the projection store that
// follows it, and the engine that writes to it. cmd/ and tests use it so
// that wiring exists once.
package node

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/mdsync/mdsync/adapters/embedlog"
	"github.com/mdsync/mdsync/engine"
	"github.com/mdsync/mdsync/projections"
	"golang.org/x/sync/errgroup"
)

// Options configure a Node on the embedded log.
type Options struct {
	// Dir is the data directory: the log in Dir/log, projections in Dir/proj.
	Dir string
	// Partitions of a new log. Default 8; an existing log keeps its count.
	Partitions int32
	// Now stamps events at append. Default time.Now.
	Now func() time.Time
	// OnApplied is passed to the projection store (see projections.Options).
	OnApplied func(p int32, a projections.Applied)
	// ProjectionSync commits projection batches with fsync (default false;
	// see projections.Options.Sync).
	ProjectionSync bool
	// WrapLog, when set, wraps the opened log (e.g. to time appends).
	WrapLog func(engine.Log) engine.Log
}

// Node is a running single-process mdsync core on the embedded log.
type Node struct {
	Log    engine.Log
	Store  *projections.Store
	Engine *engine.Engine

	owned *owned // nil when this process owns every partition (owned.go)

	cancel context.CancelFunc
	done   chan struct{}
	runErr error

	closeOnce sync.Once
	closeErr  error
}

// Open opens the log and the projections, catches the projections up with
// the log, and starts following it. Submit is usable when Open returns.
func Open(ctx context.Context, opts Options) (*Node, error) {
	if opts.Dir == "" {
		return nil, errors.New("node: Options.Dir is required")
	}
	lg, err := embedlog.Open(embedlog.Options{Dir: filepath.Join(opts.Dir, "log"), Partitions: opts.Partitions})
	if err != nil {
		return nil, err
	}
	st, err := projections.Open(projections.Options{
		Dir: filepath.Join(opts.Dir, "proj"), Partitions: lg.Partitions(),
		OnApplied: opts.OnApplied, Sync: opts.ProjectionSync,
	})
	if err != nil {
		lg.Close()
		return nil, err
	}
	var l engine.Log = lg
	if opts.WrapLog != nil {
		l = opts.WrapLog(lg)
	}
	return start(ctx, l, st, opts.Now)
}

// Start runs a node over an already open log and store (Kafka, tests).
func Start(ctx context.Context, lg engine.Log, st *projections.Store, now func() time.Time) (*Node, error) {
	return start(ctx, lg, st, now)
}

func start(ctx context.Context, lg engine.Log, st *projections.Store, now func() time.Time) (*Node, error) {
	// Catch up before serving: a retried operation must find the decision
	// of an attempt that was appended before a crash.
	if err := st.CatchUp(ctx, lg); err != nil {
		st.Close()
		lg.Close()
		return nil, fmt.Errorf("node: catch up: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	n := &Node{Log: lg, Store: st, Engine: engine.New(lg, st, engine.Options{Now: now}), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(n.done)
		// If either stops with an error, the other stops too.
		g, gctx := errgroup.WithContext(runCtx)
		g.Go(func() error { return st.Run(gctx, lg) })
		g.Go(func() error { return st.RunRelay(gctx, lg) })
		n.runErr = g.Wait()
	}()
	return n, nil
}

// Err returns the projector's or the relay's error once it stopped, nil while running.
func (n *Node) Err() error {
	select {
	case <-n.done:
		return n.runErr
	default:
		return nil
	}
}

// Close stops the projector, then closes the store and the log.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.cancel()
		// The projector may be blocked in Read; closing the log wakes it.
		lerr := n.Log.Close()
		<-n.done
		serr := n.Store.Close()
		n.closeErr = errors.Join(n.runErr, serr, lerr)
	})
	return n.closeErr
}

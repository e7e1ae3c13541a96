// Package node wires one mdsync process: a log, the projection store that
// follows it, the engine that writes to it and, when several processes
// share the log, the membership that says which partitions this one
// serves. cmd/ and tests use it so that wiring exists once.
//
// There is one constructor, New; its Options choose the log (embedded,
// Kafka, or one already open) and the membership (every partition, or a
// Kafka consumer group).
package node

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/mdsync/mdsync/adapters/embedlog"
	"github.com/mdsync/mdsync/adapters/kafkagroup"
	"github.com/mdsync/mdsync/adapters/kafkalog"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// Options configure a Node. Dir is required unless Log and Store are set;
// every other field has the default stated.
//
// The log is, in order of precedence: Log (already open), the Kafka topic
// Kafka describes, or the embedded log in Dir/log. The projections are
// Store (already open), or Pebble in Dir/proj (Dir/proj-kafka on Kafka).
// Without Group this process serves every partition; with it, the ones a
// Kafka consumer group assigns it.
type Options struct {
	// Dir is the data directory. Required unless Log and Store are set.
	Dir string
	// Partitions of a new embedded log. Default 8; an existing log keeps
	// its count. (A Kafka log's count is Kafka.Partitions.)
	Partitions int32
	// Now stamps events at append. Default time.Now.
	Now func() time.Time
	// OnApplied is passed to the projection store New opens (see
	// projections.Options); unused with Store.
	OnApplied func(p int32, a projections.Applied)
	// ProjectionSync commits projection batches with fsync (default false;
	// see projections.Options.Sync); unused with Store.
	ProjectionSync bool
	// WrapLog, when set, wraps the log (e.g. to time appends).
	WrapLog func(engine.Log) engine.Log
	// MaxPending bounds the node's operations awaiting decisions
	// (engine.Options.MaxPending): 0 is engine.DefaultMaxPending, negative
	// no bound.
	MaxPending int
	// MaxPendingAge bounds the age of the oldest of them
	// (engine.Options.MaxPendingAge): 0 is engine.DefaultMaxPendingAge,
	// negative no bound.
	MaxPendingAge time.Duration

	// Kafka, when set, puts the log on a Kafka topic (kafkalog.Open with
	// these options). Default nil: the embedded log.
	Kafka *kafkalog.Options
	// Group, when set, shares the log's partitions with the other
	// processes of a Kafka consumer group (adapters/kafkagroup): this node
	// serves, restores and relays only the partitions assigned to it, and
	// Submit for a user on another partition fails with engine.CodeNotOwner
	// (1018), or CodeUnavailable (1009) while the partition is being
	// restored. Its Brokers and Topic default to Kafka's. Default nil:
	// this process serves every partition.
	Group *kafkagroup.Options

	// Log and Store, when both set, are used as they are (tests, tools):
	// New opens neither, and the node closes both.
	Log   engine.Log
	Store *projections.Store
}

// Node is a running mdsync core: Submit through Engine, read through Store.
type Node struct {
	Log    engine.Log
	Store  *projections.Store
	Engine *engine.Engine

	group *kafkagroup.Group // nil when this process serves every partition

	cancel context.CancelFunc
	done   chan struct{}
	runErr error

	closeOnce sync.Once
	closeErr  error
}

// New opens the log and the projections as opts say and starts the node.
// Without a Group it catches the projections up with the log before it
// returns, so Submit finds the decision of any operation appended before a
// restart. With a Group it returns at once: partitions are served once the
// group assigns them and their projections are restored (see Owned). ctx
// bounds the opening only.
func New(ctx context.Context, opts Options) (*Node, error) {
	lg, st, err := open(ctx, opts)
	if err != nil {
		return nil, err
	}
	n, err := start(ctx, lg, st, opts)
	if err != nil {
		st.Close()
		lg.Close()
		return nil, err
	}
	return n, nil
}

// open opens the log and the store opts describe (or takes opts'), and
// wraps the log.
func open(ctx context.Context, opts Options) (engine.Log, *projections.Store, error) {
	lg, st := opts.Log, opts.Store
	if (lg == nil) != (st == nil) {
		return nil, nil, errors.New("node: Options.Log and Store are set together")
	}
	if lg == nil {
		if opts.Dir == "" {
			return nil, nil, errors.New("node: Options.Dir is required")
		}
		var err error
		proj := filepath.Join(opts.Dir, "proj")
		if opts.Kafka != nil {
			lg, err = kafkalog.Open(ctx, *opts.Kafka)
			proj = filepath.Join(opts.Dir, "proj-kafka")
		} else {
			lg, err = embedlog.Open(embedlog.Options{Dir: filepath.Join(opts.Dir, "log"), Partitions: opts.Partitions})
		}
		if err != nil {
			return nil, nil, err
		}
		st, err = projections.Open(projections.Options{
			Dir: proj, Partitions: lg.Partitions(), OnApplied: opts.OnApplied, Sync: opts.ProjectionSync,
		})
		if err != nil {
			lg.Close()
			return nil, nil, err
		}
	}
	if opts.WrapLog != nil {
		lg = opts.WrapLog(lg)
	}
	return lg, st, nil
}

func start(ctx context.Context, lg engine.Log, st *projections.Store, opts Options) (*Node, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n := &Node{Log: lg, Store: st, done: make(chan struct{})}
	var run func(context.Context) error
	if g := opts.Group; g != nil {
		gopts := *g
		if len(gopts.Brokers) == 0 && opts.Kafka != nil {
			gopts.Brokers = opts.Kafka.Brokers
		}
		if gopts.Topic == "" && opts.Kafka != nil {
			gopts.Topic = opts.Kafka.Topic
		}
		group, err := kafkagroup.New(lg, st, gopts)
		if err != nil {
			return nil, err
		}
		n.group = group
		// The engine waits through the group, so that a wait ends when its
		// partition moves, and asks it which partitions are served here.
		n.Engine = engine.New(lg, groupProjector{st, group}, engine.Options{Now: opts.Now, Membership: group, MaxPending: opts.MaxPending, MaxPendingAge: opts.MaxPendingAge})
		run = group.Run
	} else {
		// Catch up before serving: a retried operation must find the decision
		// of an attempt that was appended before a crash.
		if err := st.CatchUp(ctx, lg); err != nil {
			return nil, fmt.Errorf("node: catch up: %w", err)
		}
		n.Engine = engine.New(lg, st, engine.Options{Now: opts.Now, MaxPending: opts.MaxPending, MaxPendingAge: opts.MaxPendingAge})
		run = func(ctx context.Context) error {
			// If either stops with an error, the other stops too.
			g, gctx := errgroup.WithContext(ctx)
			g.Go(func() error { return st.Run(gctx, lg) })
			g.Go(func() error { return st.RunRelay(gctx, lg) })
			return g.Wait()
		}
	}
	runCtx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() {
		defer close(n.done)
		n.runErr = run(runCtx)
	}()
	return n, nil
}

// groupProjector is the engine's projector with a Group: the store, with
// waits that end when the partition is given up.
type groupProjector struct {
	*projections.Store
	g *kafkagroup.Group
}

func (p groupProjector) WaitApplied(ctx context.Context, pos engine.Position) error {
	return p.g.WaitApplied(ctx, pos)
}

// AwaitDecision waits through the group, like WaitApplied, so that the
// wait ends when its partition moves: the store's hand-off does not know
// when a partition stops being served here.
func (p groupProjector) AwaitDecision(pos engine.Position, app, stream, user, op string, done func(*pb.Decision, bool, error)) {
	engine.AwaitByWaiting(p, pos, app, stream, user, op, done)
}

// Owner tells where the user's partition is served: locally (local true,
// addr this process's Addr), by another process (its address), or nobody
// known right now (addr "", local false: the partition is moving or being
// restored; retry shortly). On a node that serves every partition it
// returns ("", true).
func (n *Node) Owner(app, user string) (addr string, local bool) {
	if n.group == nil {
		return "", true
	}
	return n.group.OwnerOf(engine.PartitionFor([]byte(engine.UserStream(app, user)), n.Log.Partitions()))
}

// OwnerOfOp tells, like Owner, where op is decided: the owner of its
// stream's partition (a group's stream may live on another partition than
// the sender's user), or of partition 0 for a policy change. A gateway
// connected to the sender's owner forwards an op whose owner is elsewhere.
func (n *Node) OwnerOfOp(op *pb.Event) (addr string, local bool) {
	if n.group == nil {
		return "", true
	}
	p := int32(0)
	if op.GetKind() != pb.Kind_KIND_POLICY_SET {
		p = engine.PartitionFor([]byte(engine.StreamKeyFor(op)), n.Log.Partitions())
	}
	return n.group.OwnerOf(p)
}

// Owned lists the partitions this node serves now (every partition for a
// node without a Group).
func (n *Node) Owned() []int32 {
	var out []int32
	for p := int32(0); p < n.Log.Partitions(); p++ {
		if n.group == nil || n.group.Serving(p) {
			out = append(out, p)
		}
	}
	return out
}

// Ready reports whether this node can take any operation now: nil when its
// projector runs and every partition is either served here or served by a
// process whose address is known (so an operation for it is forwarded, or
// a device redirected, instead of refused with "owner not known yet").
// While a Group settles after a start or a rebalance, or while a partition
// is being restored here, it returns an error naming the partition. It is
// what GET /readyz answers.
func (n *Node) Ready() error {
	if err := n.Err(); err != nil {
		return err
	}
	if n.group == nil {
		return nil
	}
	for p := int32(0); p < n.Log.Partitions(); p++ {
		if n.group.Serving(p) {
			continue
		}
		if err := n.group.Owns(p); engine.CodeOf(err) != engine.CodeNotOwner {
			return fmt.Errorf("node: partition %d is not ready: %v", p, err)
		}
		if addr, _ := n.group.OwnerOf(p); addr == "" {
			return fmt.Errorf("node: partition %d has no known owner yet", p)
		}
	}
	return nil
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

// Close stops the projector (and leaves the group), then closes the store
// and the log.
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

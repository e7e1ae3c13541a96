package projections

import (
	"context"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// Per-partition entry points for a process that owns only some partitions
// of a shared log (adapters/node, owned mode). Run, CatchUp and RunRelay
// cover every partition; these cover one, so ownership can come and go.

// RestorePartition applies partition p from its checkpoint up to the log's
// end as of the call: what a new owner does before it serves p.
func (s *Store) RestorePartition(ctx context.Context, log engine.Log, p int32) error {
	if err := s.checkPartition(p); err != nil {
		return err
	}
	end, err := log.End(ctx, p)
	if err != nil {
		return fmt.Errorf("projections: end of partition %d: %w", p, err)
	}
	return s.runPartition(ctx, log, p, end)
}

// RunPartition follows partition p from its checkpoint until ctx is done
// (then it returns nil) or applying fails. Unlike Run, a failure does not
// stop the store: the caller decides (one partition's owner stopping must
// not fail waiters on the others).
func (s *Store) RunPartition(ctx context.Context, log engine.Log, p int32) error {
	if err := s.checkPartition(p); err != nil {
		return err
	}
	return quiet(ctx, s.runPartition(ctx, log, p, -1))
}

// RelayPartition runs the relay of partition p (see RunRelay) until ctx is
// done (then it returns nil) or it fails. A new owner starts from the relay
// position in its own store, possibly behind the previous owner's: the
// copies it appends again are dropped by their recipients.
func (s *Store) RelayPartition(ctx context.Context, log engine.Log, p int32) error {
	if err := s.checkPartition(p); err != nil {
		return err
	}
	return quiet(ctx, s.relayPartition(ctx, log, p))
}

// SyncedCheckpoint makes every batch committed so far durable (the store
// commits without fsync by default) and then returns partition p's next
// offset: an offset that a crash cannot move back, safe to publish (e.g. as
// a Kafka group offset for lag monitoring).
func (s *Store) SyncedCheckpoint(p int32) (int64, error) {
	if err := s.checkPartition(p); err != nil {
		return 0, err
	}
	if s.isClosed() {
		return 0, ErrClosed
	}
	next := s.Checkpoint(p).NextOffset
	// An empty synced WAL record: Pebble syncs the WAL up to and including
	// it, so every batch committed before it (this checkpoint's) is durable.
	if err := s.db.LogData(nil, pebble.Sync); err != nil {
		return 0, fmt.Errorf("projections: sync: %w", err)
	}
	return next, nil
}

func (s *Store) checkPartition(p int32) error {
	if p < 0 || p >= s.opts.Partitions {
		return fmt.Errorf("projections: partition %d: %w", p, engine.ErrBadPartition)
	}
	return nil
}

// quiet maps the errors of a loop stopped by ctx to nil.
func quiet(ctx context.Context, err error) error {
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, engine.ErrLogClosed) || errors.Is(err, ErrClosed)) {
		return nil
	}
	return err
}

// PartitionPolicy returns app's policy as partition p applies it (Policy
// returns the newest over all partitions).
func (s *Store) PartitionPolicy(app string, p int32) (*pb.Policy, error) {
	if err := s.checkPartition(p); err != nil {
		return nil, err
	}
	if s.isClosed() {
		return nil, ErrClosed
	}
	pol := &pb.Policy{}
	ok, err := s.getProto(policyKey(app, p), pol)
	if err != nil {
		return nil, err
	}
	if !ok {
		return engine.DefaultPolicy(), nil
	}
	return pol, nil
}

// AdvanceRelay moves partition p's relay position forward to off, never
// back. A new owner calls it, before it runs the relay, with the position
// the previous owner published: that owner wrote a position only after the
// copies before it were appended, so they are in the log and need not be
// appended again.
func (s *Store) AdvanceRelay(p int32, off int64) error {
	if err := s.checkPartition(p); err != nil {
		return err
	}
	if s.isClosed() {
		return ErrClosed
	}
	if off <= s.RelayPosition(p) {
		return nil
	}
	return s.setRelayPosition(p, off)
}

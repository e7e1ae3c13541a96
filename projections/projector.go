package projections

import (
	"context"
	"errors"
	"fmt"

	"github.com/mdsync/mdsync/engine"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
)

// readBatch is how many log entries one projection batch applies at most.
const readBatch = 512

// Run projects every partition of log, from each partition's checkpoint,
// until ctx is done (it then returns nil) or an error stops a partition.
func (s *Store) Run(ctx context.Context, log engine.Log) error {
	if log.Partitions() != s.opts.Partitions {
		return fmt.Errorf("%w: store %d, log %d", ErrPartitionMismatch, s.opts.Partitions, log.Partitions())
	}
	g, ctx := errgroup.WithContext(ctx)
	for p := int32(0); p < s.opts.Partitions; p++ {
		g.Go(func() error { return s.runPartition(ctx, log, p, -1) })
	}
	err := g.Wait()
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, engine.ErrLogClosed) || errors.Is(err, ErrClosed)) {
		return nil
	}
	if err != nil {
		s.fail(err)
	}
	return err
}

// runPartition applies p from its checkpoint; with until >= 0 it stops once
// the checkpoint reaches until, otherwise it follows the log.
func (s *Store) runPartition(ctx context.Context, log engine.Log, p int32, until int64) error {
	for {
		from := s.Checkpoint(p).NextOffset
		if until >= 0 && from >= until {
			return nil
		}
		max := readBatch
		if until >= 0 && until-from < int64(max) {
			max = int(until - from)
		}
		entries, err := log.Read(ctx, p, from, max)
		if err != nil {
			return fmt.Errorf("projections: read partition %d at %d: %w", p, from, err)
		}
		if err := s.Apply(p, entries); err != nil {
			return err
		}
	}
}

// CatchUp applies every partition up to the log's end as of the call.
func (s *Store) CatchUp(ctx context.Context, log engine.Log) error {
	ends := make([]int64, s.opts.Partitions)
	for p := range ends {
		e, err := log.End(ctx, int32(p))
		if err != nil {
			return err
		}
		ends[p] = e
	}
	return s.CatchUpTo(ctx, log, ends)
}

// CatchUpTo applies partition p up to (not including) offset ends[p].
func (s *Store) CatchUpTo(ctx context.Context, log engine.Log, ends []int64) error {
	g, ctx := errgroup.WithContext(ctx)
	for p, end := range ends {
		g.Go(func() error { return s.runPartition(ctx, log, int32(p), end) })
	}
	return g.Wait()
}

// Rebuild builds a fresh store from offset 0 of every partition up to the
// log's current end. opts.Dir must be empty or absent.
func Rebuild(ctx context.Context, log engine.Log, opts Options) (*Store, error) {
	opts.Partitions = log.Partitions()
	s, err := Open(opts)
	if err != nil {
		return nil, err
	}
	for p := int32(0); p < s.opts.Partitions; p++ {
		if s.Checkpoint(p).NextOffset != 0 {
			s.Close()
			return nil, fmt.Errorf("projections: rebuild into a non-empty store (%s)", opts.Dir)
		}
	}
	if err := s.CatchUp(ctx, log); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func unmarshal(b []byte, m proto.Message) error {
	if err := proto.Unmarshal(b, m); err != nil {
		return fmt.Errorf("projections: decode: %w", err)
	}
	return nil
}

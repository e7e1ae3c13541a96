package projections

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
)

// RunRelay appends, for every applied operation of each partition, the
// copies it fans out to other partitions (Decision.fanout) as DELIVER
// events, in log order. Its position per partition is operational state
// written after the append: after a crash it appends some copies again, and
// the recipients drop them as duplicates (invariant 6). It returns nil when
// ctx is done.
func (s *Store) RunRelay(ctx context.Context, log engine.Log) error {
	g, ctx := errgroup.WithContext(ctx)
	for p := int32(0); p < s.opts.Partitions; p++ {
		g.Go(func() error { return s.relayPartition(ctx, log, p) })
	}
	err := g.Wait()
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, engine.ErrLogClosed) || errors.Is(err, ErrClosed)) {
		return nil
	}
	return err
}

func (s *Store) relayPosition(p int32) (int64, error) {
	v, closer, err := s.db.Get(relayKey(p))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer closer.Close()
	return int64(binary.BigEndian.Uint64(v)), nil
}

func (s *Store) relayPartition(ctx context.Context, log engine.Log, p int32) error {
	from, err := s.relayPosition(p)
	if err != nil {
		return err
	}
	for {
		// Relay only what the projection applied: its decision holds the fan-out.
		if err := s.WaitApplied(ctx, engine.Position{Partition: p, Offset: from}); err != nil {
			return err
		}
		applied := s.Checkpoint(p).NextOffset
		max := int(min(applied-from, readBatch))
		entries, err := log.Read(ctx, p, from, max)
		if err != nil {
			return fmt.Errorf("projections: relay read %d/%d: %w", p, from, err)
		}
		var recs []engine.Record
		for _, en := range entries {
			ev, err := engine.Decode(en.Value)
			if err != nil || ev.Actor == nil {
				continue
			}
			d, ok, err := s.Decision(ev.App, ev.StreamKey, ev.Actor.User, ev.ClientOpId)
			if err != nil {
				return err
			}
			// A retried duplicate shares the first append's decision: relay once.
			if !ok || d.Partition != p || d.Offset != en.Offset {
				continue
			}
			for _, f := range d.Fanout {
				dl := proto.Clone(f).(*pb.Deliver)
				dl.Source = ev
				de := engine.DeliverEvent(dl)
				b, err := engine.Encode(de)
				if err != nil {
					return err
				}
				recs = append(recs, engine.Record{
					Partition: engine.PartitionFor([]byte(de.StreamKey), s.opts.Partitions),
					Key:       []byte(de.StreamKey), Value: b,
				})
			}
		}
		if len(recs) > 0 {
			if _, err := log.Append(ctx, recs); err != nil {
				return fmt.Errorf("projections: relay append: %w", err)
			}
		}
		from += int64(len(entries))
		if err := s.db.Set(relayKey(p), binary.BigEndian.AppendUint64(nil, uint64(from)), pebble.NoSync); err != nil {
			return err
		}
	}
}

// RelayPosition returns the next offset of partition p the relay will read.
func (s *Store) RelayPosition(p int32) int64 {
	off, _ := s.relayPosition(p)
	return off
}

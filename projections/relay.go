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

// readRelayPosition reads partition p's relay position from Pebble (at Open).
func (s *Store) readRelayPosition(p int32) (int64, error) {
	v, closer, err := s.db.Get(relayKey(p))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("projections: read relay position of partition %d: %w", p, err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("projections: relay position of partition %d: %d bytes, want 8", p, len(v))
	}
	return int64(binary.BigEndian.Uint64(v)), nil
}

// setRelayPosition writes partition p's relay position and, once Pebble
// took it, publishes it to RelayPosition and wakes WaitRelayed.
func (s *Store) setRelayPosition(p int32, off int64) error {
	if err := s.db.Set(relayKey(p), binary.BigEndian.AppendUint64(nil, uint64(off)), pebble.NoSync); err != nil {
		return fmt.Errorf("projections: write relay position of partition %d: %w", p, err)
	}
	rs := s.relay[p]
	rs.mu.Lock()
	rs.pos = off
	close(rs.changed)
	rs.changed = make(chan struct{})
	rs.mu.Unlock()
	return nil
}

// relayStopped records that partition p's relay stopped on err (nil: it
// (re)started) and wakes WaitRelayed.
func (s *Store) relayStopped(p int32, err error) {
	rs := s.relay[p]
	rs.mu.Lock()
	rs.err = err
	close(rs.changed)
	rs.changed = make(chan struct{})
	rs.mu.Unlock()
}

func (s *Store) relayPartition(ctx context.Context, log engine.Log, p int32) (err error) {
	s.relayStopped(p, nil)
	defer func() {
		if quiet(ctx, err) != nil {
			s.relayStopped(p, err)
		}
	}()
	// The live path: the batches the projector commits from now on come
	// with their decisions (handoff.go). What it does not hold (everything
	// before this start, or a stretch the relay fell behind on) is read
	// from the log, as after a crash.
	s.followFanout(p, true)
	defer s.followFanout(p, false)
	from := s.RelayPosition(p)
	for {
		// Relay only what the projection applied: its decision holds the fan-out.
		if err := s.WaitApplied(ctx, engine.Position{Partition: p, Offset: from}); err != nil {
			return err
		}
		var recs []engine.Record
		items, to, ok := s.takeFanout(p, from)
		if ok {
			for _, it := range items {
				if recs, err = s.deliveries(recs, it.ev, it.d); err != nil {
					return err
				}
			}
		} else if recs, to, err = s.relayRead(ctx, log, p, from); err != nil {
			return err
		}
		if len(recs) > 0 {
			if _, err := log.Append(ctx, recs); err != nil {
				return fmt.Errorf("projections: relay append: %w", err)
			}
		}
		from = to
		if err := s.setRelayPosition(p, from); err != nil {
			return err
		}
	}
}

// relayRead reads applied entries of p from offset from on and returns the
// DELIVER records their decisions fan out, and the end of what it read:
// the relay's path where the projector's hand-off does not reach.
func (s *Store) relayRead(ctx context.Context, log engine.Log, p int32, from int64) ([]engine.Record, int64, error) {
	applied := s.Checkpoint(p).NextOffset
	max := int(min(applied-from, readBatch))
	entries, err := log.Read(ctx, p, from, max)
	if err != nil {
		return nil, from, fmt.Errorf("projections: relay read %d/%d: %w", p, from, err)
	}
	var recs []engine.Record
	for _, en := range entries {
		ev, err := engine.Decode(en.Value)
		if err != nil || ev.Actor == nil {
			continue
		}
		d, ok, err := s.Decision(ev.App, ev.StreamKey, ev.Actor.User, ev.ClientOpId)
		if err != nil {
			return nil, from, err
		}
		// A retried duplicate shares the first append's decision: relay once.
		if !ok || d.Partition != p || d.Offset != en.Offset {
			continue
		}
		if recs, err = s.deliveries(recs, ev, d); err != nil {
			return nil, from, err
		}
	}
	return recs, from + int64(len(entries)), nil
}

// deliveries appends to recs the DELIVER records of the copies d (the
// decision made for ev) fans out. Neither ev nor d is modified.
func (s *Store) deliveries(recs []engine.Record, ev *pb.Event, d *pb.Decision) ([]engine.Record, error) {
	for _, f := range d.Fanout {
		dl := proto.Clone(f).(*pb.Deliver)
		dl.Source = ev
		de := engine.DeliverEvent(dl)
		b, err := engine.Encode(de)
		if err != nil {
			return recs, err
		}
		recs = append(recs, engine.Record{
			Partition: engine.PartitionFor([]byte(de.StreamKey), s.opts.Partitions),
			Key:       []byte(de.StreamKey), Value: b,
		})
	}
	return recs, nil
}

// RelayPosition returns the next offset of partition p the relay will
// read: the copies of every entry before it are in the log. It is the
// position last written to Pebble by this process (read from Pebble at
// Open, which fails if it cannot be read), so it has no error to return.
func (s *Store) RelayPosition(p int32) int64 {
	rs := s.relay[p]
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.pos
}

// WaitRelayed blocks until the relay of partition p has appended the
// fan-out copies of the entry at offset and of every entry before it
// (RelayPosition(p) > offset), so a reader of the recipients' partitions
// can wait for those copies with WaitApplied. It returns an error when the
// relay of p stopped on an error, the projector stopped, the store is
// closed, or ctx is done. It does not start a relay: with none running for
// p, it waits for ctx.
func (s *Store) WaitRelayed(ctx context.Context, p int32, offset int64) error {
	if err := s.checkPartition(p); err != nil {
		return fmt.Errorf("projections: wait relayed: %w", err)
	}
	rs := s.relay[p]
	for {
		rs.mu.Lock()
		done, rerr, ch := rs.pos > offset, rs.err, rs.changed
		rs.mu.Unlock()
		switch {
		case done:
			return nil
		case rerr != nil:
			return fmt.Errorf("projections: relay of partition %d stopped: %w", p, rerr)
		}
		select {
		case <-ch:
		case <-s.closed:
			return ErrClosed
		case <-s.failed:
			return fmt.Errorf("projections: projector stopped: %w", s.failErr)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

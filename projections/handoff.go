package projections

import (
	"fmt"
	"sort"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// The hand-off: what a committed batch decided goes straight to those who
// wait for it, instead of their reading it back from Pebble (and, for the
// relay, the log too). After a batch commits (Runner.Apply, once Commit
// returned: Pebble shows a batch to readers before that, and nothing is
// handed out earlier than WaitApplied would return), the runner
//   - calls each operation waiting on an offset of the batch
//     (AwaitDecision) with the decision made there,
//   - keeps the newest decisions by offset, for a waiter that registers
//     after its batch committed (the engine registers once its append
//     returned; the projector, woken by the same fsync, may be first),
//   - queues the batch's events that fan out, with their decisions, for
//     the partition's live relay (relay.go).
// Anything not in hand (a retried duplicate, whose decision was made at an
// earlier offset; a decision older than the recent ones; a batch the relay
// fell too far behind on; anything after a restart) is read from Pebble
// and the log as before, so the hand-off changes no answer, only its cost.

// recentDecisions is how many of a partition's newest decisions are kept by
// offset (a power of two). A waiter that registers later than this many
// decisions after its own reads the decision from Pebble.
const recentDecisions = 1024

// maxFeedSpan and maxFeedBytes bound what a partition's fan-out feed holds
// while its relay is behind (offsets covered, bytes of the events held);
// past either the oldest batch is dropped and the relay reads those
// offsets from the log.
const (
	maxFeedSpan  = 8 * readBatch
	maxFeedBytes = 8 << 20
)

// handed is a decision made at offset off, with its event and the size of
// its record.
type handed struct {
	off  int64
	ev   *pb.Event
	d    *pb.Decision
	size int
}

// recentDecision is a decision kept by offset (without its event: a ring
// of events would hold their bodies).
type recentDecision struct {
	off int64
	d   *pb.Decision
}

// decisionWaiter is an operation waiting for the decision made at its
// offset; user and op identify it (a decision made for another operation
// is not handed to it).
type decisionWaiter struct {
	user, op string
	done     func(d *pb.Decision, err error)
}

type readyWaiter struct {
	off int64
	w   decisionWaiter
}

// fanoutBatch is the part of one committed batch [from, to) the relay
// needs: its decisions with a fan-out, in offset order.
type fanoutBatch struct {
	from, to int64
	items    []handed
	bytes    int // the items' record sizes
}

// fanoutFeed is a partition's committed batches not yet taken by its live
// relay, contiguous and in order; filled only while a relay follows it.
type fanoutFeed struct {
	on      bool
	batches []fanoutBatch
	span    int64 // offsets the batches cover
	bytes   int   // the batches' bytes
}

// handOff records the batch [from, to) just committed with the decisions
// made in it and returns the waiters it answers. Called under ps.mu, in
// the same critical section that publishes the new checkpoint.
func (ps *partState) handOff(from, to int64, made []handed) []readyWaiter {
	for _, m := range made {
		ps.recent[m.off&(recentDecisions-1)] = recentDecision{off: m.off, d: m.d}
	}
	if ps.feed.on {
		b := fanoutBatch{from: from, to: to}
		for _, m := range made {
			if len(m.d.Fanout) > 0 {
				b.items = append(b.items, m)
				b.bytes += m.size
			}
		}
		f := &ps.feed
		f.batches = append(f.batches, b)
		f.span += to - from
		f.bytes += b.bytes
		for (f.span > maxFeedSpan || f.bytes > maxFeedBytes) && len(f.batches) > 1 {
			f.dropFirst()
		}
	}
	if len(ps.waiters) == 0 {
		return nil
	}
	var ready []readyWaiter
	take := func(off int64) {
		for _, w := range ps.waiters[off] {
			ready = append(ready, readyWaiter{off: off, w: w})
		}
		delete(ps.waiters, off)
	}
	if int64(len(ps.waiters)) < to-from {
		for off := range ps.waiters {
			if off < to {
				take(off)
			}
		}
	} else {
		for off := from; off < to; off++ {
			if _, ok := ps.waiters[off]; ok {
				take(off)
			}
		}
	}
	return ready
}

// handOut answers the waiters handOff returned: each gets the decision
// made at its offset, or nil (read it from Pebble) when none was made there
// for its operation. Called without ps.mu: done may take other locks.
func handOut(ready []readyWaiter, made []handed) {
	for _, r := range ready {
		i := sort.Search(len(made), func(i int) bool { return made[i].off >= r.off })
		var d *pb.Decision
		if i < len(made) && made[i].off == r.off {
			d = made[i].d
		}
		r.w.done(mine(d, r.w.user, r.w.op), nil)
	}
}

// mine returns d when it is the decision of the operation (user, op), else
// nil. The event at a waiter's offset is the one its engine appended, so
// this holds unless the entry was a retried duplicate (no decision made)
// or a record of another tool; then the decision is read from Pebble.
func mine(d *pb.Decision, user, op string) *pb.Decision {
	if d == nil || d.User != user || d.ClientOpId != op {
		return nil
	}
	return d
}

// awaitDecision calls done once, with the decision made at pos for the
// operation (user, op) once pos is applied (nil: none in hand, read it
// from Pebble), or with an error once the runner is closed or stopped on
// an error. done runs on the caller's goroutine when pos is already
// applied, else on the partition's projector goroutine after the commit.
func (r *Runner) awaitDecision(pos engine.Position, user, op string, done func(d *pb.Decision, err error)) {
	if pos.Partition < 0 || int(pos.Partition) >= len(r.parts) {
		done(nil, fmt.Errorf("projections: await decision: %w", engine.ErrBadPartition))
		return
	}
	ps := r.parts[pos.Partition]
	ps.mu.Lock()
	if err := r.stopped(); err != nil {
		ps.mu.Unlock()
		done(nil, err)
		return
	}
	if ps.cp.NextOffset > pos.Offset {
		var d *pb.Decision
		if m := ps.recent[pos.Offset&(recentDecisions-1)]; m.d != nil && m.off == pos.Offset {
			d = mine(m.d, user, op)
		}
		ps.mu.Unlock()
		done(d, nil)
		return
	}
	ps.waiters[pos.Offset] = append(ps.waiters[pos.Offset], decisionWaiter{user: user, op: op, done: done})
	ps.mu.Unlock()
}

// stopped returns the error a waiter gets once the runner is closed or
// stopped on an error, nil while it runs.
func (r *Runner) stopped() error {
	select {
	case <-r.closed:
		return ErrClosed
	case <-r.failed:
		return fmt.Errorf("projections: projector stopped: %w", r.failErr)
	default:
		return nil
	}
}

// dropWaiters answers every registered waiter with err. It runs after
// closed or failed is closed, so no waiter registers after it (awaitDecision
// checks both under the same lock).
func (r *Runner) dropWaiters(err error) {
	for _, ps := range r.parts {
		ps.mu.Lock()
		ws := ps.waiters
		ps.waiters = map[int64][]decisionWaiter{}
		ps.mu.Unlock()
		for _, list := range ws {
			for _, w := range list {
				w.done(nil, err)
			}
		}
	}
}

// AwaitDecision implements engine.Projector: the decision the runner hands
// over after the commit of the batch that made it, or, when it has none
// in hand for the operation (a retried duplicate, a decision made before a
// restart or long ago), the one Decision reads.
func (s *Store) AwaitDecision(pos engine.Position, app, stream, user, op string, done func(d *pb.Decision, ok bool, err error)) {
	s.awaitDecision(pos, user, op, func(d *pb.Decision, err error) {
		if err != nil || d != nil {
			done(d, d != nil, err)
			return
		}
		done(s.Decision(app, stream, user, op))
	})
}

// followFanout turns partition p's fan-out feed on (a live relay follows
// it) or off, emptying it.
func (r *Runner) followFanout(p int32, on bool) {
	ps := r.parts[p]
	ps.mu.Lock()
	ps.feed = fanoutFeed{on: on}
	ps.mu.Unlock()
}

// takeFanout returns the fan-out decisions the feed holds for partition p
// from offset from on, and the end of the offsets they cover; ok is false
// when the feed does not hold offset from (the relay was behind, or started
// after that batch committed): the relay then reads the log.
func (r *Runner) takeFanout(p int32, from int64) (items []handed, to int64, ok bool) {
	ps := r.parts[p]
	ps.mu.Lock()
	defer ps.mu.Unlock()
	f := &ps.feed
	for len(f.batches) > 0 && f.batches[0].to <= from {
		f.dropFirst()
	}
	if len(f.batches) == 0 || f.batches[0].from > from {
		ps.missed++
		return nil, from, false
	}
	ps.fed++
	to = from
	for len(f.batches) > 0 && f.batches[0].from <= to && to-from < readBatch {
		for _, it := range f.batches[0].items {
			if it.off >= from {
				items = append(items, it)
			}
		}
		to = f.batches[0].to
		f.dropFirst()
	}
	return items, to, true
}

// dropFirst drops the feed's oldest batch.
func (f *fanoutFeed) dropFirst() {
	b := f.batches[0]
	f.span -= b.to - b.from
	f.bytes -= b.bytes
	f.batches[0] = fanoutBatch{}
	f.batches = f.batches[1:]
}

// relayCounts returns how many relay batches were taken from the feeds
// and how many were read from the log instead, over every partition.
func (r *Runner) relayCounts() (fed, missed int64) {
	for _, ps := range r.parts {
		ps.mu.Lock()
		fed += ps.fed
		missed += ps.missed
		ps.mu.Unlock()
	}
	return fed, missed
}

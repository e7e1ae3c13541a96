package engine

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// DefaultMaxPendingAge is Options.MaxPendingAge's default. An op admitted
// while the oldest undecided op has waited less than this (beyond the
// pipeline's own latency) waits, at worst, for what was admitted in that
// window to drain: about this long when admission is steady, which keeps
// the op p99 past saturation near the 250 ms goal of issue 12 on a node
// whose pipeline alone is fast (append, apply and reply take the rest). It needs no
// sizing against the machine's speed, which a count does: 256 ops were
// 25 ms of work on a quiet node and 1.3 s on a loaded one (design-notes,
// "Overload").
const DefaultMaxPendingAge = 200 * time.Millisecond

// Bounds of the retry_after a busy refusal advertises.
const (
	minBusyRetry = 5 * time.Millisecond
	maxBusyRetry = 5 * time.Second
)

// admission is the node's bound on ops awaiting decisions: a hard cap on
// their count and a bound on the age of the oldest one.
type admission struct {
	maxCount int64         // <= 0: no cap
	maxAge   time.Duration // <= 0: no age bound
	now      func() time.Time
	pending  atomic.Int64 // ops taken for appending and not yet decided

	mu sync.Mutex
	// fifo holds the batches taken for appending and not yet all decided,
	// oldest first (fifo[head:]). Batches of different partitions decide
	// out of order, so a decided batch stays, at zero left, until every
	// older one is decided too: the head is the oldest undecided batch.
	fifo []*ageBatch
	head int
	// The drain rate (ops decided per second), a moving average sampled
	// at least every rateSample while decisions come in.
	rate      float64
	lastT     time.Time
	sinceLast int64
	// alone is the time the first op of a batch admitted with nothing
	// ahead of it takes to be decided (a moving average): the pipeline's
	// own latency, which no refusal shortens. The age bound applies to the
	// wait beyond it. The first op, not the whole batch: a large batch's
	// last decision includes its own queue.
	alone    time.Duration
	aloneSet bool
}

// ageBatch is one append's ops awaiting decisions.
type ageBatch struct {
	t     time.Time // when its Begin admitted them
	left  int
	alone bool // nothing was awaiting decisions when it was admitted: sample alone at its first decision
}

const rateSample = 20 * time.Millisecond

func newAdmission(maxCount int, maxAge time.Duration, now func() time.Time) *admission {
	return &admission{maxCount: int64(maxCount), maxAge: maxAge, now: now}
}

// verdict is one Begin call's admission state, read once per call: the age
// of the oldest undecided op changes by microseconds within one call, and a
// call's ops are refused together from the first refused one anyway.
type verdict struct {
	read  bool
	t     time.Time // when the call admitted its ops
	old   bool      // the oldest undecided op is past maxAge
	after time.Duration
}

// check reads the admission state for a Begin call.
func (a *admission) check(v *verdict) {
	if v.read {
		return
	}
	v.read = true
	v.t = a.now()
	if a.maxAge <= 0 {
		return
	}
	a.mu.Lock()
	if a.head < len(a.fifo) && v.t.Sub(a.fifo[a.head].t) > a.maxAge+a.alone {
		v.old = true
	}
	a.mu.Unlock()
}

// admit takes a pending slot for op, or reports false when a bound refuses
// it (logins always get one).
func (a *admission) admit(op *pb.Event, v *verdict) bool {
	a.check(v)
	login := op.Kind == pb.Kind_KIND_LOGIN
	if v.old && !login {
		return false
	}
	if n := a.pending.Add(1); a.maxCount > 0 && n > a.maxCount && !login {
		a.pending.Add(-1)
		return false
	}
	return true
}

// busy is the refusal of an op past a bound. Its RetryAfter is the time
// the ops awaiting decisions take to drain at the current decision rate,
// scaled by a random factor in [0.5, 1): devices refused together come back
// spread over the second half of the drain, so the queue refills while it
// still has work instead of all at once after it went idle.
func (a *admission) busy(v *verdict) *Error {
	if v.after == 0 {
		a.mu.Lock()
		rate := a.rate
		a.mu.Unlock()
		d := a.maxAge
		if rate > 0 {
			d = time.Duration(float64(a.pending.Load()) / rate * float64(time.Second))
		}
		if d <= 0 {
			d = DefaultMaxPendingAge
		}
		d = time.Duration(float64(d) * (0.5 + rand.Float64()/2))
		v.after = min(max(d, minBusyRetry), maxBusyRetry)
	}
	msg := ErrBusy.Message
	if v.old {
		msg = "operations awaiting decisions on this node are older than " + a.maxAge.String()
	}
	return &Error{Code: CodeBusy, Message: msg, RetryAfter: v.after}
}

// enqueue records n ops taken for appending by a call at t; the batch is
// the oldest undecided one until its ops are decided (decided).
func (a *admission) enqueue(t time.Time, n int) *ageBatch {
	b := &ageBatch{t: t, left: n}
	a.mu.Lock()
	b.alone = a.head == len(a.fifo)
	a.fifo = append(a.fifo, b)
	a.mu.Unlock()
	return b
}

// decided gives back n of b's slots (decided, or failed to append) and
// samples the drain rate when counted is set (failed appends are not a
// drain).
func (a *admission) decided(b *ageBatch, n int, counted bool) {
	a.pending.Add(-int64(n))
	a.mu.Lock()
	defer a.mu.Unlock()
	b.left -= n
	for a.head < len(a.fifo) && a.fifo[a.head].left == 0 {
		a.fifo[a.head] = nil
		a.head++
	}
	if a.head == len(a.fifo) {
		a.fifo, a.head = a.fifo[:0], 0
	} else if a.head > 64 && a.head > len(a.fifo)/2 {
		n := copy(a.fifo, a.fifo[a.head:])
		clear(a.fifo[n:])
		a.fifo, a.head = a.fifo[:n], 0
	}
	if !counted {
		return
	}
	a.sinceLast += int64(n)
	now := a.now()
	if b.alone {
		b.alone = false
		if d := now.Sub(b.t); !a.aloneSet {
			a.alone, a.aloneSet = d, true
		} else {
			a.alone = (4*a.alone + d) / 5
		}
	}
	if a.lastT.IsZero() {
		a.lastT, a.sinceLast = now, 0
		return
	}
	switch dt := now.Sub(a.lastT); {
	case dt > time.Second:
		// After an idle spell: the spell says nothing of the drain rate.
		a.lastT, a.sinceLast = now, 0
	case dt >= rateSample:
		r := float64(a.sinceLast) / dt.Seconds()
		if a.rate == 0 {
			a.rate = r
		} else {
			a.rate = 0.7*a.rate + 0.3*r
		}
		a.lastT, a.sinceLast = now, 0
	}
}

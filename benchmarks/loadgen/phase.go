package loadgen

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// phaseRec collects one phase's figures; events arriving on devices are
// counted in whatever phase is current when they arrive.
type phaseRec struct {
	op, delivery, login, catchup                                       *Recorder
	ok, refused, busy, failed, missed, delivered, evictions, snapshots atomic.Int64
	kmu                                                                sync.Mutex
	byKind                                                             map[string]int64
}

func newPhaseRec() *phaseRec {
	return &phaseRec{op: NewRecorder(), delivery: NewRecorder(), login: NewRecorder(), catchup: NewRecorder(), byKind: map[string]int64{}}
}

func (p *phaseRec) kind(k string) {
	p.kmu.Lock()
	p.byKind[k]++
	p.kmu.Unlock()
}

// runPhase offers the mix at ph.Rate (open loop: a tick that finds every
// worker busy is missed, not queued) or, at rate 0, runs a closed loop of
// Concurrency workers.
func (b *bench) runPhase(ctx context.Context, ph Phase, total *phaseRec, bar progress) PhaseReport {
	r := newPhaseRec()
	b.cur.Store(r)
	start := time.Now()
	end := start.Add(ph.Duration)
	// Operations still in flight at the end get a grace period, then are
	// cancelled (and counted as failed), so a phase ends on time.
	pctx, cancel := context.WithDeadline(ctx, end.Add(phaseGrace))
	defer cancel()
	var wg sync.WaitGroup
	done := make(chan struct{})
	go func() { // progress, in seconds
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		last := 0
		for {
			select {
			case <-done:
				return
			case <-t.C:
				s := int(time.Since(start).Seconds())
				if s > last && s <= int(ph.Duration.Seconds()) {
					bar.Add(s - last)
					last = s
				}
			}
		}
	}()
	if ph.Rate == 0 {
		for w := 0; w < b.sc.Concurrency; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(end) && pctx.Err() == nil {
					if wait := b.one(pctx); wait > 0 {
						// Refused as busy: this slot waits as asked
						// instead of spinning on refusals.
						t := time.NewTimer(min(wait, time.Until(end)))
						select {
						case <-t.C:
						case <-pctx.Done():
							t.Stop()
						}
					}
				}
			}()
		}
	} else {
		sem := make(chan struct{}, b.sc.Concurrency)
		t := time.NewTicker(time.Millisecond)
		issued := int64(0)
	loop:
		for {
			select {
			case <-pctx.Done():
				break loop
			case now := <-t.C:
				if !now.Before(end) {
					break loop
				}
				due := int64(now.Sub(start).Seconds()*ph.Rate) - issued
				for ; due > 0; due-- {
					issued++
					select {
					case sem <- struct{}{}:
						wg.Add(1)
						go func() {
							defer func() { <-sem; wg.Done() }()
							b.one(pctx)
						}()
					default:
						r.missed.Add(1)
					}
				}
			}
		}
		t.Stop()
	}
	wg.Wait()
	close(done)
	elapsed := time.Since(start)
	pr := PhaseReport{Name: ph.Name, OfferedRate: ph.Rate, Seconds: elapsed.Seconds(),
		Ops: r.ok.Load(), Refused: r.refused.Load(), Busy: r.busy.Load(), Failed: r.failed.Load(), Missed: r.missed.Load(),
		Delivered: r.delivered.Load(), Evictions: r.evictions.Load(), CatchUpSnapshots: r.snapshots.Load(), ByKind: map[string]int64{}}
	pr.OpsPerSec = float64(pr.Ops+pr.Refused) / elapsed.Seconds()
	pr.BusyPerSec = float64(pr.Busy) / elapsed.Seconds()
	pr.DeliveredPerSec = float64(pr.Delivered) / elapsed.Seconds()
	r.kmu.Lock()
	for k, v := range r.byKind {
		pr.ByKind[k] = v
	}
	r.kmu.Unlock()
	pr.Op, pr.Delivery, pr.Login, pr.CatchUp = r.op.Snapshot(false), r.delivery.Snapshot(false), r.login.Snapshot(false), r.catchup.Snapshot(false)
	total.op.Merge(r.op)
	total.delivery.Merge(r.delivery)
	total.login.Merge(r.login)
	total.catchup.Merge(r.catchup)
	return pr
}

func sumPhases(phases []PhaseReport, total *phaseRec) PhaseReport {
	t := PhaseReport{Name: "total", ByKind: map[string]int64{}}
	for _, p := range phases {
		t.Seconds += p.Seconds
		t.Ops += p.Ops
		t.Refused += p.Refused
		t.Busy += p.Busy
		t.Failed += p.Failed
		t.Missed += p.Missed
		t.Delivered += p.Delivered
		t.Evictions += p.Evictions
		t.CatchUpSnapshots += p.CatchUpSnapshots
		t.ServerCPUSeconds += p.ServerCPUSeconds
		for k, v := range p.ByKind {
			t.ByKind[k] += v
		}
	}
	if t.Seconds > 0 {
		t.OpsPerSec = float64(t.Ops+t.Refused) / t.Seconds
		t.BusyPerSec = float64(t.Busy) / t.Seconds
		t.DeliveredPerSec = float64(t.Delivered) / t.Seconds
	}
	if t.ServerCPUSeconds > 0 {
		t.setServerCPU(time.Duration(t.ServerCPUSeconds * float64(time.Second)))
	}
	t.Op, t.Delivery, t.Login, t.CatchUp = total.op.Snapshot(false), total.delivery.Snapshot(false), total.login.Snapshot(false), total.catchup.Snapshot(false)
	return t
}

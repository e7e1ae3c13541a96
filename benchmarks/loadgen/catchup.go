package loadgen

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdsync/mdsync/client"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// catchUp: whole users go offline; one more user sends Missed messages to
// a group of them; once the server has applied every copy (projection lag
// 0), all their devices reconnect at once and each waits for the last
// message (the marker). Timed per device and overall.
func (b *bench) catchUp(ctx context.Context, s *Sampler) (*CatchUpReport, error) {
	sc := b.sc
	nUsers := (sc.CatchUp.Devices + sc.DevicesPerUser - 1) / sc.DevicesPerUser
	senderUI := nUsers // not offline
	cu := &CatchUpReport{MissedPerDev: sc.CatchUp.Missed}
	g := group{id: "catchup-" + b.runID}
	for ui := 0; ui < nUsers; ui++ {
		g.members = append(g.members, ui)
	}
	g.members = append([]int{senderUI}, g.members...)
	if err := b.createGroup(ctx, g); err != nil {
		return cu, err
	}
	var offline []*device
	for ui := 0; ui < nUsers; ui++ {
		offline = append(offline, b.users[ui].devs...)
	}
	cu.Devices = len(offline)
	// Let the devices' acks reach the server, so each catches up exactly
	// what it missed.
	time.Sleep(2 * time.Second)
	lids := make([]string, len(offline))
	for i, d := range offline {
		d.mu.Lock()
		lids[i] = d.loginID
		d.mu.Unlock()
		d.drop()
	}
	sd, sc0 := b.onlineDeviceOf(senderUI)
	if sc0 == nil {
		return cu, errors.New("sender has no device online")
	}
	defer sd.use.RUnlock()
	marker := b.seq.Add(1)
	for _, d := range offline {
		d.startCatchUp(marker)
	}
	send := func(ctx context.Context, mk uint64) error {
		ctx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		_, err := sc0.c.Send(ctx, client.Message{ChatType: pb.ChatType_CHAT_TYPE_GROUP, To: g.id, ClientMsgID: b.nextID("cu"),
			ContentType: "application/octet-stream", Body: stamp(sc.BodyBytes, time.Now(), mk)})
		return err
	}
	bar := b.bar(sc.CatchUp.Missed, "send missed events")
	sendStart := time.Now()
	sem := make(chan struct{}, sc.Concurrency)
	var wg sync.WaitGroup
	var sendErrs atomic.Int64
	for i := 0; i < sc.CatchUp.Missed-1; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done(); bar.Add(1) }()
			if err := send(ctx, 0); err != nil {
				sendErrs.Add(1)
				b.noteErr("catch-up send: "+errClass(err), err)
			}
		}()
	}
	wg.Wait()
	if err := send(ctx, marker); err != nil { // last, so it is the end of what was missed
		return cu, fmt.Errorf("marker: %w", err)
	}
	bar.Add(1)
	bar.Finish()
	if n := sendErrs.Load(); n > 0 {
		return cu, fmt.Errorf("%d missed-event sends failed", n)
	}
	// Fan-out to the members' timelines continues after the sends are
	// decided; catch-up is measured from a settled server.
	if err := b.waitLagZero(ctx, 10*time.Minute); err != nil {
		return cu, err
	}
	cu.SendSeconds = time.Since(sendStart).Seconds()
	b.log.Info("missed events sent and applied", "messages", sc.CatchUp.Missed, "seconds", cu.SendSeconds)

	lat := NewRecorder()
	bar = b.bar(len(offline), "catch up")
	at := s.Since()
	start := time.Now()
	sem = make(chan struct{}, sc.ConnectConcurrency)
	var complete, snaps atomic.Int64
	for i, d := range offline {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
			defer cancel()
			t0 := time.Now()
			_, _, err := d.dial(cctx, lids[i])
			<-sem // the dial is done; the wait for the marker holds no slot
			if err != nil {
				b.noteErr("catch-up reconnect: "+errClass(err), err)
				return
			}
			select {
			case <-d.markerCh:
				if d.bySnapshot.Load() {
					snaps.Add(1)
				} else {
					lat.Record(time.Since(t0))
				}
				complete.Add(1)
				bar.Add(1)
			case <-cctx.Done():
				b.noteErr("catch-up: marker not received", cctx.Err())
			}
		}()
	}
	wg.Wait()
	bar.Finish()
	cu.Seconds = time.Since(start).Seconds()
	s.Sample(ctx)
	for _, d := range offline {
		d.catching.Store(false)
		cu.Events += d.caught.Load()
	}
	cu.CompleteDevs = int(complete.Load())
	cu.Snapshots = int(snaps.Load())
	cu.EventsPerSec = float64(cu.Events) / cu.Seconds
	cu.PerDevice = lat.Snapshot(false)
	cu.RSSPeakBytes = s.PeakSince(at)
	if cu.CompleteDevs != cu.Devices {
		return cu, fmt.Errorf("%d of %d devices caught up", cu.CompleteDevs, cu.Devices)
	}
	return cu, nil
}

// rssSlope is the least-squares slope of RSS against connections over the
// samples: memory per connection, free of any constant offset.
func rssSlope(samples []Sample) float64 {
	var n, sx, sy, sxx, sxy float64
	for _, sm := range samples {
		if sm.RSSBytes <= 0 {
			continue
		}
		x, y := float64(sm.Connections), float64(sm.RSSBytes)
		n++
		sx += x
		sy += y
		sxx += x * x
		sxy += x * y
	}
	den := n*sxx - sx*sx
	if n < 2 || den == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / den
}

// settleRSS waits until the server's RSS moved less than 2% over 3 s, or
// limit passed.
func settleRSS(ctx context.Context, s *Sampler, limit time.Duration) {
	if s.PID == 0 {
		return
	}
	var hist []int64
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		rss, err := ReadRSS(s.PID)
		if err != nil {
			return
		}
		hist = append(hist, rss)
		if n := len(hist); n >= 4 {
			a, b := float64(hist[n-4]), float64(rss)
			if b >= a*0.98 && b <= a*1.02 {
				return
			}
		}
		time.Sleep(time.Second)
	}
}

// waitLagZero polls mdsync_projection_lag_events, summed over
// partitions, until it is 0.
func (b *bench) waitLagZero(ctx context.Context, limit time.Duration) error {
	m := MetricsReader{URL: b.httpURL + "/metrics", Token: b.token, HC: b.hc}
	deadline := time.Now().Add(limit)
	for {
		lag, err := m.Sum(ctx, "mdsync_projection_lag_events")
		if err != nil {
			return fmt.Errorf("projection lag: %w", err)
		}
		if lag == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("projection lag still %v after %v", lag, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

package loadgen

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// makePopulation names users and devices: device j on platform
// j%platforms+1.
func (b *bench) makePopulation() {
	for ui := 0; ui < b.sc.Users; ui++ {
		u := &user{name: fmt.Sprintf("u%d-%s", ui, b.runID), password: "bench-pw-" + b.runID}
		for di := 0; di < b.sc.DevicesPerUser; di++ {
			d := &device{b: b, u: u, ui: ui, di: di, platform: int32(di%b.sc.Platforms + 1), name: fmt.Sprintf("dev%d", di)}
			u.devs = append(u.devs, d)
			b.devs = append(b.devs, d)
		}
		b.users = append(b.users, u)
	}
}

// connectAll logs the whole population in, ConnectConcurrency at a time,
// sampling the server every SampleEvery connections.
func (b *bench) connectAll(ctx context.Context, s *Sampler) (ConnectReport, error) {
	cr := ConnectReport{Devices: len(b.devs)}
	// Registration hashes passwords (argon2, ~19 MiB each, several at
	// once); the Go runtime hands that memory back over seconds. The
	// before-sample waits for the server's RSS to settle, or memory per
	// device would be off by the hashing's leftovers.
	settleRSS(ctx, s, 30*time.Second)
	first := s.Sample(ctx)
	cr.RSSBefore = first.RSSBytes
	cr.Samples = append(cr.Samples, first)
	lat := NewRecorder()
	bar := b.bar(len(b.devs), "connect devices")
	sem := make(chan struct{}, b.sc.ConnectConcurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed int
	var firstErr error
	var connected atomic.Int64
	start := time.Now()
	for _, d := range b.devs {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done(); bar.Add(1) }()
			_, took, err := d.dial(ctx, "")
			if err != nil {
				mu.Lock()
				failed++
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				b.noteErr("connect: "+errClass(err), err)
				return
			}
			lat.Record(took)
			if n := connected.Add(1); b.sc.SampleEvery > 0 && n%int64(b.sc.SampleEvery) == 0 {
				sm := s.Sample(ctx)
				mu.Lock()
				cr.Samples = append(cr.Samples, sm)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	bar.Finish()
	cr.Seconds = time.Since(start).Seconds()
	cr.Connected = int(connected.Load())
	cr.PerSecond = float64(cr.Connected) / cr.Seconds
	cr.Login = lat.Snapshot(false)
	// Let the server settle (login bursts leave garbage) before the
	// after-sample that memory per device is taken from.
	time.Sleep(2 * time.Second)
	last := s.Sample(ctx)
	cr.Samples = append(cr.Samples, last)
	cr.RSSAfter, cr.Goroutines = last.RSSBytes, last.Goroutines
	if cr.Connected > 0 && last.RSSBytes > 0 {
		cr.BytesPerDev = float64(last.RSSBytes-cr.RSSBefore) / float64(cr.Connected)
	}
	cr.SlopeBytesPerDev = rssSlope(cr.Samples)
	if failed > 0 {
		return cr, fmt.Errorf("%d of %d devices failed to connect; first: %w", failed, len(b.devs), firstErr)
	}
	return cr, nil
}

// makeGroups creates the mix's groups: GroupSize random users each,
// created by the first with the others as members (at most 99 per
// create, the rest join).
func (b *bench) makeGroups(ctx context.Context) error {
	for gi := 0; gi < b.sc.Groups; gi++ {
		members := rand.Perm(len(b.users))[:b.sc.GroupSize]
		g := group{id: fmt.Sprintf("g%d-%s", gi, b.runID), members: members}
		if err := b.createGroup(ctx, g); err != nil {
			return err
		}
		b.groups = append(b.groups, g)
	}
	return nil
}

func (b *bench) createGroup(ctx context.Context, g group) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	od, oc := b.onlineDeviceOf(g.members[0])
	if oc == nil {
		return fmt.Errorf("group %s: owner has no device online", g.id)
	}
	defer od.use.RUnlock()
	var first []string
	for _, m := range g.members[1:min(len(g.members), 100)] {
		first = append(first, b.users[m].name)
	}
	if _, err := oc.c.Op(ctx, &pb.Event{Kind: pb.Kind_KIND_GROUP_CREATE, ClientOpId: b.nextID("gc"),
		Payload: &pb.Event_Group{Group: &pb.GroupOp{GroupId: g.id, Name: g.id, Users: first}}}); err != nil {
		return fmt.Errorf("create %s: %w", g.id, err)
	}
	for _, m := range g.members[min(len(g.members), 100):] {
		md, mc := b.onlineDeviceOf(m)
		if mc == nil {
			return fmt.Errorf("group %s: member has no device online", g.id)
		}
		_, err := mc.c.Op(ctx, &pb.Event{Kind: pb.Kind_KIND_GROUP_JOIN, ClientOpId: b.nextID("gj"),
			Payload: &pb.Event_Group{Group: &pb.GroupOp{GroupId: g.id}}})
		md.use.RUnlock()
		if err != nil {
			return fmt.Errorf("join %s: %w", g.id, err)
		}
	}
	return nil
}

func (b *bench) closeAll() {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for _, d := range b.devs {
		sem <- struct{}{}
		wg.Add(1)
		go func() { defer func() { <-sem; wg.Done() }(); d.drop() }()
	}
	wg.Wait()
}

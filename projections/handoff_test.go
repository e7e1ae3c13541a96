package projections

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections/storetest"
	"google.golang.org/protobuf/proto"
)

// awaited is what one AwaitDecision call was answered with.
type awaited struct {
	calls int
	d     *pb.Decision
	ok    bool
	err   error
}

// AwaitDecision answers every operation exactly once with the decision the
// store holds for it: handed over (the very decision the batch made) to a
// waiter registered before its batch or among the recent decisions, and
// read from Pebble for a retried duplicate or a decision older than those.
func TestAwaitDecisionIsTheStored(t *testing.T) {
	const parts = 2
	hist := storetest.History(parts, 3000, 11)
	made := map[engine.Position]*pb.Decision{} // what each batch decided, as OnApplied saw it
	var mu sync.Mutex
	s, err := Open(Options{FS: vfs.NewMem(), Partitions: parts, OnApplied: func(p int32, a Applied) {
		mu.Lock()
		defer mu.Unlock()
		for _, d := range a.Decisions {
			made[engine.Position{Partition: d.Partition, Offset: d.Offset}] = d
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	type op struct {
		pos                    engine.Position
		app, stream, user, cop string
	}
	var ops []op
	for _, es := range hist {
		for _, e := range es {
			ev, err := engine.Decode(e.Value)
			if err != nil || ev.Actor == nil {
				continue
			}
			ops = append(ops, op{engine.Position{Partition: e.Partition, Offset: e.Offset}, ev.App, ev.StreamKey, ev.Actor.User, ev.ClientOpId})
		}
	}
	await := func(o op, into *awaited) {
		s.AwaitDecision(o.pos, o.app, o.stream, o.user, o.cop, func(d *pb.Decision, ok bool, err error) {
			mu.Lock()
			defer mu.Unlock()
			into.calls++
			into.d, into.ok, into.err = d, ok, err
		})
	}
	early := make([]awaited, len(ops))
	for i, o := range ops {
		await(o, &early[i])
	}
	for p, es := range hist {
		for i := 0; i < len(es); i += 64 {
			if err := s.Apply(int32(p), es[i:min(i+64, len(es))]); err != nil {
				t.Fatal(err)
			}
		}
	}
	late := make([]awaited, len(ops))
	for i, o := range ops {
		await(o, &late[i])
	}

	mu.Lock()
	defer mu.Unlock()
	var handedEarly, handedLate, read int
	for i, o := range ops {
		want, ok, err := s.Decision(o.app, o.stream, o.user, o.cop)
		if err != nil || !ok {
			t.Fatalf("%v: stored decision %v %v", o.pos, ok, err)
		}
		for _, a := range []*awaited{&early[i], &late[i]} {
			if a.calls != 1 || a.err != nil || !a.ok || !proto.Equal(a.d, want) {
				t.Fatalf("%v %s: %d calls, %v %v %v; stored %v", o.pos, o.cop, a.calls, a.d, a.ok, a.err, want)
			}
		}
		own := made[o.pos]
		if own == nil {
			// A retried duplicate: its decision was made at another offset.
			if want.Offset == o.pos.Offset && want.Partition == o.pos.Partition {
				t.Fatalf("%v: no decision made there, but the store's is from there", o.pos)
			}
			read++
			continue
		}
		if early[i].d != own {
			t.Fatalf("%v: a waiter registered before its batch was not handed the batch's decision", o.pos)
		}
		handedEarly++
		if late[i].d == own {
			handedLate++
		}
	}
	if read == 0 || handedLate == 0 || handedLate == handedEarly {
		t.Fatalf("duplicates %d, handed late %d of %d: the history does not exercise every path", read, handedLate, handedEarly)
	}
}

// A waiter is answered with ErrClosed when the store closes, and so is one
// that registers after.
func TestAwaitDecisionAfterClose(t *testing.T) {
	s, err := Open(Options{FS: vfs.NewMem(), Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	s.AwaitDecision(engine.Position{Offset: 5}, "app", "s", "u", "o", func(_ *pb.Decision, _ bool, err error) { errs <- err })
	s.Close()
	s.AwaitDecision(engine.Position{Offset: 6}, "app", "s", "u", "o", func(_ *pb.Decision, _ bool, err error) { errs <- err })
	for range 2 {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("waiter answered %v, want ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a waiter was not answered after Close")
		}
	}
}

// The relay appends the same copies, in the same order per source
// partition, whether it takes them from the projector's committed batches
// (live) or reads the log (at start, after a stop); a relay stopped and
// started again resumes from its position by reading the log.
func TestRelayLiveEqualsLogRead(t *testing.T) {
	const parts = 3
	hist := storetest.History(parts, 1500, 5)
	var recs []engine.Record
	for _, es := range hist {
		for _, e := range es {
			recs = append(recs, engine.Record{Partition: e.Partition, Key: e.Key, Value: e.Value})
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// wait returns once s relayed every entry of lg, the copies included
	// (they fan out nothing), and lg's ends.
	wait := func(s *Store, lg *memLog) []int {
		t.Helper()
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		defer wcancel()
		for {
			lg.mu.Lock()
			var n []int
			for p := range lg.parts {
				n = append(n, len(lg.parts[p]))
			}
			lg.mu.Unlock()
			for p := range int32(parts) {
				if err := s.WaitRelayed(wctx, p, int64(n[p])-1); err != nil {
					t.Fatal(err)
				}
			}
			same := true
			lg.mu.Lock()
			for p := range lg.parts {
				same = same && len(lg.parts[p]) == n[p]
			}
			lg.mu.Unlock()
			if same {
				return n
			}
		}
	}

	// Live: the relay runs while the history is appended in chunks, stops
	// halfway while more is appended, then starts again.
	live := newMemLog(parts)
	ls, err := Open(Options{FS: vfs.NewMem(), Partitions: parts})
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Close()
	go func() { _ = ls.Run(ctx, live) }()
	rctx, rstop := context.WithCancel(ctx)
	defer rstop()
	relayDone := make(chan error, 1)
	go func() { relayDone <- ls.RunRelay(rctx, live) }()
	half := len(recs) / 2
	for i := 0; i < len(recs); i += 50 {
		if i >= half && i < half+50 {
			rstop()
			if err := <-relayDone; err != nil {
				t.Fatal(err)
			}
		}
		if _, err := live.Append(ctx, recs[i:min(i+50, len(recs))]); err != nil {
			t.Fatal(err)
		}
		if i >= half && i < half+50 {
			// Applied while no relay runs: the restarted relay must read it.
			live.mu.Lock()
			var at []engine.Position
			for p := range live.parts {
				at = append(at, engine.Position{Partition: int32(p), Offset: int64(len(live.parts[p])) - 1})
			}
			live.mu.Unlock()
			for _, pos := range at {
				if err := ls.WaitApplied(ctx, pos); err != nil {
					t.Fatal(err)
				}
			}
			go func() { _ = ls.RunRelay(ctx, live) }()
		}
		time.Sleep(time.Millisecond)
	}
	ends := wait(ls, live)

	// The copies the live relay appended: the live log less the history.
	pending := map[string]int{}
	for _, r := range recs {
		pending[string(r.Value)]++
	}
	live.mu.Lock()
	cold := newMemLog(parts)
	var liveCopies [][]engine.Entry = make([][]engine.Entry, parts)
	for p := range live.parts {
		for _, e := range live.parts[p][:ends[p]] {
			cold.parts[p] = append(cold.parts[p], e)
			if pending[string(e.Value)] > 0 {
				pending[string(e.Value)]--
				continue
			}
			liveCopies[p] = append(liveCopies[p], e)
		}
	}
	live.mu.Unlock()

	// Read from the log only: a store that applied the same log (the
	// live copies included, which fan out nothing) before its relay
	// started relays it again, after the ends.
	cs, err := Open(Options{FS: vfs.NewMem(), Partitions: parts})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	for p := range int32(parts) {
		if err := cs.runPartition(ctx, cold, p, int64(ends[p])); err != nil {
			t.Fatal(err)
		}
	}
	go func() { _ = cs.RunRelay(ctx, cold) }()
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	for p := range int32(parts) {
		if err := cs.WaitRelayed(wctx, p, int64(ends[p])-1); err != nil {
			t.Fatal(err)
		}
	}

	fed, readBatches := ls.relayCounts()
	if fed == 0 || readBatches == 0 {
		t.Fatalf("live relay: %d batches handed over, %d read from the log: both paths must run", fed, readBatches)
	}
	if fed, _ := cs.relayCounts(); fed != 0 {
		t.Fatalf("the cold relay took %d batches from the projector, none was committed while it ran", fed)
	}
	// Copies per (target partition, source partition), in log order.
	bySource := func(es [][]engine.Entry) map[[2]int32][][]byte {
		out := map[[2]int32][][]byte{}
		n := 0
		for p := range es {
			for _, e := range es[p] {
				ev, err := engine.Decode(e.Value)
				if err != nil || ev.Kind != pb.Kind_KIND_DELIVER {
					t.Fatalf("a relayed record at %d/%d is not a copy: %v", p, e.Offset, err)
				}
				k := [2]int32{int32(p), ev.GetDeliver().GetSourcePartition()}
				out[k] = append(out[k], e.Value)
				n++
			}
		}
		if n == 0 {
			t.Fatal("no copies relayed: the test proves nothing")
		}
		return out
	}
	cold.mu.Lock()
	coldCopies := make([][]engine.Entry, parts)
	for p := range cold.parts {
		coldCopies[p] = cold.parts[p][ends[p]:]
	}
	cold.mu.Unlock()
	a, b := bySource(liveCopies), bySource(coldCopies)
	for k, want := range b {
		got := a[k]
		// A relay stopped and started again may append some copies twice
		// (its position is written after the append); recipients drop them.
		// Without those, the sequences are equal.
		var dedup [][]byte
		for _, v := range got {
			if len(dedup) > 0 && containsBytes(dedup, v) {
				continue
			}
			dedup = append(dedup, v)
		}
		if len(dedup) != len(want) {
			t.Fatalf("partition %d from %d: %d copies live, %d read from the log", k[0], k[1], len(dedup), len(want))
		}
		for i := range want {
			if !bytes.Equal(dedup[i], want[i]) {
				t.Fatalf("partition %d from %d: copy %d differs", k[0], k[1], i)
			}
		}
	}
	if len(a) != len(b) {
		t.Fatalf("copies live in %d (target, source) pairs, read from the log in %d", len(a), len(b))
	}
}

func containsBytes(list [][]byte, v []byte) bool {
	for _, x := range list {
		if bytes.Equal(x, v) {
			return true
		}
	}
	return false
}

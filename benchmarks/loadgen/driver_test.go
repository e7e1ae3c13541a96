package loadgen

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestStamp(t *testing.T) {
	at := time.Unix(1700000000, 123456789)
	b := stamp(64, at, 42)
	if len(b) != 64 {
		t.Fatalf("len %d", len(b))
	}
	got, marker, ok := readStamp(b)
	if !ok || !got.Equal(at) || marker != 42 {
		t.Errorf("readStamp = %v %d %v", got, marker, ok)
	}
	if _, _, ok := readStamp([]byte("hello, not a stamp at all")); ok {
		t.Error("a foreign body read as a stamp")
	}
	if len(stamp(1, at, 0)) != stampLen {
		t.Error("a body smaller than the stamp is not grown to it")
	}
}

// echoBench is a bench whose devices talk to the echo server: the load
// loop, the SDK wiring and the counting, without mdsync.
func echoBench(t *testing.T, mix Mix) *bench {
	t.Helper()
	return echoBenchWith(t, mix, 0, false)
}

// echoBenchWith is echoBench with an echo server refusing every
// busyEvery-th op as busy, and the scenario's CountBusy.
func echoBenchWith(t *testing.T, mix Mix, busyEvery int64, countBusy bool) *bench {
	t.Helper()
	e, err := StartEchoServer(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	e.busyEvery = busyEvery
	t.Cleanup(func() { e.Close() })
	sc := defaultScenario()
	sc.CountBusy = countBusy
	sc.Users, sc.DevicesPerUser, sc.Platforms, sc.Concurrency = 4, 2, 2, 4
	sc.Mix = mix
	src, _ := NewSourceAddrs(2)
	b := newBench(sc, slog.New(slog.DiscardHandler), src, true)
	b.wsURL = "ws://" + e.Addr + "/v1/ws"
	b.makePopulation()
	for _, u := range b.users {
		u.token = "t" // the echo server takes any credential
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, d := range b.devs {
		if _, _, err := d.dial(ctx, ""); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(b.closeAll)
	if n := b.open.Load(); n != int64(len(b.devs)) {
		t.Fatalf("open connections %d, want %d", n, len(b.devs))
	}
	return b
}

func TestClosedLoopCountsEveryAnswer(t *testing.T) {
	b := echoBench(t, Mix{UserMessage: 1, Operation: 1, Receipt: 1})
	total := newPhaseRec()
	pr := b.runPhase(context.Background(), Phase{Name: "closed", Duration: 500 * time.Millisecond}, total, noProgress{})
	if pr.Ops == 0 || pr.Failed != 0 || pr.Refused != 0 {
		t.Fatalf("phase %+v errors %v", pr, b.errFirst)
	}
	if pr.Op.Count != pr.Ops {
		t.Errorf("latencies recorded %d, ops %d", pr.Op.Count, pr.Ops)
	}
	var kinds int64
	for _, n := range pr.ByKind {
		kinds += n
	}
	if kinds != pr.Ops || pr.ByKind["user_message"] == 0 || pr.ByKind["operation"] == 0 {
		t.Errorf("by kind %v, ops %d", pr.ByKind, pr.Ops)
	}
	// No event ever arrives from the echo server, so receipts have no
	// target and become operations.
	if pr.ByKind["receipt"] != 0 {
		t.Errorf("receipts without a received message: %v", pr.ByKind)
	}
	if got := total.op.Snapshot(false).Count; got != pr.Ops {
		t.Errorf("total recorder %d, phase %d", got, pr.Ops)
	}
}

// With CountBusy, a 1019 is booked as busy, apart from the decided ops and
// outside the op latency, and a closed-loop worker waits its
// retry_after_ms (30 ms here) before its next op instead of spinning.
func TestCountBusyBooksRefusalsApart(t *testing.T) {
	b := echoBenchWith(t, Mix{UserMessage: 1}, 2, true) // every other op refused
	pr := b.runPhase(context.Background(), Phase{Name: "closed", Duration: 500 * time.Millisecond}, newPhaseRec(), noProgress{})
	if pr.Ops == 0 || pr.Busy == 0 || pr.Refused != 0 || pr.Failed != 0 {
		t.Fatalf("phase %+v errors %v", pr, b.errFirst)
	}
	if pr.Op.Count != pr.Ops {
		t.Errorf("latencies recorded %d, decided ops %d: busy refusals are not decisions", pr.Op.Count, pr.Ops)
	}
	// 4 workers, each refused at most once per 30 ms wait.
	if limit := int64(4 * (500/30 + 2)); pr.Busy > limit {
		t.Errorf("%d busy refusals in 500 ms, more than %d: the loop does not wait retry_after_ms", pr.Busy, limit)
	}
	if want := float64(pr.Busy) / pr.Seconds; pr.BusyPerSec != want || pr.OpsPerSec != float64(pr.Ops)/pr.Seconds {
		t.Errorf("rates %v busy/s, %v ops/s for %+v", pr.BusyPerSec, pr.OpsPerSec, pr)
	}
}

func TestOpenLoopOffersNoMoreThanTheRate(t *testing.T) {
	b := echoBench(t, Mix{UserMessage: 1})
	pr := b.runPhase(context.Background(), Phase{Name: "open", Rate: 100, Duration: time.Second}, newPhaseRec(), noProgress{})
	// 100 ops/s for 1 s: every tick is either an op or a missed tick.
	if issued := pr.Ops + pr.Refused + pr.Failed + pr.Missed; issued > 101 || issued < 50 {
		t.Errorf("issued %d in 1 s at 100/s: %+v", issued, pr)
	}
	if pr.Ops == 0 {
		t.Errorf("nothing answered: %+v %v", pr, b.errFirst)
	}
}

func TestDropClosesAndCountsOnce(t *testing.T) {
	b := echoBench(t, Mix{UserMessage: 1})
	d := b.devs[0]
	lid := d.current().c.LoginID()
	d.drop()
	d.drop()
	if n := b.open.Load(); n != int64(len(b.devs)-1) {
		t.Errorf("open %d after dropping one device twice, want %d", n, len(b.devs)-1)
	}
	if d.current() != nil {
		t.Error("a dropped device still has a connection")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := d.dial(ctx, lid)
	if err != nil || c.c.LoginID() != lid {
		t.Fatalf("reconnect with the login id: %v", err)
	}
	if n := b.open.Load(); n != int64(len(b.devs)) {
		t.Errorf("open %d after the reconnect", n)
	}
}

// The "Past saturation" line of a CountBusy run gives the busy refusals
// apart from the achieved rate.
func TestReportPastSaturationCountsBusy(t *testing.T) {
	r := sampleReport()
	r.Scenario.CountBusy = true
	r.Phases = append(r.Phases, PhaseReport{Name: OverloadPhase, OfferedRate: 400, OpsPerSec: 190, Busy: 2100, BusyPerSec: 210,
		Op: Latency{P99Ms: 240}})
	var md strings.Builder
	if err := r.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	want := "mdsync achieved **190 ops/s = 0.95 of that peak**, op p99 240 ms (decided ops); the excess refused early: 210 ops/s busy (2100,"
	if !strings.Contains(md.String(), want) {
		t.Errorf("markdown lacks %q:\n%s", want, md.String())
	}
}

package nodemetrics

import (
	"context"
	"testing"

	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestCoreAndLag: a node wired with the core metrics counts its appends,
// its decisions by kind and code and the sessions they ended by reason,
// and reports a lag of 0 for every partition once settled.
func TestCoreAndLag(t *testing.T) {
	reg := prometheus.NewRegistry()
	core, err := NewCore(reg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewCore(reg); err == nil {
		t.Error("the metrics registered twice on one registry")
	}
	ctx := context.Background()
	n, err := node.New(ctx, node.Options{
		Dir: t.TempDir(), Partitions: 2,
		OnApplied: func(_ int32, a projections.Applied) { core.Observe(a) },
		WrapLog:   core.TimeAppends,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	reg.MustRegister(NewLag(n))
	login := func(id string) {
		t.Helper()
		d, err := n.Engine.Submit(ctx, &pb.Event{App: "demo", ClientOpId: "op-" + id, Kind: pb.Kind_KIND_LOGIN,
			Actor:   &pb.Actor{User: "alice"},
			Payload: &pb.Event_Login{Login: &pb.Login{LoginId: id, Platform: 1}}})
		if err != nil || d.Code != 0 {
			t.Fatalf("login %s: %v %v", id, d, err)
		}
	}
	for _, id := range []string{"a1", "a2", "a3", "a4", "a5"} { // the fifth evicts a1
		login(id)
	}
	if err := n.Settle(ctx); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(core.applied.WithLabelValues(engine.KindName(pb.Kind_KIND_LOGIN), "0")); got != 5 {
		t.Errorf("logins applied %v, want 5", got)
	}
	if got := testutil.ToFloat64(core.ended.WithLabelValues(pb.Reason_REASON_LOGIN_OTHER_DEVICE.String())); got != 1 {
		t.Errorf("evictions %v, want 1", got)
	}
	if c := testutil.CollectAndCount(reg, "mdsync_log_append_duration_seconds"); c != 1 {
		t.Errorf("append histogram series %d", c)
	}
	if got := testutil.CollectAndCount(reg, "mdsync_projection_lag_events"); got != 2 {
		t.Errorf("lag series %d, want one per partition", got)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "mdsync_log_append_duration_seconds":
			if c := mf.Metric[0].GetHistogram().GetSampleCount(); c < 5 {
				t.Errorf("%d appends timed, want at least 5", c)
			}
		case "mdsync_projection_lag_events":
			for _, m := range mf.Metric {
				if v := m.GetGauge().GetValue(); v != 0 {
					t.Errorf("lag %v after Settle", v)
				}
			}
		}
	}
}

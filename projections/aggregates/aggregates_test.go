package aggregates_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections/aggregates"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestAggregatesHTTPAndMetrics: five logins on one platform evict the
// first; a retried append is counted once; the handler and the collector
// show the same counts; a bad app is refused with 1001.
func TestAggregatesHTTPAndMetrics(t *testing.T) {
	ctx := context.Background()
	clock := time.UnixMilli(1_700_000_000_000)
	n, err := node.New(ctx, node.Options{Dir: t.TempDir(), Partitions: 2, Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	submit := func(ev *pb.Event) {
		t.Helper()
		if d, err := n.Engine.Submit(ctx, ev); err != nil || d.Code != 0 {
			t.Fatalf("submit %v: %v %v", ev.Kind, d, err)
		}
	}
	for i, id := range []string{"d1", "d2", "d3", "d4", "d5"} {
		submit(&pb.Event{App: "demo", ClientOpId: "l" + id, Kind: pb.Kind_KIND_LOGIN,
			Actor:   &pb.Actor{User: "ann", LoginId: id},
			Payload: &pb.Event_Login{Login: &pb.Login{Platform: 1, LoginId: id, DeviceName: "n" + id}}})
		clock = clock.Add(time.Duration(i) * 40 * time.Minute)
	}
	msg := &pb.Event{App: "demo", ClientOpId: "m1", Kind: pb.Kind_KIND_MESSAGE_SEND, Actor: &pb.Actor{User: "ann", LoginId: "d5"},
		Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob", ClientMsgId: "m1", Body: []byte("hi")}}}
	submit(msg)
	// A retried append of the message: the same record again in the log.
	p := engine.PartitionFor([]byte(engine.UserStream("demo", "ann")), n.Log.Partitions())
	end, _ := n.Log.End(ctx, p)
	last, err := n.Log.Read(ctx, p, end-1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Log.Append(ctx, []engine.Record{{Partition: p, Key: last[0].Key, Value: last[0].Value}}); err != nil {
		t.Fatal(err)
	}

	ag, err := aggregates.Open(aggregates.Options{Dir: filepath.Join(t.TempDir(), "agg"), Partitions: n.Log.Partitions()})
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	if err := ag.CatchUp(ctx, n.Log); err != nil {
		t.Fatal(err)
	}
	if cp := ag.Checkpoint(p); cp.Duplicates != 1 {
		t.Fatalf("checkpoint %v: want 1 duplicate", cp)
	}
	srv := httptest.NewServer(ag.Handler())
	defer srv.Close()
	res, err := srv.Client().Get(srv.URL + "/v1/apps/demo/aggregates")
	if err != nil {
		t.Fatal(err)
	}
	var c aggregates.Counts
	json.NewDecoder(res.Body).Decode(&c)
	res.Body.Close()
	if c.Logins != 5 || c.Ended["REASON_LOGIN_OTHER_DEVICE"] != 1 || c.ActiveDevices["1"] != 4 || c.Messages["CHAT_TYPE_USER"] != 1 ||
		len(c.MessagesByHour) != 1 || c.MessagesByHour[0].Count != 1 {
		t.Fatalf("counts %+v", c)
	}
	if res, _ := srv.Client().Get(srv.URL + "/v1/apps/bad%20app/aggregates"); res.StatusCode != 400 {
		t.Fatalf("bad app: status %d", res.StatusCode)
	}
	// Reopened with another partition count: refused.
	ag2dir := filepath.Join(t.TempDir(), "agg2")
	a2, _ := aggregates.Open(aggregates.Options{Dir: ag2dir, Partitions: 2})
	a2.Close()
	if _, err := aggregates.Open(aggregates.Options{Dir: ag2dir, Partitions: 3}); err == nil {
		t.Fatal("opened with another partition count")
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(ag.Collector())
	want := `
# HELP mdsync_aggregate_logins_total Accepted logins in the log, by app.
# TYPE mdsync_aggregate_logins_total counter
mdsync_aggregate_logins_total{app="demo"} 5
# HELP mdsync_aggregate_sessions_ended_total Sessions ended (evictions, kicks, logouts...) in the log, by app and reason.
# TYPE mdsync_aggregate_sessions_ended_total counter
mdsync_aggregate_sessions_ended_total{app="demo",reason="REASON_LOGIN_OTHER_DEVICE"} 1
# HELP mdsync_aggregate_active_devices Logged-in devices as of the projection's position, by app and platform.
# TYPE mdsync_aggregate_active_devices gauge
mdsync_aggregate_active_devices{app="demo",platform="1"} 4
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "mdsync_aggregate_logins_total",
		"mdsync_aggregate_sessions_ended_total", "mdsync_aggregate_active_devices"); err != nil {
		t.Fatal(err)
	}
}

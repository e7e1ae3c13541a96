package node

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdsync/mdsync/adapters/internal/testutil"

	"github.com/mdsync/mdsync/adapters/kafkalog"
	"github.com/mdsync/mdsync/projections"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// The scenario tests of this package run unchanged on either log:
// MDSYNC_NODE_LOG=kafka runs them on Kafka — the brokers in
// MDSYNC_KAFKA_BROKERS, or an in-process kfake cluster —,
// MDSYNC_NODE_LOG=cluster on three nodes of one consumer group on Kafka
// (cluster_test.go), and anything else on the embedded log.
const nodeLogEnv = "MDSYNC_NODE_LOG"

var topicSeq atomic.Int64

func openNode(t *testing.T, parts int32) *Node {
	t.Helper()
	clock := time.UnixMilli(1_700_000_000_000)
	var mu sync.Mutex
	now := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		clock = clock.Add(time.Millisecond)
		return clock
	}
	return openNodeNow(t, parts, now)
}

// openNodeNow opens the node the scenarios run on (see nodeLogEnv), with
// the clock now.
func openNodeNow(t *testing.T, parts int32, now func() time.Time) *Node {
	t.Helper()
	var (
		n     *Node
		check func()
		err   error
	)
	switch os.Getenv(nodeLogEnv) {
	case "kafka":
		n, err = openKafkaNode(t, parts, now)
	case "cluster":
		n, check, err = openClusterNode(t, parts, now)
	default:
		n, err = New(context.Background(), Options{Dir: t.TempDir(), Partitions: parts, Now: now})
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	if check != nil {
		t.Cleanup(check) // before Close
	}
	return n
}

func openKafkaNode(t *testing.T, parts int32, now func() time.Time) (*Node, error) {
	brokers := testutil.Brokers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lg, err := kafkalog.Open(ctx, kafkalog.Options{
		Brokers: brokers, Topic: testutil.Unique("mdsync-node-test"),
		Partitions: parts, CreateTopic: true,
	})
	if err != nil {
		return nil, err
	}
	st, err := projections.Open(projections.Options{Dir: t.TempDir(), Partitions: parts})
	if err != nil {
		lg.Close()
		return nil, err
	}
	return New(context.Background(), Options{Log: lg, Store: st, Now: now})
}

func login(user, op, id string, platform int32, auto bool) *pb.Event {
	return &pb.Event{App: "app", ClientOpId: op, Kind: pb.Kind_KIND_LOGIN, Actor: &pb.Actor{User: user},
		Payload: &pb.Event_Login{Login: &pb.Login{Platform: platform, LoginId: id, DeviceName: "name-" + id, Extension: "ext-" + id, AutoLogin: auto}}}
}

func ends(t *testing.T, n *Node) []int64 {
	out := make([]int64, n.Log.Partitions())
	for p := range out {
		e, err := n.Log.End(context.Background(), int32(p))
		if err != nil {
			t.Fatal(err)
		}
		out[p] = e
	}
	return out
}

// A fifth login evicts the earliest on its platform, through the real
// engine, log and projector; the decision carries the 206 and the new
// device's name and extension.
func TestSubmitEvictionEndToEnd(t *testing.T) {
	n := openNode(t, 4)
	ctx := context.Background()
	for i := 1; i <= 4; i++ {
		d, err := n.Engine.Submit(ctx, login("alice", fmt.Sprint("op", i), fmt.Sprint("d", i), 1, false))
		if err != nil || d.Code != 0 || len(d.Ended) != 0 {
			t.Fatalf("login %d: %v %v", i, d, err)
		}
	}
	if _, err := n.Engine.Submit(ctx, login("alice", "op-other", "p2", 2, false)); err != nil {
		t.Fatal(err)
	}
	d, err := n.Engine.Submit(ctx, login("alice", "op5", "d5", 1, false))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Ended) != 1 || d.Ended[0].Session.LoginId != "d1" || d.Ended[0].Code != 206 ||
		d.Ended[0].ByDeviceName != "name-d5" || d.Ended[0].ByExtension != "ext-d5" {
		t.Fatalf("fifth login: %v", d)
	}
	ids, _ := n.Store.SelfIDs("app", "alice", "d5")
	if fmt.Sprint(ids) != "[d2 d3 d4 p2]" {
		t.Fatalf("self ids %v", ids)
	}
	audit, _ := n.Store.Audit("app", "alice")
	if len(audit) != 1 || audit[0].ByLoginId != "d5" || audit[0].Offset != d.Offset {
		t.Fatalf("audit %v", audit)
	}
}

// A retry with the same client op id appends nothing and returns the first
// decision, even when the state has moved on since; concurrent retries
// collapse to one append.
func TestSubmitRetryReturnsFirstDecision(t *testing.T) {
	n := openNode(t, 2)
	ctx := context.Background()
	first, err := n.Engine.Submit(ctx, login("bob", "same", "b1", 1, false))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Engine.Submit(ctx, &pb.Event{App: "app", ClientOpId: "kick", Kind: pb.Kind_KIND_KICK_ALL_DEVICES, Actor: &pb.Actor{User: "bob"}}); err != nil {
		t.Fatal(err)
	}
	before := ends(t, n)
	again, err := n.Engine.Submit(ctx, login("bob", "same", "b1", 1, false))
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(first, again) || fmt.Sprint(ends(t, n)) != fmt.Sprint(before) {
		t.Fatalf("retry: %v vs %v, log %v → %v", first, again, before, ends(t, n))
	}
	// The same op id for another kind is a conflict, not a retry.
	_, err = n.Engine.Submit(ctx, &pb.Event{App: "app", ClientOpId: "same", Kind: pb.Kind_KIND_KICK_ALL_DEVICES, Actor: &pb.Actor{User: "bob"}})
	if engine.CodeOf(err) != engine.CodeConflict {
		t.Fatalf("reused op id: %v", err)
	}
	var wg sync.WaitGroup
	res := make([]*pb.Decision, 16)
	for i := range res {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i], _ = n.Engine.Submit(ctx, login("carol", "conc", "c1", 1, false))
		}()
	}
	wg.Wait()
	for _, r := range res {
		if r == nil || r.Offset != res[0].Offset {
			t.Fatalf("concurrent retries: %v", res)
		}
	}
	after := ends(t, n)
	total := int64(0)
	for p := range after {
		total += after[p] - before[p]
	}
	if total != 1 {
		t.Fatalf("16 concurrent submissions of one op appended %d records", total)
	}
}

// Bad input is refused with its code, and the log is unchanged.
func TestSubmitBadInputLeavesLogUnchanged(t *testing.T) {
	n := openNode(t, 2)
	ctx := context.Background()
	if _, err := n.Engine.Submit(ctx, login("dave", "ok", "x1", 1, false)); err != nil {
		t.Fatal(err)
	}
	before := ends(t, n)
	bad := []struct {
		ev   *pb.Event
		code engine.Code
	}{
		{login("dave", "b1", "x2", 0, false), engine.CodeInvalidArgument},
		{login("dave", "b2", "x2", 101, false), engine.CodeInvalidArgument},
		{login("dave", "b3", "", 1, false), engine.CodeMissingField},
		{login("dave", "", "x2", 1, false), engine.CodeMissingField},
		{login("da/ve", "b4", "x2", 1, false), engine.CodeInvalidArgument},
		{&pb.Event{App: "app", ClientOpId: "b5", Kind: 777, Actor: &pb.Actor{User: "dave"}}, engine.CodeUnknownKind},
		{nil, engine.CodeMissingField},
	}
	long := login("dave", "b6", "x2", 1, false)
	long.GetLogin().Extension = string(make([]byte, engine.MaxExtensionBytes+1))
	bad = append(bad, struct {
		ev   *pb.Event
		code engine.Code
	}{long, engine.CodeTooLarge})
	for i, b := range bad {
		_, err := n.Engine.Submit(ctx, b.ev)
		if engine.CodeOf(err) != b.code {
			t.Fatalf("case %d: %v, want code %d", i, err, b.code)
		}
	}
	if fmt.Sprint(ends(t, n)) != fmt.Sprint(before) {
		t.Fatalf("log changed by refused input: %v → %v", before, ends(t, n))
	}
	devs, _ := n.Store.Devices("app", "dave")
	if len(devs) != 1 || devs[0].LoginId != "x1" {
		t.Fatalf("accepted state changed: %v", devs)
	}
}

// A policy change reaches every partition; lowering a limit ends the
// earliest devices above it, and auto-login under keep-current gets 214.
func TestSubmitPolicyChange(t *testing.T) {
	n := openNode(t, 4)
	ctx := context.Background()
	users := []string{"u1", "u2", "u3", "u4", "u5", "u6"}
	for _, u := range users {
		for i := 1; i <= 3; i++ {
			if _, err := n.Engine.Submit(ctx, login(u, fmt.Sprint("l", i), fmt.Sprintf("%s-d%d", u, i), 1, false)); err != nil {
				t.Fatal(err)
			}
		}
	}
	set := &pb.Event{App: "app", ClientOpId: "pol1", Kind: pb.Kind_KIND_POLICY_SET, Actor: &pb.Actor{User: "admin", Admin: true},
		Payload: &pb.Event_PolicySet{PolicySet: &pb.PolicySet{Mode: pb.PlatformMode_PLATFORM_MODE_MULTI, DefaultLimit: 2,
			AutoLogin: pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KEEP_CURRENT}}}
	d, err := n.Engine.Submit(ctx, set)
	if err != nil || d.Code != 0 || d.PolicyVersion != 1 {
		t.Fatalf("policy: %v %v", d, err)
	}
	if len(d.Ended) != len(users) {
		t.Fatalf("lowering 3→2 should end one device per user, ended %d", len(d.Ended))
	}
	for _, e := range d.Ended {
		if e.Session.LoginId != e.User+"-d1" || e.Reason != pb.Reason_REASON_POLICY_LIMIT || e.Code != 217 {
			t.Fatalf("policy ended %v", e)
		}
	}
	for p := int32(0); p < 4; p++ {
		if _, ok, _ := n.Store.Decision("app", engine.PolicyStream("app", p), "admin", "pol1"); !ok {
			t.Fatalf("partition %d has no copy of the policy", p)
		}
	}
	again, err := n.Engine.Submit(ctx, set)
	if err != nil || again.PolicyVersion != 1 || len(again.Ended) != len(d.Ended) {
		t.Fatalf("policy retry: %v %v", again, err)
	}
	r, err := n.Engine.Submit(ctx, login("u1", "auto", "u1-d9", 1, true))
	if err != nil || r.Code != 214 || len(r.Ended) != 0 {
		t.Fatalf("auto-login under keep-current: %v %v", r, err)
	}
}

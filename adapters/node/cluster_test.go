package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/mdsync/mdsync/adapters/kafkagroup"
	"github.com/mdsync/mdsync/adapters/kafkalog"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// MDSYNC_NODE_LOG=cluster runs the scenario suite unchanged on a cluster:
// three nodes in one Kafka consumer group (the brokers in
// MDSYNC_KAFKA_BROKERS, or kfake), each restoring, deciding and relaying
// only the partitions the group gives it, as three `mdsync serve`
// processes do. The *Node the scenarios get is a front over them:
//
//   - Engine is an engine whose every read is the owner's: the dedup
//     lookup and the decision (the owner's store, once the owner's group
//     says the event is applied there — a wait that ends if the partition
//     moves), the actor check (the owner of the actor's partition), policy
//     versions (partition 0's owner). Its appends go round robin through
//     the three nodes' own Kafka producers. What it adds to the log is what
//     forwarding each op to its owner adds; the HTTP hop itself is the e2e
//     cluster test's (cmd/mdsync).
//   - Store is a replica: a fourth projection of every partition that
//     relays nothing, whose relay positions follow the owners' (so Settle
//     waits for the owners' relays). At the end of each test, every
//     partition's checkpoint and device table on its owner must equal the
//     replica's: what the scenarios read is what the owners serve.
const clusterMembers = 3

func openClusterNode(t *testing.T, parts int32, now func() time.Time) (*Node, func(), error) {
	t.Helper()
	brokers, topic, group := ownedCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	gens := make([]*atomic.Int64, clusterMembers)
	members := make([]*Node, clusterMembers)
	for i := range members {
		gens[i] = &atomic.Int64{}
		n, err := New(ctx, Options{
			Dir: t.TempDir(), Now: now,
			Kafka: &kafkalog.Options{Brokers: brokers, Topic: topic, Partitions: parts, CreateTopic: true},
			Group: &kafkagroup.Options{
				GroupID: group, Addr: fmt.Sprintf("member-%d:1", i),
				CommitInterval: 200 * time.Millisecond, HeartbeatInterval: 300 * time.Millisecond,
				Logger: slog.New(genHandler{gens[i]}),
			},
		})
		if err != nil {
			return nil, nil, err
		}
		members[i] = n
		t.Cleanup(func() { n.Close() })
	}
	if err := waitClusterStable(ctx, parts, members, gens); err != nil {
		return nil, nil, err
	}

	lg, err := kafkalog.Open(ctx, kafkalog.Options{Brokers: brokers, Topic: topic, Partitions: parts})
	if err != nil {
		return nil, nil, err
	}
	replica, err := projections.Open(projections.Options{Dir: t.TempDir(), Partitions: parts})
	if err != nil {
		lg.Close()
		return nil, nil, err
	}
	c := &clusterRoute{members: members, replica: replica}
	front := &Node{Log: &spreadLog{Log: lg, members: members}, Store: replica, done: make(chan struct{})}
	front.Engine = engine.New(front.Log, c, engine.Options{Now: now, Membership: c})
	runCtx, stop := context.WithCancel(context.Background())
	front.cancel = stop
	go func() {
		defer close(front.done)
		var wg sync.WaitGroup
		for p := int32(0); p < parts; p++ {
			wg.Add(1)
			go func() { defer wg.Done(); c.mirrorRelay(runCtx, replica, p) }()
		}
		front.runErr = replica.Run(runCtx, lg)
		stop()
		wg.Wait()
	}()
	check := func() {
		if !t.Failed() {
			checkOwnersMatchReplica(t, front, members)
		}
	}
	return front, check, nil
}

// genHandler records the generation of the group's last assignment.
type genHandler struct{ gen *atomic.Int64 }

func (h genHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h genHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h genHandler) WithGroup(string) slog.Handler            { return h }
func (h genHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "partitions assigned" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "generation" {
				h.gen.Store(a.Value.Int64())
			}
			return true
		})
	}
	return nil
}

// waitClusterStable waits until every member was assigned partitions in
// the same generation (all three joined: no rebalance pending), every
// partition is served by exactly one member, and every member is Ready.
func waitClusterStable(ctx context.Context, parts int32, members []*Node, gens []*atomic.Int64) error {
	for {
		var all []int32
		same := true
		for i, n := range members {
			all = append(all, n.Owned()...)
			same = same && gens[i].Load() != 0 && gens[i].Load() == gens[0].Load() && n.Ready() == nil
		}
		slices.Sort(all)
		if same && len(all) == int(parts) && slices.Equal(all, seq(parts)) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not stable: owned %v: %w", all, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func seq(n int32) []int32 {
	out := make([]int32, n)
	for i := range out {
		out[i] = int32(i)
	}
	return out
}

// clusterRoute is the front engine's Projector and Membership: each
// partition's reads and waits go to the member that serves it.
// WaitApplied also waits for the replica, so that the scenarios' reads
// right after a Submit see what the owner decided.
type clusterRoute struct {
	members []*Node
	replica *projections.Store
}

func (c *clusterRoute) owner(p int32) (*Node, error) {
	for _, n := range c.members {
		if n.group.Serving(p) {
			return n, nil
		}
	}
	if err := c.members[0].group.Owns(p); err != nil {
		return nil, err
	}
	return nil, engine.Errorf(engine.CodeNotOwner, "partition %d has no owner", p)
}

func (c *clusterRoute) partitionOf(stream string) int32 {
	return engine.PartitionFor([]byte(stream), c.members[0].Log.Partitions())
}

// Owns is engine.Membership: some member serves p.
func (c *clusterRoute) Owns(p int32) error {
	_, err := c.owner(p)
	return err
}

func (c *clusterRoute) WaitApplied(ctx context.Context, pos engine.Position) error {
	n, err := c.owner(pos.Partition)
	if err != nil {
		return err
	}
	if err := n.group.WaitApplied(ctx, pos); err != nil {
		return err
	}
	return c.replica.WaitApplied(ctx, pos)
}

func (c *clusterRoute) Decision(app, stream, user, op string) (*pb.Decision, bool, error) {
	p := c.partitionOf(stream)
	for q := int32(0); q < c.members[0].Log.Partitions(); q++ {
		if stream == engine.PolicyStream(app, q) {
			p = q // a policy copy is pinned to its partition, not hashed
		}
	}
	n, err := c.owner(p)
	if err != nil {
		return nil, false, err
	}
	return n.Store.Decision(app, stream, user, op)
}

func (c *clusterRoute) AwaitDecision(pos engine.Position, app, stream, user, op string, done func(*pb.Decision, bool, error)) {
	engine.AwaitByWaiting(c, pos, app, stream, user, op, done)
}

func (c *clusterRoute) Policy(app string) (*pb.Policy, error) {
	n, err := c.owner(0) // partition 0's owner decides versions
	if err != nil {
		return nil, err
	}
	return n.Store.Policy(app)
}

func (c *clusterRoute) ActorSession(app, user, loginID string) error {
	n, err := c.owner(c.partitionOf(engine.UserStream(app, user)))
	if err != nil {
		return err
	}
	return n.Store.ActorSession(app, user, loginID)
}

// mirrorRelay keeps the replica's relay position of p at its owner's, so
// that WaitRelayed on the replica (what Settle waits for) means the
// owner's relay appended the copies.
func (c *clusterRoute) mirrorRelay(ctx context.Context, replica *projections.Store, p int32) {
	for ctx.Err() == nil {
		n, err := c.owner(p)
		if err != nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		pos := n.Store.RelayPosition(p)
		if err := replica.AdvanceRelay(p, pos); err != nil {
			return // closed
		}
		wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		n.group.WaitRelayed(wctx, p, pos)
		cancel()
	}
}

// spreadLog appends through the members' producers in turn; reads and
// ends are the front's own client's.
type spreadLog struct {
	engine.Log
	members []*Node
	next    atomic.Int64
}

func (l *spreadLog) Append(ctx context.Context, recs []engine.Record) ([]engine.Position, error) {
	return l.members[int(l.next.Add(1))%len(l.members)].Log.Append(ctx, recs)
}

// checkOwnersMatchReplica settles the cluster and checks that every
// partition's owner holds the replica's state for it: the same checkpoint
// (offsets applied, duplicates, skipped) and the same devices for every
// user of the partition.
func checkOwnersMatchReplica(t *testing.T, front *Node, members []*Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := front.Store.Digest(); errors.Is(err, projections.ErrClosed) {
		return // the test closed the node itself (TestSettleAfterClose)
	}
	if err := front.Settle(ctx); err != nil {
		t.Fatalf("cluster: settle: %v", err)
	}
	parts := front.Log.Partitions()
	c := &clusterRoute{members: members}
	rt, err := front.Store.DeviceTable()
	if err != nil {
		t.Fatal(err)
	}
	byPart := func(tab []projections.UserDevices, p int32) []projections.UserDevices {
		var out []projections.UserDevices
		for _, u := range tab {
			if c.partitionOf(engine.UserStream(u.App, u.User)) == p {
				out = append(out, u)
			}
		}
		return out
	}
	checked := 0
	for p := int32(0); p < parts; p++ {
		n, err := c.owner(p)
		if err != nil {
			t.Fatalf("cluster: partition %d: %v", p, err)
		}
		if err := n.group.WaitApplied(ctx, engine.Position{Partition: p, Offset: front.Store.Checkpoint(p).NextOffset - 1}); err != nil && front.Store.Checkpoint(p).NextOffset > 0 {
			t.Fatal(err)
		}
		if got, want := n.Store.Checkpoint(p), front.Store.Checkpoint(p); !proto.Equal(got, want) {
			t.Fatalf("cluster: partition %d: owner's checkpoint %v, replica's %v", p, got, want)
		}
		ot, err := n.Store.DeviceTable()
		if err != nil {
			t.Fatal(err)
		}
		got, want := byPart(ot, p), byPart(rt, p)
		if len(got) != len(want) {
			t.Fatalf("cluster: partition %d: owner has %d users with devices, replica %d", p, len(got), len(want))
		}
		for i := range got {
			if got[i].App != want[i].App || got[i].User != want[i].User || len(got[i].Sessions) != len(want[i].Sessions) {
				t.Fatalf("cluster: partition %d: owner %v, replica %v", p, got[i], want[i])
			}
			for j := range got[i].Sessions {
				if !proto.Equal(got[i].Sessions[j], want[i].Sessions[j]) {
					t.Fatalf("cluster: %s/%s: owner's session %v, replica's %v", got[i].App, got[i].User, got[i].Sessions[j], want[i].Sessions[j])
				}
			}
			checked++
		}
	}
	t.Logf("cluster: %d partitions over %d members; owners' checkpoints and %d users' devices equal the replica's", parts, len(members), checked)
}

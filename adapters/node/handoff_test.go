package node

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// handoffOps is a mix of concurrent operations whose decisions carry what
// the decision table stores compacted or not at all: logins past the
// platform limit (ended sessions, stored as audit rows), messages to users
// on other partitions (fan-out), and retries of one op id from several
// goroutines (one append, the decision shared).
func handoffOps(users int) [][]*pb.Event {
	var workers [][]*pb.Event
	for w := range users {
		user := fmt.Sprintf("hu%d", w)
		var ops []*pb.Event
		for i := range 8 {
			ops = append(ops, login(user, fmt.Sprintf("%s-login-%d", user, i), fmt.Sprintf("%s-d%d", user, i), 1, false))
		}
		for i := range 6 {
			m := msg(user, "", pb.ChatType_CHAT_TYPE_USER, fmt.Sprintf("hu%d", (w+1+i)%users), "hi")
			m.ClientOpId = fmt.Sprintf("%s-msg-%d", user, i)
			m.GetMessage().ClientMsgId = m.ClientOpId
			ops = append(ops, m)
		}
		// Two workers submit the same ops: in flight together, or a retry.
		workers = append(workers, ops, ops)
	}
	return workers
}

// The decision the projector hands an operation (engine.Projector's
// AwaitDecision) is exactly the one the store holds for it (Store.Decision),
// for many concurrent operations on every partition; and after a restart,
// when nothing is in hand any more, a retry of each appends nothing and is
// answered from the store with the same decision.
func TestHandedDecisionIsTheStored(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	n, err := New(ctx, Options{Dir: dir, Partitions: 4})
	if err != nil {
		t.Fatal(err)
	}
	workers := handoffOps(12)
	got := make([][]*pb.Decision, len(workers))
	var wg sync.WaitGroup
	for w, ops := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, op := range ops {
				d, err := n.Engine.Submit(ctx, op)
				if err != nil {
					t.Errorf("%s: %v", op.ClientOpId, err)
					return
				}
				got[w] = append(got[w], d)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		n.Close()
		return
	}
	var ended, fanout int
	for w, ops := range workers {
		for i, op := range ops {
			want, ok, err := n.Store.Decision(op.App, engine.StreamKeyFor(op), op.Actor.User, op.ClientOpId)
			if err != nil || !ok {
				t.Fatalf("%s: stored decision %v, %v", op.ClientOpId, ok, err)
			}
			if !proto.Equal(got[w][i], want) {
				t.Fatalf("%s: handed %v\nstored %v", op.ClientOpId, got[w][i], want)
			}
			ended += len(want.Ended)
			fanout += len(want.Fanout)
		}
	}
	if ended == 0 || fanout == 0 {
		t.Fatalf("ended %d, fan-out %d: the mix does not exercise what the decision table compacts", ended, fanout)
	}
	// Relayed before the restart: a relay behind would append its copies
	// after it, which the log ends below must not count as retries.
	if err := n.Settle(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	// After a restart: the same answers, from the store, and nothing appended.
	n, err = New(ctx, Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	before := ends(t, n)
	for w, ops := range workers {
		for i, op := range ops {
			d, err := n.Engine.Submit(ctx, op)
			if err != nil {
				t.Fatalf("retry of %s after a restart: %v", op.ClientOpId, err)
			}
			if !proto.Equal(d, got[w][i]) {
				t.Fatalf("retry of %s after a restart: %v, first %v", op.ClientOpId, d, got[w][i])
			}
		}
	}
	if after := ends(t, n); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("retries after a restart appended: log %v -> %v", before, after)
	}
}

package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// testProjector checks what the engine reads of a store that is also its
// engine.Projector, against the history applied: every operation has its
// decision, keyed by stream, acting user and client op id, recorded at its
// first append (a retried append does not move it); Policy is the newest
// version applied; an actor that never logged in may not act (1005).
func testProjector(t *testing.T, h Harness, log [][]engine.Entry) {
	s := open(t, h)
	pr, ok := s.(engine.Projector)
	if !ok {
		t.Skip("the store is not an engine.Projector")
	}
	applyAll(t, s, log, []int{1, 7, 64}, zeros(len(log)), ends(log))
	type key struct{ app, stream, user, op string }
	first := map[key]engine.Position{}
	var policy uint64
	for p := range log {
		for _, e := range log[p] {
			ev, err := engine.Decode(e.Value)
			if err != nil {
				continue // garbage
			}
			k := key{ev.App, ev.StreamKey, ev.GetActor().GetUser(), ev.ClientOpId}
			if _, seen := first[k]; !seen {
				first[k] = engine.Position{Partition: e.Partition, Offset: e.Offset}
			}
			if ps := ev.GetPolicySet(); ps != nil {
				policy = max(policy, ps.Version)
			}
		}
	}
	ctx := context.Background()
	for k, at := range first {
		if err := pr.WaitApplied(ctx, at); err != nil {
			t.Fatalf("WaitApplied(%v) of an applied entry: %v", at, err)
		}
		d, ok, err := pr.Decision(k.app, k.stream, k.user, k.op)
		if err != nil || !ok {
			t.Fatalf("Decision%v: ok %v, %v", k, ok, err)
		}
		if d.Partition != at.Partition || d.Offset != at.Offset {
			t.Fatalf("Decision%v at %d/%d, the op was first appended at %v", k, d.Partition, d.Offset, at)
		}
		// AwaitDecision answers once, with what Decision returns.
		type answer struct {
			d   *pb.Decision
			ok  bool
			err error
		}
		got := make(chan answer, 2)
		pr.AwaitDecision(at, k.app, k.stream, k.user, k.op, func(d *pb.Decision, ok bool, err error) { got <- answer{d, ok, err} })
		select {
		case a := <-got:
			if a.err != nil || !a.ok || !proto.Equal(a.d, d) {
				t.Fatalf("AwaitDecision%v: %v %v %v, Decision %v", k, a.d, a.ok, a.err, d)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("AwaitDecision%v of an applied entry did not answer", k)
		}
		select {
		case <-got:
			t.Fatalf("AwaitDecision%v answered twice", k)
		default:
		}
	}
	if len(first) < 100 {
		t.Fatalf("the history has %d operations: too few to check", len(first))
	}
	if _, ok, err := pr.Decision("app", "user/app/u0", "u0", "never-submitted"); ok || err != nil {
		t.Errorf("Decision of an op never submitted: ok %v, %v", ok, err)
	}
	if p, err := pr.Policy("app"); err != nil || p.GetVersion() != policy {
		t.Errorf("Policy: version %d (%v), want the newest applied, %d", p.GetVersion(), err, policy)
	}
	if err := pr.ActorSession("app", "u0", "never-logged-in"); engine.CodeOf(err) != engine.CodeNotFound {
		t.Errorf("ActorSession of a device that never logged in: %v, want code %d", err, engine.CodeNotFound)
	}
}

// sessionReader is the read port of the device and audit tables
// (gateway.SessionReader and restapi.DeviceReader/AuditReader spell it
// too).
type sessionReader interface {
	Devices(app, user string) ([]*pb.Session, error)
	Audit(app, user string) ([]*pb.Ended, error)
}

// testReadsAgree checks that a store's session reads and the engine's
// actor check tell one story: every device Devices lists may act, in login
// order; every session Audit lists as ended may not, with the code that
// ended it (or the one of a later end of the same login ID).
func testReadsAgree(t *testing.T, h Harness, log [][]engine.Entry) {
	s := open(t, h)
	pr, ok1 := s.(engine.Projector)
	rd, ok2 := s.(sessionReader)
	if !ok1 || !ok2 {
		t.Skip("the store does not serve both the engine's reads and the session reads")
	}
	applyAll(t, s, log, []int{5, 50}, zeros(len(log)), ends(log))
	active, ended := 0, 0
	for u := range 8 {
		user := fmt.Sprint("u", u)
		devs, err := rd.Devices("app", user)
		if err != nil {
			t.Fatalf("Devices(%s): %v", user, err)
		}
		live := map[string]bool{}
		for i, d := range devs {
			live[d.LoginId] = true
			if err := pr.ActorSession("app", user, d.LoginId); err != nil {
				t.Errorf("%s/%s is listed as logged in but may not act: %v", user, d.LoginId, err)
			}
			if i > 0 && d.LoginOffset < devs[i-1].LoginOffset && d.LoginPartition == devs[i-1].LoginPartition {
				t.Errorf("Devices(%s) not in login order at %d", user, i)
			}
			active++
		}
		audit, err := rd.Audit("app", user)
		if err != nil {
			t.Fatalf("Audit(%s): %v", user, err)
		}
		for _, e := range audit {
			id := e.GetSession().GetLoginId()
			if live[id] {
				continue // ended, then logged in again with the same login ID
			}
			if err := pr.ActorSession("app", user, id); err == nil {
				t.Errorf("%s/%s is in the audit as ended (%d) but may act", user, id, e.Code)
			}
			ended++
		}
	}
	if active == 0 || ended == 0 {
		t.Fatalf("the history left %d active and %d ended sessions: nothing to compare", active, ended)
	}
}

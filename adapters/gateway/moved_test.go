package gateway_test

import (
	"sync/atomic"
	"testing"

	"github.com/mdsync/mdsync/adapters/gateway"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// movingOwner serves every user here until moved holds another process's
// address.
type movingOwner struct{ moved *atomic.Value }

func (o movingOwner) Owner(app, user string) (string, bool) {
	if a := o.moved.Load().(string); a != "" {
		return a, false
	}
	return "", true
}

// A device attached while its user's partition was served here is sent to
// the new owner (1018 with its address, then the close) when the partition
// has moved away by its next timeline read, instead of reading a store that
// no longer follows the partition: a stale position there made the device
// resync and get entries again (found by cmd/mdsync TestNemesis).
func TestPartitionMovedAwayRedirectsAttachedDevice(t *testing.T) {
	moved := &atomic.Value{}
	moved.Store("")
	e := newEnv(t, func(o *gateway.Options) { o.Owner = movingOwner{moved} })
	a, _ := login(t, e, "alice", "A1", 1)
	a.expect("snapshot")
	moved.Store("10.0.0.3:7000")
	// A delivery past a gap makes the connection read its timeline.
	e.g.Deliver("app", "alice", &pb.TimelineEntry{Seq: 99})
	f := a.expect("error")
	if f.Code != 1018 || f.Addr != "10.0.0.3:7000" {
		t.Fatalf("after the partition moved: %+v, want 1018 naming the owner", f)
	}
	if st := a.closed(); st != 4000 {
		t.Fatalf("closed with %d", st)
	}
	eventually(t, "disconnects{1018}", func() bool { return metric(t, e, "mdsync_gateway_disconnects_total", "code", "1018") == 1 })
}

package gateway_test

import (
	"fmt"
	"testing"

	"github.com/coder/websocket"
)

// The first device of a new user: its first snapshot is a real position
// (the timeline's epoch is born with the first login, engine.OpenTimeline),
// so it can acknowledge it, go offline, and get what it missed as events
// when it logs back in with the same login ID, not a second snapshot.
func TestFirstDeviceCatchesUpAsEvents(t *testing.T) {
	e := newEnv(t, nil)
	a, _ := login(t, e, "newbie", "N1", 1)
	snap := a.expect("snapshot")
	if snap.Epoch == "" || snap.Seq != 0 || snap.Resync {
		t.Fatalf("first snapshot of a new user: epoch %q seq %d resync %v; want a real epoch at seq 0", snap.Epoch, snap.Seq, snap.Resync)
	}
	a.send(map[string]any{"type": "ack", "epoch": snap.Epoch, "seq": 0})
	eventually(t, "the snapshot position acknowledged", func() bool {
		epoch, seq, ok, _ := e.n.Store.Cursor("app", "newbie", "N1")
		return ok && epoch == snap.Epoch && seq == 0
	})
	a.ws.Close(websocket.StatusNormalClosure, "")
	<-a.done

	b, _ := login(t, e, "sender", "S1", 1)
	b.expect("snapshot")
	for i := 0; i < 3; i++ {
		if r := b.op(fmt.Sprint("op", i), msgJSON("newbie", fmt.Sprint("first-", i), fmt.Sprint("missed ", i))); r.Code != 0 {
			t.Fatalf("send %d: %+v", i, r)
		}
	}

	a, _ = login(t, e, "newbie", "N1", 1)
	var bodies []string
	var last uint64
	for len(bodies) < 3 {
		f := a.next()
		switch f.Type {
		case "snapshot":
			t.Fatalf("a device that acknowledged its first snapshot got another (resync %v) instead of the missed events", f.Resync)
		case "event":
			if f.Epoch != snap.Epoch || f.Seq <= last {
				t.Fatalf("event at %s/%d after %d: want epoch %s, increasing seq", f.Epoch, f.Seq, last, snap.Epoch)
			}
			last = f.Seq
			bodies = append(bodies, string(f.entry(t).GetSource().GetMessage().GetBody()))
		}
	}
	for i, b := range bodies {
		if want := fmt.Sprint("missed ", i); b != want {
			t.Fatalf("event %d is %q, want %q (all: %q)", i, b, want, bodies)
		}
	}
}

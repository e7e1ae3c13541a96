package gateway_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// Two devices of one user miss the same 300 messages (one of them larger
// than a batch) and resume: the one that did not ask for batches gets one
// event frame per entry; the one that did gets events frames, with the
// large entry alone as an event frame. Both get every entry once, in
// order; an ack of an entry inside a batch is accepted; a live message
// after the catch-up is an event frame for both.
func TestCatchUpBatchesOnlyWhenAsked(t *testing.T) {
	const missed, large = 300, 150
	e := newEnv(t, nil)
	old, _ := login(t, e, "alice", "A1", 1)
	neu, _ := login(t, e, "alice", "A2", 2)
	pos := map[string]sframe{"A1": old.expect("snapshot"), "A2": neu.expect("snapshot")}
	old.ws.CloseNow()
	neu.ws.CloseNow()

	var ops []*pb.Event
	var want []string
	for i := range missed {
		ev := userMsg("bob", "alice", fmt.Sprintf("m%03d", i))
		if i == large {
			ev.GetMessage().Body = bytes.Repeat([]byte("L"), 50<<10) // 67 KiB in base64
		}
		ops = append(ops, ev)
		want = append(want, string(ev.GetMessage().Body))
	}
	submitAll(t, e, ops)
	eventually(t, "alice's timeline", func() bool {
		_, next, _, err := e.n.Store.TimelineJSON("app", "alice", "A1", pos["A1"].Epoch, missed-1, 1)
		return err == nil && next == missed
	})

	for _, dev := range []struct {
		login string
		batch bool
	}{{"A1", false}, {"A2", true}} {
		t.Run(fmt.Sprint(dev.login, "/batch=", dev.batch), func(t *testing.T) {
			c := dial(t, e)
			p := pos[dev.login]
			c.send(loginFrame{Type: "resume", ID: "r", App: "app", User: "alice", Password: "pw", LoginID: dev.login,
				Epoch: p.Epoch, Seq: p.Seq, Batch: dev.batch})
			if r := c.expect("login_result"); r.Code != 0 || !r.Resumed {
				t.Fatalf("resume: %+v", r)
			}
			f := &follower{t: t, c: c, epoch: p.Epoch, seq: p.Seq}
			frames := map[int]bool{} // the events frames seen; 0: event frames
			var acked bool
			for len(f.bodies) < len(want) {
				ev := c.expect("event")
				f.take(ev)
				frames[ev.batch] = true
				if i := len(f.bodies) - 1; i == large && ev.batch != 0 {
					t.Fatalf("the large entry came in events frame %d", ev.batch)
				}
				if ev.batch != 0 && !acked {
					// An ack of an event inside a batch: sent, so accepted.
					c.send(map[string]any{"type": "ack", "epoch": ev.Epoch, "seq": ev.Seq})
					acked = true
				}
			}
			if fmt.Sprint(f.bodies) != fmt.Sprint(want) {
				t.Fatal("bodies differ from what was sent, or are out of order")
			}
			batches := int(c.batches.Load())
			if !dev.batch && batches != 0 {
				t.Fatalf("%d events frames to a device that did not ask for them", batches)
			}
			// 300 entries: at least one batch per page of the store read.
			if dev.batch && (batches < 3 || batches > missed/20) {
				t.Fatalf("%d events frames for %d entries", batches, missed)
			}
			if dev.batch != acked {
				t.Fatalf("acked inside a batch: %v", acked)
			}
			c.send(map[string]string{"type": "ping", "id": "p"})
			if r := c.expect("pong"); r.ID != "p" {
				t.Fatalf("after the catch-up: %+v (an error for the ack?)", r)
			}
			submitAll(t, e, []*pb.Event{userMsg("bob", "alice", "live-"+dev.login)})
			want = append(want, "live-"+dev.login) // the next device catches up on it too
			ev := c.expect("event")
			f.take(ev)
			if ev.batch != 0 || f.bodies[len(f.bodies)-1] != "live-"+dev.login {
				t.Fatalf("live event: %+v", ev)
			}
			c.send(map[string]any{"type": "ack", "epoch": f.epoch, "seq": f.seq})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for {
				_, seq, ok, err := e.n.Store.Cursor("app", "alice", dev.login)
				if err == nil && ok && seq == f.seq {
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("cursor %d, want %d", seq, f.seq)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

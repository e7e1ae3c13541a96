package gateway_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/mdsync/mdsync/adapters/gateway"
)

// No effect the devices depend on is dropped silently: with every deliver
// hint lost on its way to the gateway, a connected device still receives
// each message, once and in order, within the session check's interval.
func TestLostDeliverHintsStillDeliver(t *testing.T) {
	e := newEnvHooks(t, func(o *gateway.Options) { o.SessionCheckInterval = 100 * time.Millisecond }, envHooks{dropDeliver: true})
	a, _ := login(t, e, "alice", "A1", 1)
	a.expect("snapshot")
	b, _ := login(t, e, "bob", "B1", 1)
	b.expect("snapshot")
	for i := 0; i < 5; i++ {
		if r := b.op(fmt.Sprint("op", i), msgJSON("alice", fmt.Sprint("h-", i), fmt.Sprint("hint ", i))); r.Code != 0 {
			t.Fatalf("send %d: %+v", i, r)
		}
	}
	deadline := time.After(3 * time.Second)
	var last uint64
	for i := 0; i < 5; i++ {
		select {
		case f := <-a.frames:
			if f.Type != "event" {
				t.Fatalf("got %+v, want event %d", f, i)
			}
			if got, want := string(f.entry(t).GetSource().GetMessage().GetBody()), fmt.Sprint("hint ", i); got != want || f.Seq <= last {
				t.Fatalf("event %q at seq %d after %d, want %q in order", got, f.Seq, last, want)
			}
			last = f.Seq
		case <-deadline:
			t.Fatalf("%d of 5 messages arrived with every deliver hint lost", i)
		}
	}
}

package node

import (
	"context"
	"testing"
	"time"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// Records appended behind the engine's back (as another process, or a
// replay, appends them) are applied when Settle returns.
func TestSettleAppliesEverythingAppended(t *testing.T) {
	n := openNode(t, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Settle(ctx); err != nil {
		t.Fatalf("Settle on an empty log: %v", err)
	}
	var recs []engine.Record
	for i := range 200 {
		ev := op("u"+string(rune('a'+i%20)), "", pb.Kind_KIND_LOGIN)
		ev.Payload = &pb.Event_Login{Login: &pb.Login{Platform: 1, LoginId: ev.ClientOpId}}
		ev.SchemaVersion, ev.StreamKey = engine.SchemaVersion, engine.StreamKeyFor(ev)
		ev.EventId = engine.EventID(ev.StreamKey, ev.Actor.User, ev.ClientOpId)
		b, err := engine.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, engine.Record{Partition: engine.PartitionFor([]byte(ev.StreamKey), 4), Key: []byte(ev.StreamKey), Value: b})
	}
	if _, err := n.Log.Append(ctx, recs); err != nil {
		t.Fatal(err)
	}
	if err := n.Settle(ctx); err != nil {
		t.Fatal(err)
	}
	for p := int32(0); p < 4; p++ {
		end, err := n.Log.End(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if got := n.Store.Checkpoint(p).NextOffset; got < end {
			t.Fatalf("partition %d: checkpoint %d after Settle, log end %d", p, got, end)
		}
	}
	devices := 0
	for i := range 20 {
		ds, err := n.Store.Devices("app", "u"+string(rune('a'+i)))
		if err != nil {
			t.Fatal(err)
		}
		devices += len(ds)
	}
	if devices == 0 {
		t.Fatal("no device visible after Settle")
	}
}

// Settle on a closed node is an error, never a silent nil.
func TestSettleAfterClose(t *testing.T) {
	n := openNode(t, 2)
	ev := op("u", "", pb.Kind_KIND_LOGIN)
	ev.Payload = &pb.Event_Login{Login: &pb.Login{Platform: 1, LoginId: "d"}}
	submit(t, n, ev)
	n.Close()
	if err := n.Settle(context.Background()); err == nil {
		t.Fatal("Settle on a closed node returned nil")
	}
}

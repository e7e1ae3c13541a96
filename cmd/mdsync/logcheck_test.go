package main

import (
	"context"
	"fmt"
	"testing"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// readPartition reads partition p of lg from offset 0 to its end and
// returns the end and every record, decoded.
func readPartition(ctx context.Context, t *testing.T, lg engine.Log, p int32) (int64, []*pb.Event) {
	t.Helper()
	end, err := lg.End(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	return end, readPartitionTo(ctx, t, lg, p, end)
}

// readPartitionTo decodes partition p's records below end: for a log that
// live processes may still append to, the caller fixes the end once and
// compares everything against that prefix.
func readPartitionTo(ctx context.Context, t *testing.T, lg engine.Log, p int32, end int64) []*pb.Event {
	t.Helper()
	var evs []*pb.Event
	for off := int64(0); off < end; {
		ents, err := lg.Read(ctx, p, off, 1024)
		if err != nil {
			t.Fatal(err)
		}
		if n := end - off; int64(len(ents)) > n {
			ents = ents[:n]
		}
		for _, en := range ents {
			ev, err := engine.Decode(en.Value)
			if err != nil {
				t.Fatal(err)
			}
			evs = append(evs, ev)
		}
		off += int64(len(ents))
	}
	return evs
}

// appliedOnce tells why checkpoint cp of a partition ending at end does not
// show each distinct operation of evs (a retried append repeats one)
// applied exactly once and nothing left unapplied; "" when it does.
func appliedOnce(cp *pb.Checkpoint, end int64, evs []*pb.Event) string {
	ops := map[string]bool{}
	for _, ev := range evs {
		ops[ev.StreamKey+"\x00"+ev.GetActor().GetUser()+"\x00"+ev.ClientOpId] = true
	}
	if cp.NextOffset != end || cp.Applied != uint64(len(ops)) || cp.Applied+cp.Duplicates+cp.Skipped != uint64(end) {
		return fmt.Sprintf("end %d, %d distinct operations, checkpoint %v", end, len(ops), cp)
	}
	return ""
}

package feed

import (
	"encoding/json"
	"testing"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

func TestItemsAndFanOut(t *testing.T) {
	h := New()
	ch, cancel := h.Subscribe("demo")
	other, cancelOther := h.Subscribe("other")
	defer cancelOther()
	h.Publish(projections.Applied{Decisions: []*pb.Decision{{
		App: "demo", User: "alice", Kind: pb.Kind_KIND_LOGIN, LoginId: "L5", Partition: 1, Offset: 9, PolicyVersion: 2,
		Ended: []*pb.Ended{{Session: &pb.Session{LoginId: "L1", Platform: 1, DeviceName: "laptop"}, Code: 206,
			Reason: pb.Reason_REASON_LOGIN_OTHER_DEVICE, ByLoginId: "L5", ByDeviceName: "phone", PolicyVersion: 2, Partition: 1, Offset: 9}},
	}}})
	var got []Item
	for range 2 {
		var it Item
		if err := json.Unmarshal(<-ch, &it); err != nil {
			t.Fatal(err)
		}
		got = append(got, it)
	}
	if got[0].Type != "login" || got[0].LoginID != "L5" || got[1].Type != "ended" || got[1].Code != 206 ||
		got[1].LoginID != "L1" || got[1].ByDeviceName != "phone" || got[1].Reason != "REASON_LOGIN_OTHER_DEVICE" || got[1].User != "alice" {
		t.Fatalf("items: %+v", got)
	}
	select {
	case b := <-other:
		t.Fatalf("another app's subscriber got %s", b)
	default:
	}
	cancel()
	if _, ok := <-ch; ok {
		t.Fatal("channel open after cancel")
	}
}

func TestSlowSubscriberLosesItemsAndIsTold(t *testing.T) {
	h := New()
	ch, cancel := h.Subscribe("demo")
	defer cancel()
	login := projections.Applied{Decisions: []*pb.Decision{{App: "demo", User: "u", Kind: pb.Kind_KIND_LOGIN, LoginId: "L"}}}
	for range Buffer + 5 {
		h.Publish(login) // never blocks
	}
	for range Buffer {
		<-ch
	}
	h.Publish(login)
	var it Item
	json.Unmarshal(<-ch, &it)
	if it.Type != "dropped" || it.Dropped != 5 {
		t.Fatalf("want a dropped item counting 5, got %+v", it)
	}
}

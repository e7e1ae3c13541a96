package engine

import (
	"testing"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

func presenceEv(kind pb.Kind, at int64, inc string, conn uint64, seen int64, addr string) *pb.Event {
	return &pb.Event{Kind: kind, TimeUnixMs: at, Actor: &pb.Actor{User: "u", LoginId: "d"},
		Payload: &pb.Event_Presence{Presence: &pb.DevicePresence{RemoteAddr: addr, Process: "p:1", Incarnation: inc, Connection: conn, LastSeenUnixMs: seen}}}
}

func TestApplyPresence(t *testing.T) {
	conn := presenceEv(pb.Kind_KIND_DEVICE_CONNECTED, 1000, "i1", 7, 990, "1.2.3.4:5")
	st, changed := ApplyPresence(nil, conn)
	want := &pb.Presence{RemoteAddr: "1.2.3.4:5", Process: "p:1", Incarnation: "i1", Connection: 7, Connected: true, ConnectedUnixMs: 1000, LastSeenUnixMs: 990}
	if !changed || !proto.Equal(st, want) {
		t.Fatalf("connect: %v %v", st, changed)
	}
	for _, c := range []struct {
		name     string
		ev       *pb.Event
		changed  bool
		lastSeen int64
	}{
		{"other connection", presenceEv(pb.Kind_KIND_DEVICE_DISCONNECTED, 5000, "i1", 8, 4000, ""), false, 990},
		{"other incarnation", presenceEv(pb.Kind_KIND_DEVICE_DISCONNECTED, 5000, "i0", 7, 4000, ""), false, 990},
		{"last frame", presenceEv(pb.Kind_KIND_DEVICE_DISCONNECTED, 5000, "i1", 7, 4000, ""), true, 4000},
		{"last frame after the event: clamped", presenceEv(pb.Kind_KIND_DEVICE_DISCONNECTED, 5000, "i1", 7, 9000, ""), true, 5000},
		{"last frame before the recorded one: kept", presenceEv(pb.Kind_KIND_DEVICE_DISCONNECTED, 5000, "i1", 7, 10, ""), true, 990},
	} {
		got, changed := ApplyPresence(st, c.ev)
		if changed != c.changed || got.LastSeenUnixMs != c.lastSeen || (changed && got.Connected) || got.RemoteAddr != "1.2.3.4:5" {
			t.Errorf("%s: %v changed=%v, want last seen %d changed=%v", c.name, got, changed, c.lastSeen, c.changed)
		}
	}
	if !proto.Equal(st, want) {
		t.Fatalf("ApplyPresence mutated its input: %v", st)
	}
	// A disconnect of an ended connection changes nothing.
	off, _ := ApplyPresence(st, presenceEv(pb.Kind_KIND_DEVICE_DISCONNECTED, 5000, "i1", 7, 4000, ""))
	if again, changed := ApplyPresence(off, presenceEv(pb.Kind_KIND_DEVICE_DISCONNECTED, 6000, "i1", 7, 6000, "")); changed || again.LastSeenUnixMs != 4000 {
		t.Errorf("second disconnect: %v %v", again, changed)
	}
	if _, changed := ApplyPresence(nil, presenceEv(pb.Kind_KIND_DEVICE_DISCONNECTED, 5000, "i1", 7, 4000, "")); changed {
		t.Error("disconnect without a record changed it")
	}
	// A connect without a last frame, or one after the event, is seen at
	// the event's time.
	for _, seen := range []int64{0, 2000} {
		if got, _ := ApplyPresence(nil, presenceEv(pb.Kind_KIND_DEVICE_CONNECTED, 1000, "i1", 7, seen, "")); got.LastSeenUnixMs != 1000 {
			t.Errorf("connect with last frame %d: last seen %d", seen, got.LastSeenUnixMs)
		}
	}
}

func TestValidatePresence(t *testing.T) {
	ok := presenceEv(pb.Kind_KIND_DEVICE_CONNECTED, 0, "i1", 1, 0, "1.2.3.4:5")
	ok.App, ok.ClientOpId = "app", "op"
	if err := Validate(ok); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*pb.Event){
		"no login id":   func(e *pb.Event) { e.Actor.LoginId = "" },
		"no payload":    func(e *pb.Event) { e.Payload = nil },
		"long address":  func(e *pb.Event) { e.GetPresence().RemoteAddr = string(make([]byte, MaxRemoteAddrBytes+1)) },
		"bad run id":    func(e *pb.Event) { e.GetPresence().Incarnation = "a b" },
		"negative seen": func(e *pb.Event) { e.GetPresence().LastSeenUnixMs = -1 },
	} {
		ev := proto.Clone(ok).(*pb.Event)
		mod(ev)
		if err := Validate(ev); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

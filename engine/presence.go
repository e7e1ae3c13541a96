package engine

import (
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// ApplyPresence applies a DEVICE_CONNECTED or DEVICE_DISCONNECTED of the
// acting device to what the log says of its connections (cur; nil when
// nothing is recorded). It reads only its arguments. A connect records the
// connection it names; a disconnect ends only the connection recorded (an
// older connection's late disconnect, after the device reconnected, changes
// nothing). Both carry the connection's last frame as the gateway saw it;
// last seen is that time, never after the event's own time (the gateway's
// clock cannot move it into the future) and never backwards. The second
// result is false when nothing changed.
func ApplyPresence(cur *pb.Presence, ev *pb.Event) (*pb.Presence, bool) {
	p := ev.GetPresence()
	seen := p.GetLastSeenUnixMs()
	if seen <= 0 || seen > ev.TimeUnixMs {
		seen = ev.TimeUnixMs
	}
	switch ev.Kind {
	case pb.Kind_KIND_DEVICE_CONNECTED:
		return &pb.Presence{
			RemoteAddr: p.GetRemoteAddr(), Process: p.GetProcess(), Incarnation: p.GetIncarnation(),
			Connection: p.GetConnection(), Connected: true,
			ConnectedUnixMs: ev.TimeUnixMs, LastSeenUnixMs: seen,
		}, true
	case pb.Kind_KIND_DEVICE_DISCONNECTED:
		if !cur.GetConnected() || cur.Incarnation != p.GetIncarnation() || cur.Connection != p.GetConnection() {
			return cur, false
		}
		return &pb.Presence{
			RemoteAddr: cur.RemoteAddr, Process: cur.Process, Incarnation: cur.Incarnation,
			Connection: cur.Connection, ConnectedUnixMs: cur.ConnectedUnixMs,
			LastSeenUnixMs: max(seen, cur.LastSeenUnixMs),
		}, true
	}
	return cur, false
}

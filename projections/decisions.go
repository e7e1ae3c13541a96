package projections

import (
	"fmt"
	"strings"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// A decision is written once per operation under a key no later event
// overwrites, so every byte of it is carried by every compaction (issue
// 12: compaction was ~38% of the apply CPU). It is stored without what its
// key and the audit table already hold, and read back whole:
//
//   - app, user, client op id: the key (stream, user, op) names them;
//   - event id: engine.EventID of the key, as the engine assigns it at
//     append; message id: the event id, for a message (a flag says so);
//   - the sessions a session operation ended: the audit rows the sessions
//     handler writes at (app, user, partition, offset, i) in the same
//     batch; a count stands for them.
//
// A field is dropped only when it equals what is derived from the key or
// the audit table, so an event whose fields differ (a log written by
// another tool) is stored as it was decided. The stored bytes are still a
// function of the log alone (invariant 2).

// compactDecision is d as the decision table stores it, for the event ev.
func compactDecision(ev *pb.Event, d *pb.Decision) *pb.Decision {
	c := &pb.Decision{Kind: d.Kind, Code: d.Code, Message: d.Message, Ended: d.Ended, Partition: d.Partition,
		Offset: d.Offset, PolicyVersion: d.PolicyVersion, LoginId: d.LoginId, Reconnect: d.Reconnect, Fanout: d.Fanout,
		App: d.App, User: d.User, ClientOpId: d.ClientOpId, EventId: d.EventId, MessageId: d.MessageId}
	stream, user, op := ev.StreamKey, ev.GetActor().GetUser(), ev.ClientOpId
	app := streamApp(stream)
	if c.App == app && app != "" {
		c.App = ""
	}
	if c.User == user && user != "" {
		c.User = ""
	}
	if c.ClientOpId == op && op != "" {
		c.ClientOpId = ""
	}
	if engine.IsEventID(c.EventId, stream, user, op) {
		c.EventId = ""
	}
	if d.MessageId != "" && d.MessageId == d.EventId {
		c.MessageId, c.MessageIdIsEventId = "", true
	}
	if auditHolds(ev, d) {
		c.Ended, c.AuditEnded = nil, uint32(len(d.Ended))
	}
	return c
}

// auditHolds reports whether the audit rows of d's own user at d's
// position are d.Ended, in order: what the sessions handler writes for a
// session operation (applySession). A policy change ends other users'
// sessions, and keeps them in its decision.
func auditHolds(ev *pb.Event, d *pb.Decision) bool {
	if len(d.Ended) == 0 || ev.Kind == pb.Kind_KIND_POLICY_SET {
		return false
	}
	if ki, _ := engine.LookupKind(ev.Kind); ki.Category != engine.CatSession {
		return false
	}
	for _, e := range d.Ended {
		if e.User != d.User || e.Partition != d.Partition || e.Offset != d.Offset {
			return false
		}
	}
	return true
}

// expandDecision restores a stored decision read under (stream, user, op);
// get reads the audit rows.
func expandDecision(get func([]byte, *pb.Ended) (bool, error), stream, user, op string, d *pb.Decision) error {
	if d.App == "" {
		d.App = streamApp(stream)
	}
	if d.User == "" {
		d.User = user
	}
	if d.ClientOpId == "" {
		d.ClientOpId = op
	}
	if d.EventId == "" {
		d.EventId = engine.EventID(stream, user, op)
	}
	if d.MessageIdIsEventId {
		d.MessageId, d.MessageIdIsEventId = d.EventId, false
	}
	for i := range int(d.AuditEnded) {
		e := &pb.Ended{}
		ok, err := get(auditKey(d.App, d.User, d.Partition, d.Offset, i), e)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("projections: decision %q of %s: audit row %d of %d is missing", op, user, i, d.AuditEnded)
		}
		d.Ended = append(d.Ended, e)
	}
	d.AuditEnded = 0
	return nil
}

// streamApp is the app a stream key names (its second part), or "".
func streamApp(stream string) string {
	_, rest, ok := strings.Cut(stream, "\x00")
	if !ok {
		return ""
	}
	app, _, _ := strings.Cut(rest, "\x00")
	return app
}

// endedRef is what the ended table holds for a login ID: where the audit
// row of its last end is (its partition and offset; lastEnded finds the
// row among that position's few), and why (never 0, so the value is never
// empty, which would read as absent). A copy of the row would double the
// bytes of every end.
func endedRef(e *pb.Ended) *pb.Ended {
	return &pb.Ended{Reason: e.Reason, Partition: e.Partition, Offset: e.Offset}
}

// lastEnded reads how loginID's last session ended: the ended row, then
// the audit row it points at. ok is false when the login ID never ended.
func lastEnded(get func([]byte, *pb.Ended) (bool, error), app, user, loginID string) (*pb.Ended, bool, error) {
	ref := &pb.Ended{}
	ok, err := get(endedKey(app, user, loginID), ref)
	if err != nil || !ok {
		return nil, false, err
	}
	for i := 0; ; i++ {
		e := &pb.Ended{}
		ok, err := get(auditKey(app, user, ref.Partition, ref.Offset, i), e)
		if err != nil {
			return nil, false, err
		}
		if !ok {
			return nil, false, fmt.Errorf("projections: the end of %s/%s points at %d/%d, where the audit has no row for it", user, loginID, ref.Partition, ref.Offset)
		}
		if e.GetSession().GetLoginId() == loginID {
			return e, true, nil
		}
	}
}

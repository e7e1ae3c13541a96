package gateway

import (
	"encoding/json"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// Snapshots in parts. A user's contacts, groups, threads and conversations
// have no fixed bound, so one snapshot frame could grow to any size; it is
// sent instead as parts of at most Options.SnapshotPartBytes each, all at
// the same position (epoch, seq), numbered from 0, every part but the last
// with more: true. Each part holds a slice of each list; the client
// concatenates them in order, and the snapshot is complete (and its
// position may be acked) at the part without more. The parts come from one
// read of the store (one Pebble snapshot), so together they are the state
// at that position. A connection that drops before the last part leaves
// the device without a complete snapshot: it has no new position, and its
// next connection gets a new snapshot.

// snapshotOverhead bounds a part's frame without its lists: the field
// names, the epoch (an event id), the position and the part number.
const snapshotOverhead = 512

// snapshotParts encodes s as frames of at most budget bytes each, as long
// as a single list element fits in budget-snapshotOverhead (ids are at most
// engine.MaxIDBytes, a conversation a few hundred bytes; Options.validate
// keeps budget well above both).
func snapshotParts(s *projections.Snapshot, resync bool, budget int) ([][]byte, error) {
	convs := make([]json.RawMessage, len(s.Conversations))
	for i, cv := range s.Conversations {
		b, err := pjson.Marshal(cv)
		if err != nil {
			return nil, err
		}
		convs[i] = b
	}
	c, g := s.Contacts, s.Groups
	if c == nil {
		c = &pb.Contacts{}
	}
	if g == nil {
		g = &pb.UserGroups{}
	}
	// The lists, in the order they are cut into parts. An id needs no
	// escaping in JSON (engine.ValidID; a thread is group/thread), so its
	// size in a part is its length plus quotes and a comma.
	lists := []struct {
		ids []string
		set func(p *part, ids []string)
	}{
		{c.Friends, func(p *part, ids []string) { p.c.Friends = ids }},
		{c.RequestsIn, func(p *part, ids []string) { p.c.RequestsIn = ids }},
		{c.RequestsOut, func(p *part, ids []string) { p.c.RequestsOut = ids }},
		{c.Blocked, func(p *part, ids []string) { p.c.Blocked = ids }},
		{g.Groups, func(p *part, ids []string) { p.g.Groups = ids }},
		{g.Threads, func(p *part, ids []string) { p.g.Threads = ids }},
	}
	var parts []*part
	cur := &part{c: &pb.Contacts{}, g: &pb.UserGroups{}}
	size := snapshotOverhead
	// fits adds n bytes to the current part, or reports false when they
	// do not fit and the part already holds something: the caller closes it.
	fits := func(n int) bool {
		if size+n > budget && size > snapshotOverhead {
			return false
		}
		size += n
		return true
	}
	next := func() {
		parts = append(parts, cur)
		cur, size = &part{c: &pb.Contacts{}, g: &pb.UserGroups{}}, snapshotOverhead
	}
	const fieldName = 32 // a list's field name, once per part it appears in
	for _, l := range lists {
		start := 0
		for i, id := range l.ids {
			n := len(id) + 3
			if i == start {
				n += fieldName
			}
			if !fits(n) {
				l.set(cur, l.ids[start:i])
				next()
				start = i
				fits(len(id) + 3 + fieldName)
			}
		}
		if start < len(l.ids) {
			l.set(cur, l.ids[start:])
		}
	}
	for _, b := range convs {
		if !fits(len(b) + 1) {
			next()
			fits(len(b) + 1)
		}
		cur.convs = append(cur.convs, b)
	}
	parts = append(parts, cur)

	out := make([][]byte, len(parts))
	for i, p := range parts {
		f := snapshotFrame{Type: "snapshot", Resync: resync, Epoch: s.Meta.GetEpoch(), Seq: s.Meta.GetLastSeq(),
			Part: i, More: i < len(parts)-1, Conversations: p.convs}
		if f.Conversations == nil {
			f.Conversations = []json.RawMessage{}
		}
		var err error
		if f.Contacts, err = pjson.Marshal(p.c); err != nil {
			return nil, err
		}
		if f.Groups, err = pjson.Marshal(p.g); err != nil {
			return nil, err
		}
		if out[i], err = json.Marshal(f); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// part is one snapshot part's slice of each list.
type part struct {
	c     *pb.Contacts
	g     *pb.UserGroups
	convs []json.RawMessage
}

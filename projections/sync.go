package projections

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// maxAgeTrimPerApply bounds the entries one delivery trims by age, so an
// apply's cost stays bounded; the rest go with later deliveries.
const maxAgeTrimPerApply = 64

// decideSync is the sync handler's Decide: a derived copy (DELIVER) is
// applied to its recipient; any other operation of the sync half is decided
// and its copies routed.
func (s *Store) decideSync(t *Txn, ev *pb.Event, pos engine.Position, pol *pb.Policy) (*pb.Decision, error) {
	if ev.Kind == pb.Kind_KIND_DELIVER {
		dl := ev.GetDeliver()
		if dl.GetSource() == nil || (dl.Recipient == "") == (len(dl.Recipients) == 0) {
			return nil, nil // malformed derived record: skipped, counted
		}
		d := engine.NewDecision(ev, pos, pol)
		var refs bodyRefs
		if dl.Recipient != "" {
			if err := s.applyDelivery(t, pos.Partition, dl, &refs); err != nil {
				return nil, err
			}
			return d, refs.flush(t)
		}
		// A partition copy: each recipient's entry, in the record's order,
		// in this one batch (one decision dedups them all).
		one := &pb.Deliver{From: dl.From, MultiDevice: dl.MultiDevice, ExcludeLoginId: dl.ExcludeLoginId, OnlyLoginId: dl.OnlyLoginId,
			Source: dl.Source, SourcePartition: dl.SourcePartition, SourceOffset: dl.SourceOffset}
		for _, r := range dl.Recipients {
			if r == "" || engine.PartitionFor([]byte(engine.UserStream(dl.Source.App, r)), s.opts.Partitions) != pos.Partition {
				continue // not this partition's: a malformed record, skipped alike on every rebuild
			}
			one.Recipient = r
			if err := s.applyDelivery(t, pos.Partition, one, &refs); err != nil {
				return nil, err
			}
		}
		return d, refs.flush(t)
	}
	return s.applySync(t, pol, ev, pos)
}

// applySync decides an operation of the sync half and applies its copies.
func (s *Store) applySync(t *Txn, pol *pb.Policy, ev *pb.Event, pos engine.Position) (*pb.Decision, error) {
	var (
		d   *pb.Decision
		dls []*pb.Deliver
	)
	ki, _ := engine.LookupKind(ev.Kind)
	m := ev.GetMessage()
	switch {
	case ki.Category == engine.CatContact:
		k := contactsKey(ev.App, ev.Actor.User)
		c := &pb.Contacts{}
		if _, err := t.get(k, c); err != nil {
			return nil, err
		}
		var next *pb.Contacts
		next, d, dls = engine.ApplyContact(c, pol, ev, pos)
		if next != c {
			if err := t.put(k, next); err != nil {
				return nil, err
			}
		}
	case ki.Category == engine.CatGroup || ki.Category == engine.CatThread ||
		m.GetChatType() == pb.ChatType_CHAT_TYPE_GROUP || m.GetChatType() == pb.ChatType_CHAT_TYPE_THREAD:
		gid := ev.GetGroup().GetGroupId()
		switch {
		case ev.GetThread() != nil:
			gid = ev.GetThread().GroupId
		case m.GetChatType() == pb.ChatType_CHAT_TYPE_GROUP:
			gid = m.To
		case m.GetChatType() == pb.ChatType_CHAT_TYPE_THREAD:
			gid = m.GroupId
		}
		k := groupKey(ev.App, gid)
		g, err := t.groupOf(k)
		if err != nil {
			return nil, err
		}
		var next *pb.Group
		next, d, dls = engine.ApplyGroup(g, pol, ev, pos)
		switch {
		case next == nil && g != nil:
			err = t.del(k)
		case next != g:
			err = t.put(k, next)
		}
		if err != nil {
			return nil, err
		}
	case ki.Category == engine.CatChatroom || m.GetChatType() == pb.ChatType_CHAT_TYPE_CHATROOM:
		rid := ev.GetChatroom().GetRoomId()
		if m != nil {
			rid = m.To
		}
		k := roomKey(ev.App, rid)
		r := &pb.Chatroom{}
		if _, err := t.get(k, r); err != nil {
			return nil, err
		}
		var next *pb.Chatroom
		next, d, dls = engine.ApplyChatroom(r, pol, ev, pos)
		if next != r {
			var err error
			if len(next.Members) == 0 {
				err = t.del(k)
			} else {
				err = t.put(k, next)
			}
			if err != nil {
				return nil, err
			}
		}
	case m != nil:
		// The batch's decoded sessions (the actor rule read them already):
		// ApplyUserMessage only reads them.
		st, err := t.sessionsOf(ev.App, ev.Actor.User)
		if err != nil {
			return nil, err
		}
		d, dls = engine.ApplyUserMessage(st, pol, ev, pos)
	default:
		d, dls = engine.ApplyOwnOperation(pol, ev, pos)
	}
	if d.Code != 0 {
		return d, nil
	}
	var refs bodyRefs
	if err := s.route(t, pos.Partition, ev.App, d, dls, &refs); err != nil {
		return nil, err
	}
	return d, refs.flush(t)
}

// route applies each copy whose recipient lives on this partition inline,
// in this batch, and records the others in the decision for the relay
// (without the source event: the relay reads it from the log). Copies
// that differ only in their recipient (a group's single-device copies)
// and go to one partition are recorded as one partition copy listing its
// recipients in the order given, so a group message costs one record per
// partition it reaches, not one per member (docs/design-notes.md, "Group
// fan-out").
func (s *Store) route(t *Txn, p int32, app string, d *pb.Decision, dls []*pb.Deliver, refs *bodyRefs) error {
	shared := map[int32]*pb.Deliver{} // the partition copy of each partition, once it has two recipients' worth
	for _, dl := range dls {
		q := engine.PartitionFor([]byte(engine.UserStream(app, dl.Recipient)), s.opts.Partitions)
		if q == p {
			if err := s.applyDelivery(t, p, dl, refs); err != nil {
				return err
			}
			continue
		}
		if x := shared[q]; x != nil && sameCopy(x, dl) {
			if x.Recipient != "" {
				x.Recipients, x.Recipient = []string{x.Recipient}, ""
			}
			x.Recipients = append(x.Recipients, dl.Recipient)
			continue
		}
		out := proto.Clone(dl).(*pb.Deliver)
		out.Source = nil
		d.Fanout = append(d.Fanout, out)
		if shared[q] == nil && !dl.MultiDevice && dl.ExcludeLoginId == "" && dl.OnlyLoginId == "" {
			shared[q] = out // single-device copies: the ones a group has many of
		}
	}
	return nil
}

// sameCopy reports whether b is a's copy for another recipient.
func sameCopy(a, b *pb.Deliver) bool {
	return a.From == b.From && a.MultiDevice == b.MultiDevice && a.ExcludeLoginId == b.ExcludeLoginId &&
		a.OnlyLoginId == b.OnlyLoginId && a.SourcePartition == b.SourcePartition && a.SourceOffset == b.SourceOffset
}

// applyDelivery applies one copy to its recipient's state and timeline on
// partition p; refs collects the event's references to bodies. The
// recipient's contacts, groups, meta and conversation are the batch's
// decoded values (txnstate.go), changed in place and written once per
// batch. An entry that extends the recipient's open run reads and writes
// nothing of its conversation (runs.go, settleRun).
func (s *Store) applyDelivery(t *Txn, p int32, dl *pb.Deliver, refs *bodyRefs) error {
	app, user := dl.Source.App, dl.Recipient
	pol, err := policyOf(t, app, p)
	if err != nil {
		return err
	}
	r, err := t.recipientOf(app, user)
	if err != nil {
		return err
	}
	// Contacts and groups are loaded only for a delivery that reads them;
	// the others are given empty ones, which they neither read nor change.
	// The conversation is applied below (engine.ApplyConversation), once
	// it is known that the entry does not extend a run: st.Conv is nil,
	// so ApplyDeliveryInPlace applies the delivery to a throwaway one.
	meta, err := t.metaOf(r, app, user, refs)
	if err != nil {
		return err
	}
	st := engine.UserState{Contacts: &pb.Contacts{}, Groups: &pb.UserGroups{}, Meta: meta}
	var cs, gs *stateVal
	if engine.ReadsContacts(dl) {
		if cs, err = t.userTable(r, 0); err != nil {
			return err
		}
		st.Contacts = cs.m.(*pb.Contacts)
	}
	if engine.ReadsGroups(dl) {
		if gs, err = t.userTable(r, 1); err != nil {
			return err
		}
		st.Groups = gs.m.(*pb.UserGroups)
	}
	oldFirst, oldLast, oldTime, oldEpoch := meta.FirstSeq, meta.LastSeq, meta.FirstTimeUnixMs, meta.Epoch
	e, ch := engine.ApplyDeliveryInPlace(&st, pol, dl)
	if e == nil {
		return nil
	}
	// Retention first: it moves the meta's first position, and the meta
	// is then written once.
	if err := s.trim(t, r, app, user, oldFirst, st.Meta, pol, dl.Source.TimeUnixMs, refs); err != nil {
		return err
	}
	// The meta changed by more than its last seq is written whatever the
	// entry; one that extends a derived run is written only then.
	quiet := meta.FirstSeq == oldFirst && meta.FirstTimeUnixMs == oldTime && meta.Epoch == oldEpoch && r.svs[2].present
	// Only what a delivery changed is written: contacts and groups it did
	// not change (a message, most often) hold their exact bytes already (a
	// deterministic encoding). An absent value it did not change stays
	// absent (it was written empty per delivery before: a key per member
	// per batch for users without contacts).
	if ch.Contacts {
		if err := t.changed(r.keys[0], cs); err != nil {
			return err
		}
	}
	if ch.Groups {
		if err := t.changed(r.keys[1], gs); err != nil {
			return err
		}
	}
	// A message to many: the member's entry references the body, written
	// once per partition (bodies.go).
	var (
		v      []byte
		ord    uint64
		member bool
	)
	srcJSON := s.sourceJSON(p, dl.Source)
	if srcJSON != nil && sharesBody(dl.Source) {
		if rv, ok := refs.enc.encode(e, p); ok {
			if err := refs.acquire(t, app, e.EntryId, p, srcJSON); err != nil {
				return err
			}
			v = rv
			// The sender's own copy is not a run member: it differs from
			// the members' (multi_device, a device excluded), and the
			// first member's value is the index entry every other
			// member's must equal.
			if runsOn && e.OnlyLoginId == "" && e.ExcludeLoginId == "" && user != dl.Source.GetActor().GetUser() {
				var extends bool
				if ord, member, extends, err = s.runMember(t, r, app, user, p, e, refs.last, rv); err != nil {
					return err
				}
				if extends { // nothing written: not even the conversation
					t.entries = append(t.entries, AppliedEntry{App: app, User: user, Entry: e})
					if !r.run.derived { // a run from before the set: its meta is stored
						return t.writeMeta(r)
					}
					refs.last.reached = append(refs.last.reached, user)
					if quiet {
						return nil // not even the meta: its last seq is derived
					}
					return t.writeMeta(r)
				}
			}
		}
	}
	if err := t.writeMeta(r); err != nil {
		return err
	}
	// The open run, if any, stops being the user's last entry here: its
	// conversation is written as of the seq before this entry.
	if err := t.settleRun(r, app, user, oldLast); err != nil {
		return err
	}
	if ct, id, ok := engine.ConversationOf(dl); ok {
		ck, cv, err := t.convOf(r, app, user, int32(ct), id)
		if err != nil {
			return err
		}
		if !cv.present {
			cv.m = &pb.Conversation{ChatType: ct, ConversationId: id}
		}
		engine.ApplyConversation(cv.m.(*pb.Conversation), dl, e)
		if err := t.changed(ck, cv); err != nil {
			return err
		}
	}
	if member { // a new run; its history key is the run's
		if err := t.startRun(r, app, user, p, e, ord); err != nil {
			return err
		}
		if r.run.derived {
			refs.last.reached = append(refs.last.reached, user)
		}
		t.entries = append(t.entries, AppliedEntry{App: app, User: user, Entry: e})
		return nil
	}
	if v == nil {
		if v, err = encodeEntryWith(e, srcJSON); err != nil {
			return err
		}
	}
	if err := t.endRun(r, app, user); err != nil {
		return err
	}
	if err := t.set(timelineKey(app, user, e.Seq), v); err != nil {
		return err
	}
	t.entries = append(t.entries, AppliedEntry{App: app, User: user, Entry: e})
	if dl.Source.Kind == pb.Kind_KIND_MESSAGE_SEND {
		if err := t.setBlind(historyKey(app, user, int32(e.ChatType), e.ConversationId, e.Seq), nil); err != nil {
			return err
		}
	}
	return nil
}

func newContacts() proto.Message     { return &pb.Contacts{} }
func newUserGroups() proto.Message   { return &pb.UserGroups{} }
func newMeta() proto.Message         { return &pb.TimelineMeta{} }
func newConversation() proto.Message { return &pb.Conversation{} }

// sourceJSON returns engine.MarshalPart(src), encoded once for the copies
// of one source applied one after another on partition p (the members of
// a group on p); nil when it cannot be encoded (the caller encodes the
// whole entry and reports the error). The cache holds the event it was
// computed for, so its address cannot be another event's.
func (s *Store) sourceJSON(p int32, src *pb.Event) []byte {
	c := &s.srcJSON[p]
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.src != src {
		j, err := engine.MarshalPart(src)
		if err != nil {
			return nil
		}
		c.src, c.json = src, j
	}
	return c.json
}

// trim deletes entries the retention policy dropped: those below the new
// first_seq (count limit) and, bounded per call, those older than the age
// limit by event time. Every input is from the log, so rebuilds trim alike.
// The common case, nothing due, reads nothing: the oldest entry's time is
// kept in the timeline's meta. It updates m; the caller writes it. A
// trimmed entry that references a body releases it (refs).
func (s *Store) trim(t *Txn, rc *recipient, app, user string, oldFirst uint64, m *pb.TimelineMeta, pol *pb.Policy, now int64, refs *bodyRefs) error {
	_, maxAge := engine.Retention(pol)
	cutoff := now - maxAge
	first := max(oldFirst, 1)
	if first >= m.FirstSeq && m.FirstTimeUnixMs >= cutoff {
		return nil
	}
	// A run is trimmed from its front and moves: the newest run is read
	// again when next needed.
	rc.runLoaded = false
	for n := 0; first < m.LastSeq; {
		v, ok, err := t.raw(timelineKey(app, user, first))
		if err != nil {
			return err
		}
		var e entryHead
		if ok {
			if e, err = parseEntry(v); err != nil {
				return err
			}
		}
		if ok && e.run {
			k, stopped, err := s.trimRun(t, rc, app, user, first, &e, m, cutoff, &n, refs)
			if err != nil {
				return err
			}
			first += k
			if stopped {
				break
			}
			continue
		}
		if ok && first >= m.FirstSeq && (e.time >= cutoff || n >= maxAgeTrimPerApply) {
			m.FirstTimeUnixMs = e.time
			break
		}
		if ok {
			if e.kind == pb.Kind_KIND_MESSAGE_SEND {
				if err := t.deleteBlind(historyKey(app, user, e.chatType, string(e.conv), first)); err != nil {
					return err
				}
			}
			if e.ref {
				if err := refs.release(t, app, e.id, e.bodyPart); err != nil {
					return err
				}
			}
			if err := t.del(timelineKey(app, user, first)); err != nil {
				return err
			}
			if first >= m.FirstSeq {
				n++ // an age trim
			}
		}
		first++
	}
	if first == m.LastSeq {
		m.FirstTimeUnixMs = now // only the newest entry is left
	}
	m.FirstSeq = max(m.FirstSeq, first)
	return nil
}

// ErrResync is returned by Timeline when the device's position cannot be
// continued: its epoch is not the timeline's, or the entries after it were
// trimmed by retention. The device must take a snapshot and start over.
var ErrResync = fmt.Errorf("projections: position cannot be continued: resync (%w)", engine.Errorf(engine.CodeResync, "resync"))

// Timeline returns up to limit entries visible to device loginID after
// position (epoch, after), in order, and the position to continue from: the
// sequence of the last entry examined, so a page of entries all hidden from
// this device still advances. Cost is proportional to the entries read.
func (s *Store) Timeline(app, user, loginID, epoch string, after uint64, limit int) ([]*pb.TimelineEntry, uint64, *pb.TimelineMeta, error) {
	if s.isClosed() {
		return nil, 0, nil, ErrClosed
	}
	// One view for the meta, the entries and their bodies: a body read
	// after the entry that referenced it was trimmed would be gone, and a
	// run ends at the meta's last seq of the same view.
	snap := s.db.NewSnapshot()
	defer snap.Close()
	meta, _, err := readMeta(snap, app, user)
	if err != nil {
		return nil, 0, nil, err
	}
	if after > 0 || epoch != "" {
		if epoch != meta.Epoch || after > meta.LastSeq || after+1 < meta.FirstSeq {
			return nil, 0, meta, ErrResync
		}
	}
	if limit <= 0 {
		limit = 100
	}
	var out []*pb.TimelineEntry
	r := newBodyReader(snap, app, &s.bodies)
	next, err := s.scanTimeline(snap, app, user, after, meta.LastSeq, func(seq uint64, h *entryHead, v []byte) (bool, error) {
		if len(out) >= limit {
			return false, nil
		}
		if h.visibleTo(loginID) {
			e, err := r.entry(v, seq)
			if err != nil {
				return false, err
			}
			out = append(out, e)
		}
		return true, nil
	})
	if err != nil {
		return nil, 0, nil, err
	}
	return out, next, meta, nil
}

// scanTimeline calls fn, in order, for each entry of user's timeline after
// seq after, in view snap, with its seq, head and stored value (a run's
// members as the format-3 values they stand for), until fn returns false.
// It returns the seq of the last entry fn accepted (after if none).
func (s *Store) scanTimeline(snap *pebble.Snapshot, app, user string, after, lastSeq uint64, fn func(seq uint64, h *entryHead, v []byte) (bool, error)) (uint64, error) {
	// A run ends before the next key, the last one at the timeline's
	// last seq (lastSeq: the meta's, read by the caller in view snap).
	prefix := timelinePrefix(app, user)
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	ix := runIndexReader{snap: snap, app: app}
	defer ix.close()
	next := after
	// The entry at after+1 may be a member of a run that starts before
	// it: start at the last key at or below after+1.
	valid := it.SeekLT(timelineKey(app, user, after+2)) || it.First()
	// h and m go to fn by pointer, so they live on the heap: once per
	// scan, not once per entry.
	var h, m entryHead
	for valid {
		if h, err = parseEntry(it.Value()); err != nil {
			return 0, err
		}
		seq := seqOf(it.Key())
		if !h.run {
			if seq > after {
				if more, err := fn(seq, &h, it.Value()); err != nil || !more {
					return next, err
				}
				next = seq
			}
			valid = it.Next()
			continue
		}
		h.conv = bytes.Clone(h.conv) // the value goes with Next
		end := lastSeq
		if valid = it.Next(); valid {
			end = seqOf(it.Key()) - 1
		}
		for es := max(seq, after+1); es <= end; es++ {
			v, err := ix.value(&h, es-seq)
			if err != nil {
				return 0, err
			}
			if m, err = parseEntry(v); err != nil {
				return 0, err
			}
			if more, err := fn(es, &m, v); err != nil || !more {
				return next, err
			}
			next = es
		}
	}
	return next, it.Error()
}

// EntryJSON is a timeline entry as catch-up sends it.
type EntryJSON struct {
	Seq  uint64
	Kind pb.Kind // the source's kind: the event frame's name (engine.EventName)
	// JSON is the TimelineEntry in engine.MarshalPart's form: the bytes
	// of the frame's entry, as stored.
	JSON []byte
}

// TimelineEach is Timeline without decoding, for catch-up: it calls fn,
// in order, for up to limit entries visible to loginID after (epoch,
// after), with the timeline's epoch and each entry's kind (the event
// frame's name, engine.EventName) and stored wire JSON (engine.MarshalPart
// of the entry). A value's visibility is read from its head and its JSON
// handed over as stored (entries.go), or, for a message to many, written
// from the entry's fields around its body's bytes (bodies.go); nothing is
// decoded, so the store's cost is about a range scan's. json is the
// store's memory, valid only during the call: copy what you keep, and do
// not block in fn (the scan holds an iterator and a snapshot). An
// error from fn stops the scan and is returned. It returns the position to
// continue from (the last entry examined, visible or not) and the meta.
func (s *Store) TimelineEach(app, user, loginID, epoch string, after uint64, limit int,
	fn func(epoch string, seq uint64, kind pb.Kind, json []byte) error) (uint64, *pb.TimelineMeta, error) {
	if s.isClosed() {
		return 0, nil, ErrClosed
	}
	// One view for the meta, the entries and their bodies: a body read
	// after the entry that referenced it was trimmed would be gone, and a
	// run ends at the meta's last seq of the same view.
	snap := s.db.NewSnapshot()
	defer snap.Close()
	meta, _, err := readMeta(snap, app, user)
	if err != nil {
		return 0, nil, err
	}
	if after > 0 || epoch != "" {
		if epoch != meta.Epoch || after > meta.LastSeq || after+1 < meta.FirstSeq {
			return 0, meta, ErrResync
		}
	}
	if limit <= 0 {
		limit = 100
	}
	n := 0
	r := newBodyReader(snap, app, &s.bodies)
	next, err := s.scanTimeline(snap, app, user, after, meta.LastSeq, func(seq uint64, h *entryHead, _ []byte) (bool, error) {
		if n >= limit {
			return false, nil
		}
		if !h.visibleTo(loginID) {
			return true, nil
		}
		j, err := r.entryJSON(h, seq)
		if err != nil {
			return false, err
		}
		if err := fn(meta.Epoch, seq, h.kind, j); err != nil {
			return false, err
		}
		n++
		return true, nil
	})
	if err != nil {
		return 0, nil, err
	}
	return next, meta, nil
}

// TimelineJSON is TimelineEach collected: the entries with their JSON
// copied (into one buffer per call).
func (s *Store) TimelineJSON(app, user, loginID, epoch string, after uint64, limit int) ([]EntryJSON, uint64, *pb.TimelineMeta, error) {
	var (
		out  []EntryJSON
		ends []int
		buf  []byte
	)
	next, meta, err := s.TimelineEach(app, user, loginID, epoch, after, limit, func(_ string, seq uint64, kind pb.Kind, j []byte) error {
		if buf == nil {
			buf = make([]byte, 0, min(max(limit, 1), 512)*(len(j)+16))
		}
		buf = append(buf, j...)
		out = append(out, EntryJSON{Seq: seq, Kind: kind})
		ends = append(ends, len(buf))
		return nil
	})
	if err != nil {
		return nil, 0, meta, err
	}
	start := 0
	for i := range out {
		out[i].JSON = buf[start:ends[i]:ends[i]]
		start = ends[i]
	}
	return out, next, meta, nil
}

// seqOf is the sequence a timeline key ends with.
func seqOf(k []byte) uint64 { return binary.BigEndian.Uint64(k[len(k)-8:]) }

// Snapshot is what a new device receives before it follows the timeline.
type Snapshot struct {
	Meta          *pb.TimelineMeta
	Contacts      *pb.Contacts
	Groups        *pb.UserGroups
	Conversations []*pb.Conversation
}

// Snapshot returns a user's contacts, groups, threads and conversations,
// and the timeline position they are current at.
func (s *Store) Snapshot(app, user string) (*Snapshot, error) {
	if s.isClosed() {
		return nil, ErrClosed
	}
	// One Pebble snapshot, so the parts agree with the position.
	snap := s.db.NewSnapshot()
	defer snap.Close()
	// The meta with the last seq of the open run (runs.go, readMeta).
	meta, run, err := readMeta(snap, app, user)
	if err != nil {
		return nil, err
	}
	out := &Snapshot{Meta: meta, Contacts: &pb.Contacts{}, Groups: &pb.UserGroups{}}
	for _, x := range []struct {
		k []byte
		m proto.Message
	}{{contactsKey(app, user), out.Contacts}, {userGroupsKey(app, user), out.Groups}} {
		if _, err := getProto(snap, x.k, x.m); err != nil {
			return nil, err
		}
	}
	prefix := convPrefix(app, user)
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	// The conversation of the user's open run is stored as of the run's
	// start or later, and read as of the last seq (runs.go, advanceConv).
	for it.First(); it.Valid(); it.Next() {
		c := &pb.Conversation{}
		if err := unmarshal(it.Value(), c); err != nil {
			return nil, err
		}
		if run.ok && int32(c.ChatType) == run.ct && c.ConversationId == run.conv && c.LastSeq < out.Meta.LastSeq {
			id, err := runMemberID(func(k []byte) ([]byte, bool, error) { return getRaw(snap, k) }, app, &run, out.Meta.LastSeq)
			if err != nil {
				return nil, err
			}
			advanceConv(c, out.Meta.LastSeq, id)
		}
		out.Conversations = append(out.Conversations, c)
	}
	return out, it.Error()
}

// getRaw reads k's value from g, a copy; ok is false when there is none.
func getRaw(g getter, k []byte) ([]byte, bool, error) {
	v, closer, err := g.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	out := bytes.Clone(v)
	return out, true, closer.Close()
}

// History pages a conversation's messages for a user, newest first, with
// sequences below before (0: from the newest). Removed history (remote
// message removal) is not returned.
func (s *Store) History(app, user string, ct pb.ChatType, conv string, before uint64, limit int) ([]*pb.TimelineEntry, error) {
	if s.isClosed() {
		return nil, ErrClosed
	}
	c := &pb.Conversation{}
	if _, err := s.getProto(convKey(app, user, int32(ct), conv), c); err != nil {
		return nil, err
	}
	prefix := historyPrefix(app, user, int32(ct), conv)
	upper := prefixEnd(prefix)
	if before > 0 {
		upper = historyKey(app, user, int32(ct), conv, before)
	}
	snap := s.db.NewSnapshot() // one view for the index, the entries and their bodies
	defer snap.Close()
	// No lower bound at cleared_seq: a run's history key is at its first
	// seq, which may be at or below cleared_seq with members above it.
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: upper})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	if limit <= 0 {
		limit = 50
	}
	var out []*pb.TimelineEntry
	r := newBodyReader(snap, app, &s.bodies)
	ix := runIndexReader{snap: snap, app: app}
	defer ix.close()
	add := func(v []byte, seq uint64) error {
		e, err := r.entry(v, seq)
		if err != nil {
			return err
		}
		out = append(out, e)
		return nil
	}
	// A run ends before the user's next timeline key, the last one at the
	// timeline's last seq.
	var (
		tl   *pebble.Iterator
		meta *pb.TimelineMeta
	)
	defer func() {
		if tl != nil {
			tl.Close()
		}
	}()
	runEnd := func(seq uint64) (uint64, error) {
		if tl == nil {
			if meta, _, err = readMeta(snap, app, user); err != nil {
				return 0, err
			}
			tp := timelinePrefix(app, user)
			if tl, err = snap.NewIter(&pebble.IterOptions{LowerBound: tp, UpperBound: prefixEnd(tp)}); err != nil {
				tl = nil
				return 0, err
			}
		}
		if tl.SeekGE(timelineKey(app, user, seq+1)) {
			return seqOf(tl.Key()) - 1, nil
		}
		return meta.LastSeq, tl.Error()
	}
	for it.Last(); it.Valid() && len(out) < limit; it.Prev() {
		seq := seqOf(it.Key())
		v, closer, err := snap.Get(timelineKey(app, user, seq))
		if errors.Is(err, pebble.ErrNotFound) {
			if seq <= c.ClearedSeq {
				break
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("projections: get: %w", err)
		}
		h, err := parseEntry(v)
		switch {
		case err != nil:
		case h.run:
			// Members newest first, below before and above cleared_seq.
			var end uint64
			if end, err = runEnd(seq); err != nil {
				break
			}
			for es := end; es >= seq && len(out) < limit && err == nil; es-- {
				if (before > 0 && es >= before) || es <= c.ClearedSeq {
					continue
				}
				var iv []byte
				if iv, err = ix.value(&h, es-seq); err == nil {
					err = add(iv, es)
				}
			}
		case seq > c.ClearedSeq:
			err = add(v, seq)
		}
		if cerr := closer.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, err
		}
		if seq <= c.ClearedSeq {
			break
		}
	}
	return out, it.Error()
}

// SetCursor records the position device loginID acknowledged. Cursors are
// operational state, like a consumer's committed offset: they say where a
// device is, not what the log decided, so they are outside the digest and
// written without fsync (a lost cursor only re-sends entries, which the
// device drops by seq). A cursor never moves backwards within an epoch.
func (s *Store) SetCursor(app, user, loginID, epoch string, seq uint64) error {
	if s.isClosed() {
		return ErrClosed
	}
	k := cursorKey(app, user, loginID)
	cur := &pb.TimelineMeta{}
	if ok, err := s.getProto(k, cur); err != nil {
		return err
	} else if ok && cur.Epoch == epoch && cur.LastSeq >= seq {
		return nil
	}
	b, err := engine.EncodeState(&pb.TimelineMeta{Epoch: epoch, LastSeq: seq})
	if err != nil {
		return err
	}
	return s.db.Set(k, b, pebble.NoSync)
}

// Cursor returns device loginID's acknowledged position; ok is false for a
// device that never acknowledged (a new device: give it a snapshot).
func (s *Store) Cursor(app, user, loginID string) (epoch string, seq uint64, ok bool, err error) {
	if s.isClosed() {
		return "", 0, false, ErrClosed
	}
	cur := &pb.TimelineMeta{}
	ok, err = s.getProto(cursorKey(app, user, loginID), cur)
	return cur.Epoch, cur.LastSeq, ok, err
}

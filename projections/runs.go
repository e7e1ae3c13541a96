package projections

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// Runs: a group's messages written once per partition, not once per member
// (issue 13, docs/design-notes.md "Group fan-out").
//
// A member's entry of a message to many (format 3) differs from the other
// members' only in its seq. So a partition applying such a message writes
// the entry's value once, in the conversation's run index on the partition
// (g 0 <app> 0 <ct><conv> 0 <p> <ordinal>, ordinals counted per
// conversation and partition in g 0 <app> 0 <ct><conv> 0 <p>), and a
// member's timeline holds runs (format 4 at t…<s>): "seqs from s on are
// the index entries from ord on of conversation C on partition p". A run
// stores no length: it stands for the seqs up to the user's next timeline
// key, or to the meta's last seq (seqs are dense: every seq is a key or in
// the run before it). A member's new entry extends the run holding its
// last entry when it is that run's next index entry (the member received
// every message of C on p in between: a partition copy names its
// recipients); otherwise it starts a run. The rule reads only state the
// log built, so every batching of a history writes the same bytes.
//
// r 0 <app> 0 <user> names the run holding the user's last entry (its
// first seq and value), written when a run starts and deleted when an
// entry that is not a run member follows it; it is a hot key (hot.go), so
// the check costs no read of Pebble. Extending a run writes nothing: a
// member's writes per message are its meta and conversation (state, as
// before); per run, the run key, the pointer and the history key (h, at
// the run's first seq).
//
// Only entries every login of the user may see are run members (no
// only/exclude login: the sender's own copy stays a format-3 entry), and
// only entries whose value is exactly the index entry's. Readers expand a
// run into the format-3 values it stands for: each expanded entry is byte
// for byte what the per-entry layout stores at its seq.
//
// Lifetimes: each run member counts one reference to its body, as a
// format-3 entry does, and the body's count names the index entry (after
// the count): the index entry goes with the body, when no entry can be read
// through either. Retention trims a run from its front (the run moves to
// its new first seq, with its history key and the pointer).

// runsOn: entries of messages to many are stored in runs. A constant of
// the code; tests switch it off to compare with the per-entry layout.
var runsOn = true

// openRun is the run holding a user's last entry, as of the batch; ok
// false: the last entry is not a run member.
type openRun struct {
	ok         bool
	start, ord uint64
	p, ct      int32
	conv       string
	// derived: the run is in its conversation's set of open runs on p and
	// reaches the index head, and the user's last seq is derived from
	// it (the meta is not written per entry; "The meta off the write
	// path" below). false: a run written by a build before it, whose
	// meta's last seq is stored.
	derived bool
}

// runDerivedMark ends the pointer of a derived run: no run value ends
// with it (a uvarint's last byte is below 0x80).
const runDerivedMark = 0xff

// runPointer is the value of a user's r key: the first seq of the run
// holding the user's last entry, then the run's value, then
// runDerivedMark for a derived run.
func runPointer(start uint64, p, ct int32, conv string, ord uint64, derived bool) []byte {
	b := make([]byte, 8, 8+2+5+2+len(conv)+1+10+1)
	binary.BigEndian.PutUint64(b, start)
	b = appendRunValue(b, p, ct, conv, ord)
	if derived {
		b = append(b, runDerivedMark)
	}
	return b
}

// openRunOf returns the run holding r's last entry, read once per batch
// (and again after trim moved or dropped it). The pointer is a hot key:
// read from the partition's cache, or known absent by its filter.
func (t *Txn) openRunOf(r *recipient, app, user string) (*openRun, error) {
	if r.runLoaded {
		return &r.run, nil
	}
	r.run, r.runLoaded = openRun{}, true
	v, ok, err := t.raw(runOpenKey(app, user))
	if err != nil || !ok {
		return &r.run, err
	}
	if r.run, err = parseRunPointer(v); err != nil {
		return nil, fmt.Errorf("projections: run pointer of %s/%s: %w", app, user, err)
	}
	return &r.run, nil
}

// parseRunPointer decodes a user's r value (runPointer).
func parseRunPointer(v []byte) (openRun, error) {
	if len(v) < 10 {
		return openRun{}, fmt.Errorf("short value %x", v)
	}
	rv, derived := v[8:], v[len(v)-1] == runDerivedMark
	if derived {
		rv = rv[:len(rv)-1]
	}
	h, err := parseEntry(rv)
	if err != nil || !h.run {
		return openRun{}, fmt.Errorf("value %x (%v)", v, err)
	}
	return openRun{ok: true, start: binary.BigEndian.Uint64(v), ord: h.runOrd, p: h.runPart, ct: h.chatType, conv: string(h.conv), derived: derived}, nil
}

// The conversation of an open run (its unread count and last message) is
// not written while the run is extended (docs/design-notes.md, "The
// member's conversation off the write path"): the stored value is the
// conversation as of some seq L at or after the run's first member, and
// every seq from L+1 to the user's last is a member of the run, a message
// to the conversation from another user. So the conversation as of the
// user's last seq is the stored one advanced by those messages
// (advanceConv): what reads derive (Snapshot) and what the projector
// writes (settleRun) before the run stops being the open one: before any
// entry that does not extend it, and when retention drops it whole.

// advanceConv advances c, stored while the user's open run was in it, to
// the user's last seq last, whose message is lastID: each seq after
// c.LastSeq is one message to c from another user (engine.ApplyConversation
// of a group message). It reports whether c changed.
func advanceConv(c *pb.Conversation, last uint64, lastID []byte) bool {
	if c.LastSeq >= last {
		return false
	}
	c.Unread += last - c.LastSeq
	c.LastSeq, c.LastMessageId, c.Deleted = last, string(lastID), false
	return true
}

// runMemberID returns the entry id of the member of run at seq (start <=
// seq), read from its index entry with get.
func runMemberID(get func([]byte) ([]byte, bool, error), app string, run *openRun, seq uint64) ([]byte, error) {
	if seq < run.start {
		return nil, fmt.Errorf("projections: seq %d before its run at %d", seq, run.start)
	}
	k := runIndexKey(app, run.ct, run.conv, run.p, run.ord+(seq-run.start))
	v, ok, err := get(k)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("projections: run index entry %q missing", k)
	}
	h, err := parseEntry(v)
	if err != nil {
		return nil, err
	}
	return h.id, nil
}

// settleRun writes the conversation of the run holding r's last entry as
// of last, the user's last seq before the entry being applied: called
// before that run stops being the open one.
func (t *Txn) settleRun(r *recipient, app, user string, last uint64) error {
	run, err := t.openRunOf(r, app, user)
	if err != nil || !run.ok {
		return err
	}
	ck, cv, err := t.convOf(r, app, user, run.ct, run.conv)
	if err != nil {
		return err
	}
	c := cv.m.(*pb.Conversation)
	if !cv.present || c.LastSeq >= last {
		return nil
	}
	id, err := runMemberID(t.raw, app, run, last)
	if err != nil {
		return err
	}
	advanceConv(c, last, id)
	return t.changed(ck, cv)
}

// runIndex returns the ordinal of x's body's index entry, writing the entry
// (value v, the member's format-3 value) the first time a member needs it;
// ok is false when v is not the entry's value (the member's entry differs
// from the others': stored as its own format-3 value).
func (x *bodyRef) runIndex(t *Txn, app string, ct int32, conv string, p int32, v []byte) (uint64, bool, error) {
	if x.idx == nil {
		ck := runCounterKey(app, ct, conv, p)
		ord, open, err := t.runCounter(ck)
		if err != nil {
			return 0, false, err
		}
		ord++
		if err := t.set(ck, counterValue(ord, open)); err != nil {
			return 0, false, err
		}
		x.idx, x.tmpl, x.idxNew = binary.BigEndian.AppendUint64(ck, ord), v, true
		x.app, x.ct, x.conv, x.p, x.reached = app, ct, conv, p, x.reached[:0]
		return ord, true, t.set(x.idx, v)
	}
	if x.tmpl == nil {
		tv, ok, err := t.raw(x.idx)
		if err != nil {
			return 0, false, err
		}
		if !ok {
			return 0, false, fmt.Errorf("projections: run index entry %q missing", x.idx)
		}
		x.tmpl = tv
	}
	return binary.BigEndian.Uint64(x.idx[len(x.idx)-8:]), bytes.Equal(x.tmpl, v), nil
}

// runMember reports whether user's entry e (value v, format 3,
// referencing body x on partition p) is a run member, its index entry's
// ordinal, and whether it extends the run holding the user's last entry:
// e is that run's next index entry, and nothing is written (a run's extent
// is implied by the next key and the meta's last seq). Not a member: the
// caller stores v.
func (s *Store) runMember(t *Txn, r *recipient, app, user string, p int32, e *pb.TimelineEntry, x *bodyRef, v []byte) (ord uint64, member, extends bool, err error) {
	ct, conv := int32(e.ChatType), e.ConversationId
	ord, ok, err := x.runIndex(t, app, ct, conv, p, v)
	if err != nil || !ok {
		return 0, false, false, err
	}
	run, err := t.openRunOf(r, app, user)
	if err != nil {
		return 0, false, false, err
	}
	return ord, true, run.ok && run.start < e.Seq && run.ord+(e.Seq-run.start) == ord && run.p == p && run.ct == ct && run.conv == conv, nil
}

// startRun starts a run at user's entry e, index entry ord of its
// conversation on partition p: the run key, the pointer and the history
// key, and the user joins the set of open runs of the conversation on p
// (leaving the set of the run it replaces). The caller settled the run it
// replaces (settleRun).
func (t *Txn) startRun(r *recipient, app, user string, p int32, e *pb.TimelineEntry, ord uint64) error {
	ct, conv := int32(e.ChatType), e.ConversationId
	if err := t.leaveRunSet(r, app, user); err != nil {
		return err
	}
	r.run, r.runLoaded = openRun{ok: true, start: e.Seq, ord: ord, p: p, ct: ct, conv: conv, derived: derivedRunsOn}, true
	if derivedRunsOn {
		if err := t.joinRunSet(app, user, ct, conv, p); err != nil {
			return err
		}
	}
	if err := t.set(timelineKey(app, user, e.Seq), appendRunValue(nil, p, ct, conv, ord)); err != nil {
		return err
	}
	if err := t.set(runOpenKey(app, user), runPointer(e.Seq, p, ct, conv, ord, derivedRunsOn)); err != nil {
		return err
	}
	return t.setBlind(historyKey(app, user, ct, conv, e.Seq), nil)
}

// endRun is called before an entry that is not a run member is appended:
// the run holding the user's last entry ends there. The caller settled it
// (settleRun) and wrote the meta.
func (t *Txn) endRun(r *recipient, app, user string) error {
	run, err := t.openRunOf(r, app, user)
	if err != nil || !run.ok {
		return err
	}
	if err := t.leaveRunSet(r, app, user); err != nil {
		return err
	}
	run.ok = false
	return t.del(runOpenKey(app, user))
}

// trimRun trims the run h at seq first of user from its front: its members
// below m.FirstSeq, and older than cutoff while n (the age trims so far)
// is below maxAgeTrimPerApply. The run's members end before the user's
// next key, or at m.LastSeq-1 (trim runs before the new entry is written).
// It returns the members trimmed and whether it stopped inside the run (the
// member kept is the oldest entry).
func (s *Store) trimRun(t *Txn, rc *recipient, app, user string, first uint64, h *entryHead, m *pb.TimelineMeta, cutoff int64, n *int, refs *bodyRefs) (uint64, bool, error) {
	conv := string(h.conv)
	k, stopped := uint64(0), false
	for ; first+k < m.LastSeq; k++ {
		seq := first + k
		if k > 0 {
			_, next, err := t.raw(timelineKey(app, user, seq))
			if err != nil {
				return 0, false, err
			}
			if next {
				break // the run ended at seq-1
			}
		}
		iv, ok, err := t.raw(runIndexKey(app, h.chatType, conv, h.runPart, h.runOrd+k))
		if err != nil {
			return 0, false, err
		}
		if !ok {
			return 0, false, fmt.Errorf("projections: run of %s/%s at %d: index entry %d missing", app, user, first, h.runOrd+k)
		}
		e, err := parseEntry(iv)
		if err != nil {
			return 0, false, err
		}
		if seq >= m.FirstSeq {
			if e.time >= cutoff || *n >= maxAgeTrimPerApply {
				m.FirstTimeUnixMs, stopped = e.time, true
				break
			}
			*n++ // an age trim
		}
		if err := refs.release(t, app, e.id, e.bodyPart); err != nil {
			return 0, false, err
		}
	}
	if k == 0 {
		return 0, stopped, nil
	}
	if err := t.del(timelineKey(app, user, first)); err != nil {
		return 0, false, err
	}
	if err := t.deleteBlind(historyKey(app, user, h.chatType, conv, first)); err != nil {
		return 0, false, err
	}
	pk := runOpenKey(app, user)
	pv, ok, err := t.raw(pk)
	if err != nil {
		return 0, false, err
	}
	named := ok && len(pv) >= 8 && binary.BigEndian.Uint64(pv) == first
	if !stopped { // the whole run
		if named {
			// It stops being the open run: its conversation is written
			// as of the last entry before the one being applied (trim
			// runs after the meta counted it), while its index entries
			// are still there (released references go at the event's end).
			rc.runLoaded = false
			if err := t.settleRun(rc, app, user, m.LastSeq-1); err != nil {
				return 0, false, err
			}
			if err := t.leaveRunSet(rc, app, user); err != nil {
				return 0, false, err
			}
			rc.runLoaded = false
			err = t.del(pk)
		}
		return k, false, err
	}
	rest := first + k
	if err := t.set(timelineKey(app, user, rest), appendRunValue(nil, h.runPart, h.chatType, conv, h.runOrd+k)); err != nil {
		return 0, false, err
	}
	if err := t.setBlind(historyKey(app, user, h.chatType, conv, rest), nil); err != nil {
		return 0, false, err
	}
	if named {
		err = t.set(pk, runPointer(rest, h.runPart, h.chatType, conv, h.runOrd+k, pv[len(pv)-1] == runDerivedMark))
	}
	return k, true, err
}

// runIndexReader reads the index entries runs stand for, from one view:
// the members of a run are consecutive keys, read with one seek and nexts.
type runIndexReader struct {
	snap *pebble.Snapshot
	app  string
	it   *pebble.Iterator
	key  []byte
}

// value returns the index entry of member i of run h. Valid until the
// next call.
func (x *runIndexReader) value(h *entryHead, i uint64) ([]byte, error) {
	x.key = appendRunCounterKey(x.key[:0], x.app, h.chatType, h.conv, h.runPart)
	x.key = binary.BigEndian.AppendUint64(x.key, h.runOrd+i)
	if x.it == nil {
		it, err := x.snap.NewIter(&pebble.IterOptions{LowerBound: []byte{tagRunIndex, 0}, UpperBound: []byte{tagRunIndex, 1}})
		if err != nil {
			return nil, err
		}
		x.it = it
	}
	if !(x.it.Valid() && x.it.Next() && bytes.Equal(x.it.Key(), x.key)) {
		if !x.it.SeekGE(x.key) || !bytes.Equal(x.it.Key(), x.key) {
			if err := x.it.Error(); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("projections: run index entry %q missing", x.key)
		}
	}
	return x.it.Value(), nil
}

func (x *runIndexReader) close() error {
	if x.it == nil {
		return nil
	}
	return x.it.Close()
}

// The meta off the write path (docs/design-notes.md, "The meta off the
// write path"). A derived run (openRun.derived) is in the set of open runs
// of its conversation on its partition (o 0 <app> 0 <ct><conv> 0 <p:4>
// <user>, counted in the counter's value after the ordinal), and every run
// in the set reaches the index head: each index entry is either a member
// of every run in the set (the member extended it, or started a run at
// it), or the run was ended. A member a partition copy skips (not a
// recipient, or a recipient whose delivery writes no entry) is ended at the
// event's end (endSkipped): its meta and conversation written, its pointer
// deleted. So while a derived run is open, the user's last seq is the
// run's first seq plus the index entries after the run's first, up to the
// head, and an entry that extends it writes nothing, not even the meta.
// The stored meta is as of the run's start or later (it is written with
// every entry that does not extend a run, and when anything but the last
// seq changes); readers (readMeta) and the projector (metaOf) derive the
// last seq from the pointer and the counter.

// tagRunSet is the table of open runs per conversation and partition.
const tagRunSet = 'o'

// derivedRunsOn: new runs are derived runs. A constant of the code; tests
// switch it off to write runs as the build before it did (no mark, no set,
// the meta written per entry), to read such a store with this code.
var derivedRunsOn = true

func runSetPrefix(app string, ct int32, conv string, p int32) []byte {
	return appendConvPartKey(make([]byte, 0, 2+len(app)+1+1+len(conv)+1+4+16), tagRunSet, app, ct, conv, p)
}

func runSetKey(app string, ct int32, conv string, p int32, user string) []byte {
	return append(runSetPrefix(app, ct, conv, p), user...)
}

// counterValue is a run index counter's value: the last ordinal, then the
// number of open runs in the set when there are any (a counter written
// before the set existed holds the ordinal only).
func counterValue(ord, open uint64) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 16), ord)
	if open > 0 {
		b = binary.BigEndian.AppendUint64(b, open)
	}
	return b
}

func parseCounter(v []byte) (ord, open uint64) {
	if len(v) >= 8 {
		ord = binary.BigEndian.Uint64(v)
	}
	if len(v) >= 16 {
		open = binary.BigEndian.Uint64(v[8:])
	}
	return ord, open
}

// runCounter reads the counter at ck as of this batch.
func (t *Txn) runCounter(ck []byte) (ord, open uint64, err error) {
	v, _, err := t.raw(ck)
	if err != nil {
		return 0, 0, err
	}
	ord, open = parseCounter(v)
	return ord, open, nil
}

// joinRunSet adds user's new run on (ct, conv, p) to the set.
func (t *Txn) joinRunSet(app, user string, ct int32, conv string, p int32) error {
	ck := runCounterKey(app, ct, conv, p)
	ord, open, err := t.runCounter(ck)
	if err != nil {
		return err
	}
	if err := t.set(ck, counterValue(ord, open+1)); err != nil {
		return err
	}
	return t.set(runSetKey(app, ct, conv, p, user), []byte{}) // not nil: the overlay reads nil as deleted
}

// leaveRunSet removes r's open run from its set, when it is a derived one.
func (t *Txn) leaveRunSet(r *recipient, app, user string) error {
	run, err := t.openRunOf(r, app, user)
	if err != nil || !run.ok || !run.derived {
		return err
	}
	ck := runCounterKey(app, run.ct, run.conv, run.p)
	ord, open, err := t.runCounter(ck)
	if err != nil {
		return err
	}
	if open == 0 {
		return fmt.Errorf("projections: run of %s/%s on %q: not counted", app, user, ck)
	}
	if err := t.set(ck, counterValue(ord, open-1)); err != nil {
		return err
	}
	run.derived = false
	return t.del(runSetKey(app, run.ct, run.conv, run.p, user))
}

// metaOf returns r's timeline meta as of this batch, with the last seq of
// an open derived run: the run's first seq plus its index entries up to
// the head. An index entry the current event wrote (refs) is not yet the
// user's: the event reaches it when it extends the run. The value belongs
// to r; writeMeta stores it.
func (t *Txn) metaOf(r *recipient, app, user string, refs *bodyRefs) (*pb.TimelineMeta, error) {
	if r.meta != nil {
		return r.meta, nil
	}
	sm := r.svs[2].m.(*pb.TimelineMeta)
	m := &pb.TimelineMeta{Epoch: sm.Epoch, FirstSeq: sm.FirstSeq, LastSeq: sm.LastSeq, FirstTimeUnixMs: sm.FirstTimeUnixMs}
	run, err := t.openRunOf(r, app, user)
	if err != nil {
		return nil, err
	}
	if run.ok && run.derived {
		ck := runCounterKey(app, run.ct, run.conv, run.p)
		head, _, err := t.runCounter(ck)
		if err != nil {
			return nil, err
		}
		if x := refs.last; x != nil && x.idxNew && bytes.Equal(x.idx[:len(x.idx)-8], ck) {
			head-- // this event's: the members it reaches are counted as they extend
		}
		if head < run.ord || run.start+(head-run.ord) < sm.LastSeq {
			return nil, fmt.Errorf("projections: run of %s/%s at %d (ord %d): head %d behind the stored last seq %d", app, user, run.start, run.ord, head, sm.LastSeq)
		}
		m.LastSeq = run.start + (head - run.ord)
	}
	r.meta = m
	return m, nil
}

// writeMeta stores r's meta (metaOf) in the batch.
func (t *Txn) writeMeta(r *recipient) error {
	sm := r.svs[2].m.(*pb.TimelineMeta)
	sm.Epoch, sm.FirstSeq, sm.LastSeq, sm.FirstTimeUnixMs = r.meta.Epoch, r.meta.FirstSeq, r.meta.LastSeq, r.meta.FirstTimeUnixMs
	return t.changed(r.keys[2], r.svs[2])
}

// endSkipped ends, at the end of the event that wrote index entry x, the
// open runs of x's conversation on its partition that do not reach it (a
// member the partition copy did not name, or whose delivery wrote no
// entry): each such user's conversation and meta are written as of its
// last entry and its pointer deleted, so its last seq is stored again.
// The usual case, every run in the set reached x, reads only the counter.
func (t *Txn) endSkipped(x *bodyRef, refs *bodyRefs) error {
	ck := x.idx[:len(x.idx)-8]
	_, open, err := t.runCounter(ck)
	if err != nil {
		return err
	}
	if open == uint64(len(x.reached)) {
		return nil
	}
	if open < uint64(len(x.reached)) {
		return fmt.Errorf("projections: %d runs reached %q, %d open", len(x.reached), x.idx, open)
	}
	reached := make(map[string]bool, len(x.reached))
	for _, u := range x.reached {
		reached[u] = true
	}
	users, err := t.runSet(runSetPrefix(x.app, x.ct, x.conv, x.p))
	if err != nil {
		return err
	}
	for _, u := range users {
		if reached[u] {
			continue
		}
		r, err := t.recipientOf(x.app, u)
		if err != nil {
			return err
		}
		m, err := t.metaOf(r, x.app, u, refs)
		if err != nil {
			return err
		}
		if err := t.settleRun(r, x.app, u, m.LastSeq); err != nil {
			return err
		}
		if err := t.writeMeta(r); err != nil {
			return err
		}
		if err := t.endRun(r, x.app, u); err != nil {
			return err
		}
	}
	return nil
}

// runSet lists the users of the set at prefix as of this batch: the
// committed keys and the batch's own (the overlay: nil is a delete).
func (t *Txn) runSet(prefix []byte) ([]string, error) {
	in := map[string]bool{}
	it, err := t.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return nil, err
	}
	for it.First(); it.Valid(); it.Next() {
		in[string(it.Key()[len(prefix):])] = true
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	for k, v := range t.overlay {
		if strings.HasPrefix(k, string(prefix)) {
			in[k[len(prefix):]] = v != nil
		}
	}
	var out []string
	for u, ok := range in {
		if ok {
			out = append(out, u)
		}
	}
	slices.Sort(out) // a fixed order: the batch's writes do not depend on map order
	return out, nil
}

// readMeta reads user's timeline meta in view g, with the last seq of an
// open derived run (metaOf's rule, for readers: a view holds whole events).
func readMeta(g getter, app, user string) (*pb.TimelineMeta, openRun, error) {
	meta := &pb.TimelineMeta{}
	if _, err := getProto(g, metaKey(app, user), meta); err != nil {
		return nil, openRun{}, err
	}
	pv, ok, err := getRaw(g, runOpenKey(app, user))
	if err != nil || !ok {
		return meta, openRun{}, err
	}
	run, err := parseRunPointer(pv)
	if err != nil {
		return nil, openRun{}, fmt.Errorf("projections: run pointer of %s/%s: %w", app, user, err)
	}
	if run.derived {
		cv, _, err := getRaw(g, runCounterKey(app, run.ct, run.conv, run.p))
		if err != nil {
			return nil, openRun{}, err
		}
		head, _ := parseCounter(cv)
		if head < run.ord {
			return nil, openRun{}, fmt.Errorf("projections: run of %s/%s at %d: ord %d past the head %d", app, user, run.start, run.ord, head)
		}
		meta.LastSeq = run.start + (head - run.ord)
	}
	return meta, run, nil
}

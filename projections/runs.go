package projections

import (
	"bytes"
	"encoding/binary"
	"fmt"

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
// member's timeline holds runs (format 4 at t…<s>): "seqs s .. s+n-1 are
// the index entries ord .. ord+n-1 of conversation C on partition p". A
// member's new entry extends its newest run when that run ends at the
// member's previous seq and the entry is the next index entry of the same
// conversation and partition (the member received every message between);
// otherwise it starts a run. The rule reads only state the log built, so
// every batching of a history writes the same bytes.
//
// A member's writes per batch are then its run (rewritten in place), meta
// and conversation, once each, whatever the number of messages; the history
// index (h) is written once per run, at its first seq; r 0 <app> 0 <user>
// names the first seq of the user's newest run, so the next message finds
// it, and is written once per run.
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
// its new first seq, with its history key and the newest-run pointer).

// runsOn: entries of messages to many are stored in runs. A constant of
// the code; tests switch it off to compare with the per-entry layout.
var runsOn = true

// openRun is a user's newest run as of the batch; n == 0: none.
type openRun struct {
	start, ord, n uint64
	p, ct         int32
	conv          string
}

// openRunOf returns r's newest run, read once per batch (and again after
// trim moved or dropped it).
func (t *Txn) openRunOf(r *recipient, app, user string) (*openRun, error) {
	if r.runLoaded {
		return &r.run, nil
	}
	r.run, r.runLoaded = openRun{}, true
	v, ok, err := t.raw(runOpenKey(app, user))
	if err != nil || !ok {
		return &r.run, err
	}
	if len(v) != 8 {
		return nil, fmt.Errorf("projections: run pointer of %s/%s: %x", app, user, v)
	}
	start := binary.BigEndian.Uint64(v)
	rv, ok, err := t.raw(timelineKey(app, user, start))
	if err != nil || !ok {
		return &r.run, err // trimmed
	}
	h, err := parseEntry(rv)
	if err != nil {
		return nil, err
	}
	if h.run {
		r.run = openRun{start: start, ord: h.runOrd, n: h.runLen, p: h.runPart, ct: h.chatType, conv: string(h.conv)}
	}
	return &r.run, nil
}

// runIndex returns the ordinal of x's body's index entry, writing the entry
// (value v, the member's format-3 value) the first time a member needs it;
// ok is false when v is not the entry's value (the member's entry differs
// from the others': stored as its own format-3 value).
func (x *bodyRef) runIndex(t *Txn, app string, ct int32, conv string, p int32, v []byte) (uint64, bool, error) {
	if x.idx == nil {
		ck := runCounterKey(app, ct, conv, p)
		cv, ok, err := t.raw(ck)
		if err != nil {
			return 0, false, err
		}
		var ord uint64 = 1
		if ok && len(cv) == 8 {
			ord = binary.BigEndian.Uint64(cv) + 1
		}
		if err := t.set(ck, binary.BigEndian.AppendUint64(nil, ord)); err != nil {
			return 0, false, err
		}
		x.idx, x.tmpl, x.idxNew = binary.BigEndian.AppendUint64(ck, ord), v, true
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

// appendRun stores entry e of user (value v, format 3, referencing body x
// on partition p) in a run, extending the user's newest run when the rule
// allows. ok is false when e is not a run member: the caller stores v.
func (s *Store) appendRun(t *Txn, r *recipient, app, user string, p int32, e *pb.TimelineEntry, x *bodyRef, v []byte) (bool, error) {
	ct, conv := int32(e.ChatType), e.ConversationId
	ord, ok, err := x.runIndex(t, app, ct, conv, p, v)
	if err != nil || !ok {
		return false, err
	}
	run, err := t.openRunOf(r, app, user)
	if err != nil {
		return false, err
	}
	if run.n > 0 && run.start+run.n == e.Seq && run.ord+run.n == ord && run.p == p && run.ct == ct && run.conv == conv {
		run.n++
		return true, t.set(timelineKey(app, user, run.start), encodeRun(p, ct, conv, run.ord, run.n))
	}
	*run = openRun{start: e.Seq, ord: ord, n: 1, p: p, ct: ct, conv: conv}
	if err := t.set(timelineKey(app, user, e.Seq), encodeRun(p, ct, conv, ord, 1)); err != nil {
		return false, err
	}
	if err := t.set(runOpenKey(app, user), binary.BigEndian.AppendUint64(nil, e.Seq)); err != nil {
		return false, err
	}
	return true, t.setBlind(historyKey(app, user, ct, conv, e.Seq), nil)
}

// trimRun trims the run h at seq first of user from its front: its members
// below m.FirstSeq, and older than cutoff while n (the age trims so far)
// is below maxAgeTrimPerApply. It returns the members trimmed and whether
// it stopped inside the run (the member kept is the oldest entry).
func (s *Store) trimRun(t *Txn, app, user string, first uint64, h *entryHead, m *pb.TimelineMeta, cutoff int64, n *int, refs *bodyRefs) (uint64, bool, error) {
	conv := string(h.conv)
	k, stopped := uint64(0), false
	for ; k < h.runLen; k++ {
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
		if seq := first + k; seq >= m.FirstSeq {
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
	if k == h.runLen {
		return k, stopped, nil // the pointer, if it names this run, names nothing now
	}
	rest := first + k
	if err := t.set(timelineKey(app, user, rest), encodeRun(h.runPart, h.chatType, conv, h.runOrd+k, h.runLen-k)); err != nil {
		return 0, false, err
	}
	if err := t.setBlind(historyKey(app, user, h.chatType, conv, rest), nil); err != nil {
		return 0, false, err
	}
	pk := runOpenKey(app, user)
	pv, ok, err := t.raw(pk)
	if err != nil {
		return 0, false, err
	}
	if ok && len(pv) == 8 && binary.BigEndian.Uint64(pv) == first {
		err = t.set(pk, binary.BigEndian.AppendUint64(nil, rest))
	}
	return k, stopped, err
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
	x.key = x.key[:0]
	x.key = append(x.key, tagRunIndex, 0)
	x.key = append(x.key, x.app...)
	x.key = append(x.key, 0, byte(h.chatType))
	x.key = append(x.key, h.conv...)
	x.key = append(x.key, 0)
	x.key = binary.BigEndian.AppendUint32(x.key, uint32(h.runPart))
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

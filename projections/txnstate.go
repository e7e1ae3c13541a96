package projections

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// Decoded user state in the batch (issue 13, group fan-out).
//
// A burst to a group applies ~20 messages per batch to each member: each
// reads and writes the member's timeline meta and conversation, and reads
// its contacts and groups. Decoding and encoding them per message was most
// of the per-member cost, and writing them per message most of the
// batch's memtable inserts. So the Txn keeps the values of these tables
// (stateTable) decoded, once per batch: a delivery changes the decoded
// value in place (engine.ApplyDeliveryInPlace) and marks it dirty, and
// flushState encodes and writes each dirty value once, in key order,
// before the checkpoint. The last write of a key in a batch is what Pebble
// keeps, and the value written is the one the last change left, encoded
// deterministically (engine.EncodeState), so the state is byte for byte
// what writing after every message gave (TestBatchedStateSameBytes).
//
// Reads see the batch's changes: a read of a dirty key's bytes (Txn.raw:
// a LOGIN opening a timeline, a contact operation reading its actor's
// contacts) first writes the decoded value out. A write of the bytes
// (set, del) drops the decoded value.
//
// A decoded value belongs to the batch, which mutates it. After the batch
// commits, the values go to the partition's hot cache with their bytes
// (keepHot), and the next batch takes them back (hotCache.take): moved,
// not shared, so a batch that fails leaves the cache with the committed
// bytes and without a decoded form it may have changed.

// stateTable reports the tables whose values a Txn keeps decoded for the
// batch: a recipient's timeline meta, contacts, groups and conversations.
func stateTable(tag byte) bool {
	switch tag {
	case tagMeta, tagContacts, tagUserGroups, tagConv:
		return true
	}
	return false
}

// stateVal is one decoded value of a stateTable key, as of this batch.
type stateVal struct {
	m proto.Message // the value; an empty message when absent
	// present: a value was stored (not empty) when the batch first read
	// the key, or the batch changed it since; a caller writes a value
	// that is not present even when unchanged.
	present bool
	dirty   bool // changed since last written: flushState writes it
	queued  bool // in Txn.dirty
}

// stateOf returns k's value as of this batch, decoded into fresh() at
// most once per batch. The value belongs to the batch: a caller that
// changes it calls t.changed(k, sv) before the batch reads k again.
func (t *Txn) stateOf(k []byte, fresh func() proto.Message) (*stateVal, error) {
	if sv := t.state[string(k)]; sv != nil {
		return sv, nil
	}
	if _, seen := t.overlay[string(k)]; !seen && t.hot != nil {
		if e, hv := t.hot.take(string(k)); e != nil {
			t.overlay[e.k] = hv.b
			if hv.m != nil {
				sv := &stateVal{m: hv.m, present: true}
				t.state[e.k] = sv
				return sv, nil
			}
		}
	}
	m := fresh()
	ok, err := t.decodeRaw(k, m)
	if err != nil {
		return nil, err
	}
	sv := &stateVal{m: m, present: ok}
	t.state[string(k)] = sv
	return sv, nil
}

// peekState returns k's value as of this batch, decoded, for a caller
// that only reads it, at once (a login's check that its user's timeline
// is open): unlike stateOf, it takes nothing from the hot cache. A
// committed value is decoded at most once while cached: the decoded form
// is left on its entry, where the next batch's stateOf takes it (it is
// the committed value decoded, so a batch that fails leaves it true).
func (t *Txn) peekState(k []byte, fresh func() proto.Message) (proto.Message, error) {
	if sv := t.state[string(k)]; sv != nil {
		return sv.m, nil
	}
	if _, written := t.overlay[string(k)]; !written && t.hot != nil {
		if e := t.hot.entry(string(k)); e != nil {
			if e.m == nil {
				m := fresh()
				if err := proto.Unmarshal(e.b, m); err != nil {
					return nil, fmt.Errorf("projections: decode %q: %w", k, err)
				}
				e.m = m
			}
			return e.m, nil
		}
	}
	m := fresh()
	if _, err := t.decodeRaw(k, m); err != nil {
		return nil, err
	}
	return m, nil
}

// decodeRaw decodes k's value as of this batch (t.raw) into m, leaving m
// as it is when k is absent; ok reports whether it was present.
func (t *Txn) decodeRaw(k []byte, m proto.Message) (ok bool, err error) {
	v, ok, err := t.raw(k)
	if err != nil || !ok {
		return false, err
	}
	if err := proto.Unmarshal(v, m); err != nil {
		return false, fmt.Errorf("projections: decode %q: %w", k, err)
	}
	return true, nil
}

// recipient is one user's decoded state in the batch as deliveries use
// it: found once per batch (or again after a write of its bytes), not
// per delivery, with its keys built once.
type recipient struct {
	gen  uint64       // Txn.stateGen when found
	keys [3][]byte    // contacts, user groups, timeline meta
	svs  [3]*stateVal // their values; contacts and groups once a delivery needs them (userTable)
	// the conversation the last delivery belonged to
	convType int32
	convID   string
	convKey  []byte
	conv     *stateVal
	// the user's newest run (runs.go), once loaded
	run       openRun
	runLoaded bool
	// meta is the timeline meta as of this batch with the derived last
	// seq (runs.go, metaOf), once loaded; written by writeMeta.
	meta *pb.TimelineMeta
}

type userID struct{ app, user string }

// recipientOf returns user's timeline meta as of this batch (stateOf);
// its contacts and groups are loaded by userTable.
func (t *Txn) recipientOf(app, user string) (*recipient, error) {
	id := userID{app, user}
	if r := t.recipients[id]; r != nil && r.gen == t.stateGen {
		return r, nil
	}
	r := &recipient{gen: t.stateGen, keys: [3][]byte{contactsKey(app, user), userGroupsKey(app, user), metaKey(app, user)}}
	sv, err := t.stateOf(r.keys[2], newMeta)
	if err != nil {
		return nil, err
	}
	r.svs[2] = sv
	if t.recipients == nil {
		t.recipients = map[userID]*recipient{}
	}
	t.recipients[id] = r
	return r, nil
}

// userTable returns r's contacts (i 0) or groups (i 1) as of this batch,
// loaded the first time a delivery reads them: a group message reads
// neither (engine.ReadsContacts, ReadsGroups), and loading them was a
// third of what finding a member cost.
func (t *Txn) userTable(r *recipient, i int) (*stateVal, error) {
	if r.svs[i] == nil {
		sv, err := t.stateOf(r.keys[i], [2]func() proto.Message{newContacts, newUserGroups}[i])
		if err != nil {
			return nil, err
		}
		r.svs[i] = sv
	}
	return r.svs[i], nil
}

// convOf returns r's conversation (ct, id) as of this batch, and its key.
func (t *Txn) convOf(r *recipient, app, user string, ct int32, id string) ([]byte, *stateVal, error) {
	if r.conv != nil && r.convType == ct && r.convID == id {
		return r.convKey, r.conv, nil
	}
	k := convKey(app, user, ct, id)
	sv, err := t.stateOf(k, newConversation)
	if err != nil {
		return nil, nil, err
	}
	r.convType, r.convID, r.convKey, r.conv = ct, id, k, sv
	return k, sv, nil
}

// changed marks sv, k's value from stateOf, as changed in this batch: it
// is written at flushState (or before a read of k's bytes).
func (t *Txn) changed(k []byte, sv *stateVal) error {
	if err := t.may(k); err != nil {
		return err
	}
	sv.dirty, sv.present = true, true
	if !sv.queued {
		sv.queued = true
		t.dirty = append(t.dirty, string(k))
	}
	return nil
}

// writeState encodes sv, k's dirty value, and writes it in the batch.
func (t *Txn) writeState(k string, sv *stateVal) error {
	v, err := engine.EncodeState(sv.m)
	if err != nil {
		return err
	}
	sv.dirty = false
	return t.write([]byte(k), v)
}

// flushState writes every dirty value, in key order: what the runner
// calls before it writes the checkpoint.
func (t *Txn) flushState() error {
	slices.Sort(t.dirty)
	for _, k := range t.dirty {
		if sv := t.state[k]; sv != nil && sv.dirty {
			if err := t.writeState(k, sv); err != nil {
				return err
			}
		}
		if sv := t.state[k]; sv != nil {
			sv.queued = false
		}
	}
	t.dirty = t.dirty[:0]
	return nil
}

// keepHot gives partition p of n's hot cache what the committed batch
// read and wrote of the keys p owns (hot.go), with their decoded forms.
// Only after Commit: the cache holds committed values.
func (t *Txn) keepHot(h *hotCache, p, n int32) {
	for k, v := range t.overlay {
		if !hotTable(k[0]) {
			continue
		}
		var m proto.Message
		if sv := t.state[k]; sv != nil && !sv.dirty {
			m = sv.m
		}
		// A cached key is owned (only owned keys are ever put): only a
		// new one needs ownsHotKey, which builds the user's stream.
		if !h.update(k, v, t.decoded[k], m) && ownsHotKey(k, p, n) {
			h.put(k, v, t.decoded[k], m)
		}
	}
}

// policyOf is app's policy as partition p applies it, as of this batch,
// decoded once per batch. The result is shared: callers must not modify
// it (engine.ApplyPolicy makes a new one).
func policyOf(t *Txn, app string, p int32) (*pb.Policy, error) {
	id := policyID{app, p}
	if pol := t.pols[id]; pol != nil {
		return pol, nil
	}
	pol := &pb.Policy{}
	ok, err := t.get(policyKey(app, p), pol)
	if err != nil {
		return nil, err
	}
	if !ok {
		pol = engine.DefaultPolicy()
	}
	if t.pols == nil {
		t.pols = map[policyID]*pb.Policy{}
	}
	t.pols[id] = pol
	return pol, nil
}

// groupOf is the group at k as of this batch, nil when there is none,
// decoded once per batch (a burst to a large group decoded its member
// list per message). The result is shared: callers must not modify it
// (engine.ApplyGroup copies what it changes).
func (t *Txn) groupOf(k []byte) (*pb.Group, error) {
	if g, ok := t.groups[string(k)]; ok {
		return g, nil
	}
	g := &pb.Group{}
	ok, err := t.get(k, g)
	if err != nil {
		return nil, err
	}
	if !ok {
		g = nil
	}
	if t.groups == nil {
		t.groups = map[string]*pb.Group{}
	}
	t.groups[string(k)] = g
	return g, nil
}

type policyID struct {
	app string
	p   int32
}

// The batch's writes reach the Pebble batch sorted by key, each key once
// (fill). A batch's memtable inserts were a fifth of a group fan-out's CPU:
// each is a skiplist search from the top, and in key order the skiplist's
// inserter starts each search where the previous one ended. Only the last
// write of a key is kept, which is what Pebble would keep of several, so
// what the batch commits is unchanged.

// txnOp is one write of the batch: a set of k to v, or a delete of k.
type txnOp struct {
	k, v []byte
	i    int32 // its place in the batch's order of writes
	del  bool
}

// setOp records a set of k to v; k and v must not change afterwards.
func (t *Txn) setOp(k, v []byte) { t.ops = append(t.ops, txnOp{k: k, v: v, i: int32(len(t.ops))}) }

// delOp records a delete of k; k must not change afterwards.
func (t *Txn) delOp(k []byte) { t.ops = append(t.ops, txnOp{k: k, i: int32(len(t.ops)), del: true}) }

// fill writes the batch's last write of each key into the Pebble batch,
// in key order: what the runner calls once, after the checkpoint and
// before the commit.
func (t *Txn) fill() error {
	slices.SortFunc(t.ops, func(a, b txnOp) int {
		if c := bytes.Compare(a.k, b.k); c != 0 {
			return c
		}
		return int(a.i - b.i)
	})
	for i, op := range t.ops {
		if i+1 < len(t.ops) && bytes.Equal(op.k, t.ops[i+1].k) {
			continue // a later write of the same key wins
		}
		var err error
		if op.del {
			err = t.b.Delete(op.k, nil)
		} else {
			err = t.b.Set(op.k, op.v, nil)
		}
		if err != nil {
			return err
		}
	}
	t.ops = t.ops[:0]
	return nil
}

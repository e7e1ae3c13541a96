package projections

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// Bodies: a message to many stored once per partition.
//
// The entries of a group, thread or chatroom message (sharesBody) do not
// each hold the message: the partition stores its source's wire JSON once
// (b 0 <app> 0 <event id> 0 <p>) with a reference count
// (B 0 <app> 0 <event id> 0 <p>), and each member's entry (format 3,
// entries.go) names it. The count is the number of timeline entries on
// the partition that reference the body: +1 for each entry written, -1 for
// each entry retention trims; the body and its count go with the last
// reference. So a body lives exactly as long as an entry can be read
// through it, and the table is a function of the log like the entries it
// counts (invariant 2). Removal of roaming messages deletes no entry (it
// moves the conversation's cleared_seq), so it keeps the bodies of the
// entries it hides.
//
// Catch-up resolves a reference with one point read, or none: the bodies
// read last are kept in memory (bodyCache), and the members of a group
// catching up read the same ones.
//
// A body is per partition, not per node: the partitions of one node apply
// in parallel, each in its own batch, so a count shared between two of them
// would be a read-modify-write race; and a partition moved to another node
// brings its bodies along by replaying its own log.

// bodyRefs collects one event's changes to reference counts, so the
// members of a partition copy read and write each count once, not once
// per member. Counts are written by flush, at the end of the event.
type bodyRefs struct {
	refs  map[string]*bodyRef
	order []*bodyRef // first use order: the batch's writes in a fixed order
	// the count acquire used last, and its event and partition: the
	// members of a partition copy acquire one body in a row
	last            *bodyRef
	lastApp, lastID string
	lastP           int32
	// enc encodes the event's entries that reference a body (sync.go).
	enc refEncoder
}

type bodyRef struct {
	countKey, bodyKey []byte
	cur, delta        int64
	// idx is the body's run index entry (runs.go), nil when it has none;
	// stored after the count, so the entry goes with the body. tmpl is
	// its value once read or written; idxNew: the count's value changes.
	idx, tmpl []byte
	idxNew    bool
	// The index entry's conversation and partition, and the users whose
	// derived run reached it in this event (runs.go, endSkipped).
	app     string
	ct      int32
	conv    string
	p       int32
	reached []string
}

func (r *bodyRefs) load(t *Txn, app string, id []byte, p int32) (*bodyRef, error) {
	ck := bodyKey(tagBodyRefs, app, id, p)
	if x := r.refs[string(ck)]; x != nil {
		return x, nil
	}
	v, _, err := t.raw(ck)
	if err != nil {
		return nil, err
	}
	x := &bodyRef{countKey: ck, bodyKey: bodyKey(tagBody, app, id, p)}
	if len(v) >= 8 {
		x.cur = int64(binary.BigEndian.Uint64(v))
		if len(v) > 8 {
			x.idx = v[8:len(v):len(v)]
		}
	}
	if r.refs == nil {
		r.refs = map[string]*bodyRef{}
	}
	r.refs[string(ck)] = x
	r.order = append(r.order, x)
	return x, nil
}

// acquire counts one more entry referencing the body of event id on
// partition p, and writes the body when it has no reference yet.
func (r *bodyRefs) acquire(t *Txn, app, id string, p int32, body []byte) error {
	x := r.last
	if x == nil || r.lastID != id || r.lastP != p || r.lastApp != app {
		var err error
		if x, err = r.load(t, app, []byte(id), p); err != nil {
			return err
		}
		r.last, r.lastApp, r.lastID, r.lastP = x, app, id, p
	}
	if x.cur+x.delta == 0 {
		// Nothing in the batch reads a body back: no overlay copy.
		if err := t.setBlind(x.bodyKey, body); err != nil {
			return err
		}
	}
	x.delta++
	return nil
}

// release counts one entry less referencing the body.
func (r *bodyRefs) release(t *Txn, app string, id []byte, p int32) error {
	x, err := r.load(t, app, id, p)
	if err != nil {
		return err
	}
	x.delta--
	return nil
}

// flush writes the counts the event changed; a body without references
// is deleted with its count and its run index entry.
func (r *bodyRefs) flush(t *Txn) error {
	for _, x := range r.order {
		if x.idxNew && x.idx != nil {
			if err := t.endSkipped(x, r); err != nil {
				return err
			}
		}
	}
	for _, x := range r.order {
		n := x.cur + x.delta
		switch {
		case x.delta == 0 && !x.idxNew:
		case n <= 0:
			if err := t.del(x.countKey); err != nil {
				return err
			}
			if err := t.deleteBlind(x.bodyKey); err != nil {
				return err
			}
			if x.idx != nil {
				if err := t.del(x.idx); err != nil {
					return err
				}
				x.idx, x.tmpl = nil, nil
			}
		default:
			v := make([]byte, 8, 8+len(x.idx))
			binary.BigEndian.PutUint64(v, uint64(n))
			if err := t.set(x.countKey, append(v, x.idx...)); err != nil {
				return err
			}
		}
		x.cur, x.delta, x.idxNew = n, 0, false
	}
	return nil
}

// bodyCache remembers the bodies catch-ups read last, shared by all
// reads: a group's members catching up read the same bodies. A body's key
// always holds the same bytes (the source's wire JSON; written again with
// the same bytes if its last reference went and a new one came), so a
// cached body is never stale; a reader only asks for the body of an entry
// its snapshot holds. Two generations of at most bodyCacheSize bodies.
type bodyCache struct {
	mu        sync.Mutex
	cur, prev map[string][]byte
}

const bodyCacheSize = 2048

func (c *bodyCache) get(k []byte) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.cur[string(k)]; ok {
		return v, true
	}
	v, ok := c.prev[string(k)]
	if ok {
		c.putLocked(string(k), v)
	}
	return v, ok
}

func (c *bodyCache) put(k, v []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.putLocked(string(k), v)
}

func (c *bodyCache) putLocked(k string, v []byte) {
	if len(c.cur) >= bodyCacheSize || c.cur == nil {
		c.prev, c.cur = c.cur, make(map[string][]byte, bodyCacheSize)
	}
	c.cur[k] = v
}

// bodyReader reads the entries of one user's timeline from one view g,
// resolving format-3 values to their bodies.
type bodyReader struct {
	g     getter
	app   string
	cache *bodyCache // nil: none
	key   []byte     // scratch: the body key
	json  []byte     // scratch: the last format-3 entry's JSON
	reads int        // bodies read from g (tests)
}

func newBodyReader(g getter, app string, cache *bodyCache) *bodyReader {
	return &bodyReader{g: g, app: app, cache: cache}
}

var errNoBody = errors.New("projections: an entry references a missing body")

// body returns the body of event id on partition p. The caller must not
// modify it.
func (r *bodyReader) body(p int32, id []byte) ([]byte, error) {
	r.key = r.key[:0]
	r.key = append(r.key, tagBody, 0)
	r.key = append(r.key, r.app...)
	r.key = append(r.key, 0)
	r.key = append(r.key, id...)
	r.key = append(r.key, 0)
	r.key = binary.BigEndian.AppendUint32(r.key, uint32(p))
	if r.cache != nil {
		if v, ok := r.cache.get(r.key); ok {
			return v, nil
		}
	}
	v, closer, err := r.g.Get(r.key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, fmt.Errorf("%w: %q", errNoBody, r.key)
	}
	if err != nil {
		return nil, fmt.Errorf("projections: get %q: %w", r.key, err)
	}
	r.reads++
	v = append([]byte(nil), v...)
	if err := closer.Close(); err != nil {
		return nil, fmt.Errorf("projections: get %q: %w", r.key, err)
	}
	if r.cache != nil {
		r.cache.put(r.key, v)
	}
	return v, nil
}

// entryJSON is the wire form (engine.MarshalPart) of the entry at seq
// whose value's head is h. The bytes are valid until the next call.
func (r *bodyReader) entryJSON(h *entryHead, seq uint64) ([]byte, error) {
	if !h.ref {
		return h.entryJSON()
	}
	b, err := r.body(h.bodyPart, h.id)
	if err != nil {
		return nil, err
	}
	r.json = h.refJSON(r.json[:0], seq, b)
	return r.json, nil
}

// entry decodes the entry at seq stored as v.
func (r *bodyReader) entry(v []byte, seq uint64) (*pb.TimelineEntry, error) {
	h, err := parseEntry(v)
	if err != nil {
		return nil, err
	}
	if h.proto != nil {
		e := &pb.TimelineEntry{}
		return e, proto.Unmarshal(h.proto, e)
	}
	j, err := r.entryJSON(&h, seq)
	if err != nil {
		return nil, err
	}
	return decodeEntryJSON(j)
}

// timelineLayoutKey holds the layout of the store's timeline values
// (timelineLayout). It is in the operational table: the layout of the
// bytes, not state.
var timelineLayoutKey = key(tagOperational, "layout", "timeline")

// migrateTimelines brings the timeline values to the current layout, once
// per store (then it records timelineLayout), before anything applies or
// reads: format-1 values become format 2, and the entries of messages to
// many (format 1 or 2) become references to a body stored once per
// partition, with the reference counts of every body. Each rewrite is a
// function of the value, and the counts are counted from the format-3
// values, so the result is what a rebuild from offset 0 writes and the
// digest of a migrated store equals the rebuild's. Interrupted, it starts
// over on the next open: values already rewritten are only counted, and
// the counts are written last, whole.
func migrateTimelines(db *pebble.DB, parts int32) (int, error) {
	if v, closer, err := db.Get(timelineLayoutKey); err == nil {
		done := len(v) == 1 && v[0] >= timelineLayout
		if err := closer.Close(); err != nil || done {
			return 0, err
		}
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return 0, fmt.Errorf("projections: read timeline layout: %w", err)
	}
	prefix := []byte{tagTimeline, 0}
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	n := 0
	counts := map[string]int64{} // count key → format-3 entries referencing it
	b := db.NewBatch()
	fail := func(err error) (int, error) {
		b.Close()
		return n, err
	}
	commit := func() error {
		if b.Len() < 4<<20 {
			return nil
		}
		if err := commitClose(b); err != nil {
			return err
		}
		b = db.NewBatch()
		return nil
	}
	for it.First(); it.Valid(); it.Next() {
		k, v := it.Key(), it.Value()
		if len(k) < 11 {
			return fail(fmt.Errorf("projections: migrate: timeline key %q", k))
		}
		app, user, ok := splitPair(k[2 : len(k)-9])
		if !ok {
			return fail(fmt.Errorf("projections: migrate: timeline key %q", k))
		}
		h, err := parseEntry(v)
		if err != nil {
			return fail(fmt.Errorf("projections: migrate %q: %w", k, err))
		}
		if h.run {
			// Runs are written only by code that marks the store at
			// layout 3 or later before anything applies, so a store
			// holding one is never migrated: its counts also name run
			// index entries, which this rewrite would drop.
			return fail(fmt.Errorf("projections: migrate: %q is a run in a store at an older layout", k))
		}
		if h.ref {
			counts[string(bodyKey(tagBodyRefs, app, h.id, h.bodyPart))]++
			continue
		}
		if h.proto == nil && !sharesBodyHead(&h) {
			continue // format 2, and stays so
		}
		var e *pb.TimelineEntry
		if h.proto != nil {
			e = &pb.TimelineEntry{}
			err = proto.Unmarshal(h.proto, e)
		} else {
			e, err = decodeEntryJSON(h.json)
		}
		if err != nil {
			return fail(fmt.Errorf("projections: migrate %q: %w", k, err))
		}
		nv, ok := []byte(nil), false
		if sharesBody(e.Source) {
			p := engine.PartitionFor([]byte(engine.UserStream(app, user)), parts)
			if nv, ok = encodeRefEntry(e, p); ok {
				ck := bodyKey(tagBodyRefs, app, []byte(e.EntryId), p)
				if counts[string(ck)] == 0 {
					body, err := engine.MarshalPart(e.Source)
					if err != nil {
						return fail(err)
					}
					if err := b.Set(bodyKey(tagBody, app, []byte(e.EntryId), p), body, nil); err != nil {
						return fail(err)
					}
				}
				counts[string(ck)]++
			}
		}
		if !ok {
			if h.proto == nil {
				continue // format 2 already
			}
			if nv, err = encodeEntry(e); err != nil {
				return fail(err)
			}
		}
		if err := b.Set(k, nv, nil); err != nil {
			return fail(err)
		}
		n++
		if err := commit(); err != nil {
			return n, err
		}
	}
	if err := it.Error(); err != nil {
		return fail(err)
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.Sort(keys) // map order never reaches a batch
	for _, k := range keys {
		if err := b.Set([]byte(k), binary.BigEndian.AppendUint64(nil, uint64(counts[k])), nil); err != nil {
			return fail(err)
		}
		if err := commit(); err != nil {
			return n, err
		}
	}
	if err := b.Set(timelineLayoutKey, []byte{timelineLayout}, nil); err != nil {
		return fail(err)
	}
	return n, commitClose(b)
}

// sharesBodyHead is sharesBody read from a value's head: a message whose
// entry's chat type is a group's, a thread's or a chatroom's (the entry's
// conversation is then the message's, ConversationOf).
func sharesBodyHead(h *entryHead) bool {
	if h.kind != pb.Kind_KIND_MESSAGE_SEND {
		return false
	}
	switch pb.ChatType(h.chatType) {
	case pb.ChatType_CHAT_TYPE_GROUP, pb.ChatType_CHAT_TYPE_THREAD, pb.ChatType_CHAT_TYPE_CHATROOM:
		return true
	}
	return false
}

func commitClose(b *pebble.Batch) error {
	err := b.Commit(pebble.Sync)
	if cerr := b.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("projections: migrate timelines: %w", err)
	}
	return nil
}

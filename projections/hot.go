package projections

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"math/bits"
	"strings"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// The hot state of the runner (issue 12, "state in memory, Pebble behind
// it"). Every event reads its decision key (dedup), the app's policy and,
// for most kinds, its actor's sessions; through pebble.DB.Get each read
// builds a merged iterator, and the dedup of a new operation is always a
// miss that descends every level. The runner is the only writer of these
// tables, so it can keep what it committed in memory and never invalidate
// it:
//
//   - keyFilter: a Bloom filter of every key ever written to the decision
//     table and the hot tables (hotTable), filled at open by one scan
//     and before each commit with the keys the batch writes. A key it does
//     not contain is absent, so the dedup of a new operation (the runner's,
//     and the engine's before the append, Store.Decision) and the first
//     operation of a new user read nothing; a key it may contain (a retry, a
//     deleted key, a false positive) is read as before.
//   - hotCache: per partition, the committed value (or known absence) of
//     the hot keys the partition owns (hotTable, ownsHotKey), bounded by two
//     generations of at most Options.HotKeys entries each, filled from each
//     committed batch's overlay (what it wrote, and what it read from
//     Pebble). A batch reads a cached key from the cache each time, without
//     a copy in its overlay (Txn.raw): it changes only after the commit.
//
// Neither changes what is applied: a read answered from memory returns the
// bytes Pebble holds, so the digest is the same (TestDigestGolden).

// keyFilter is a Bloom filter over byte keys, safe for concurrent use
// (partitions add their keys in parallel). It never forgets a key; past
// its sizing its false-positive rate rises, which costs reads, not
// correctness.
type keyFilter struct {
	seed  maphash.Seed
	words []atomic.Uint64
	mask  uint64 // bit count - 1 (a power of two)
}

// filterHashes is the number of bits set per key: with 16 bits per key at
// its sizing, about 0.05% false positives.
const filterHashes = 6

func newKeyFilter(keys int) *keyFilter {
	nbits := uint64(1) << bits.Len64(uint64(max(keys, 1<<20))*16-1)
	return &keyFilter{seed: maphash.MakeSeed(), words: make([]atomic.Uint64, nbits/64), mask: nbits - 1}
}

func (f *keyFilter) add(k []byte) {
	h := maphash.Bytes(f.seed, k)
	h1, h2 := h, h>>32|1
	for i := uint64(0); i < filterHashes; i++ {
		b := (h1 + i*h2) & f.mask
		f.words[b/64].Or(1 << (b % 64))
	}
}

func (f *keyFilter) mayContain(k []byte) bool {
	h := maphash.Bytes(f.seed, k)
	h1, h2 := h, h>>32|1
	for i := uint64(0); i < filterHashes; i++ {
		b := (h1 + i*h2) & f.mask
		if f.words[b/64].Load()&(1<<(b%64)) == 0 {
			return false
		}
	}
	return true
}

// filtered reports the tables whose keys the key filter holds.
func filtered(tag byte) bool { return tag == tagDecision || hotTable(tag) }

// loadKeyFilter scans the filtered tables of db into a new filter.
func loadKeyFilter(db *pebble.DB) (*keyFilter, error) {
	var keys [][]byte
	for _, tag := range append([]byte{tagDecision}, hotTables...) {
		prefix := []byte{tag, 0}
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
		if err != nil {
			return nil, fmt.Errorf("projections: scan %q: %w", tag, err)
		}
		for it.First(); it.Valid(); it.Next() {
			keys = append(keys, bytes.Clone(it.Key()))
		}
		if err := it.Error(); err != nil {
			it.Close()
			return nil, fmt.Errorf("projections: scan %q: %w", tag, err)
		}
		if err := it.Close(); err != nil {
			return nil, fmt.Errorf("projections: scan %q: %w", tag, err)
		}
	}
	f := newKeyFilter(2 * len(keys))
	for _, k := range keys {
		f.add(k)
	}
	return f, nil
}

// DefaultHotKeys is the default of Options.HotKeys.
const DefaultHotKeys = 1 << 15

// hotCache is one partition's committed values of its hot keys, used
// only by the partition's applier (under its apply lock). A nil value is a
// key known to be absent. A sessions value may come with its decoded form
// (Txn.sessionsOf), so a user's next operation does not decode it again;
// decoded sessions are shared and never modified (engine.ApplySession and
// EnforcePolicy clone what they change). A value of a table a batch keeps
// decoded (stateTable) may come with its decoded form too, which a batch
// takes (take) and owns: it is never shared.
//
// One map of entries stamped with the generation that last used them: a
// key used in the current generation is young, in the one before old, and
// older ones are gone (swept when a generation turns, after max keys were
// first used in it). That is the two-generation cache it replaces, key for
// key, without the delete and insert that moved an old key into the young
// map, and an update of a cached key (keepHot, every batch) changes its
// entry in place instead of assigning a map slot. The entry holds its key,
// so a batch that brings a value into its overlay reuses the string.
type hotCache struct {
	m     map[string]*hotEntry
	max   int
	gen   uint32 // the current generation
	fresh int    // keys first used in gen
}

type hotVal struct {
	b []byte
	s *pb.UserSessions // b decoded (sessions), or nil
	m proto.Message    // b decoded (stateTable), or nil
}

type hotEntry struct {
	hotVal
	k   string
	gen uint32 // the generation that last used it
}

func newHotCache(max int) *hotCache {
	return &hotCache{m: map[string]*hotEntry{}, max: max, gen: 1}
}

// use stamps e with the current generation, turning it first when max
// keys were already first used in it.
func (h *hotCache) use(e *hotEntry) {
	if e.gen == h.gen {
		return
	}
	if h.fresh >= h.max {
		h.gen++
		h.fresh = 0
		for k, o := range h.m {
			if o.gen+1 < h.gen && o != e { // e is used now: it stays
				delete(h.m, k)
			}
		}
	}
	e.gen = h.gen
	h.fresh++
}

// entry is k's entry, used, or nil when k is not cached.
func (h *hotCache) entry(k string) *hotEntry {
	e := h.m[k]
	if e != nil {
		h.use(e)
	}
	return e
}

func (h *hotCache) get(k string) (hotVal, bool) {
	if e := h.entry(k); e != nil {
		return e.hotVal, true
	}
	return hotVal{}, false
}

// take is get for a caller that takes the decoded form m away: the cache
// keeps the bytes without it, so a batch that changes m and then fails
// leaves the cache as committed. It returns the entry, whose key the
// caller may reuse.
func (h *hotCache) take(k string) (*hotEntry, hotVal) {
	e := h.entry(k)
	if e == nil {
		return nil, hotVal{}
	}
	v := e.hotVal
	e.m = nil
	return e, v
}

// update sets k's value when k is cached; false when it is not.
func (h *hotCache) update(k string, v []byte, s *pb.UserSessions, m proto.Message) bool {
	e := h.m[k]
	if e == nil {
		return false
	}
	e.hotVal = hotValOf(v, s, m)
	h.use(e)
	return true
}

func (h *hotCache) put(k string, v []byte, s *pb.UserSessions, m proto.Message) {
	if h.update(k, v, s, m) {
		return
	}
	e := &hotEntry{hotVal: hotValOf(v, s, m), k: k}
	h.use(e)
	h.m[k] = e
}

// each calls f for every cached key (tests).
func (h *hotCache) each(f func(k string, v hotVal)) {
	for k, e := range h.m {
		f(k, e.hotVal)
	}
}

func hotValOf(v []byte, s *pb.UserSessions, m proto.Message) hotVal {
	if len(v) == 0 {
		return hotVal{} // as a later batch reads it from Pebble (Txn.raw)
	}
	return hotVal{b: v, s: s, m: m}
}

// userHotTables are the hot tables whose keys name a user after the app:
// what every event reads of its actor (sessions) and what every copy
// applied to a recipient reads (applyDelivery: timeline meta, contacts,
// the user's groups, the conversation, the open run). hotTables adds the
// policy. They are listed once: the key filter's scan (loadKeyFilter),
// hotTable and ownsHotKey all read these, so a table added here is
// scanned, cached and owned alike (a table cached but not scanned would
// have the filter deny its keys after a reopen).
var (
	userHotTables    = []byte{tagSessions, tagMeta, tagContacts, tagUserGroups, tagConv, tagRunOpen}
	hotTables        = append([]byte{tagPolicy}, userHotTables...)
	isHot, isUserHot [256]bool
)

func init() {
	for _, t := range hotTables {
		isHot[t] = true
	}
	for _, t := range userHotTables {
		isUserHot[t] = true
	}
}

// hotTable reports the tables whose keys the hot cache may hold.
func hotTable(tag byte) bool { return isHot[tag] }

// ownsHotKey reports whether partition p of n is the one writer of k, a
// key of a hot table: a policy key names its partition; a sessions,
// timeline-meta, contacts, user-groups or conversation key names its user
// (after the app), whose stream's partition writes it (invariant 4): the
// user's own operations are on its stream, and a copy for a user on
// another partition is relayed there as a DELIVER, applied only by the
// recipient's partition (Store.route, decideSync). A group's state (the G
// table, written by the group's partition) is not cached. Only owned keys
// are cached: another partition's could change behind the cache.
func ownsHotKey(k string, p, n int32) bool {
	switch {
	case k[0] == tagPolicy:
		return len(k) >= 4 && int32(binary.BigEndian.Uint32([]byte(k[len(k)-4:]))) == p
	case isUserHot[k[0]]:
		app, rest, ok := strings.Cut(k[2:], "\x00")
		if !ok {
			return false
		}
		user, _, _ := strings.Cut(rest, "\x00") // a conversation key goes on after the user
		return engine.PartitionFor([]byte(engine.UserStream(app, user)), n) == p
	}
	return false
}

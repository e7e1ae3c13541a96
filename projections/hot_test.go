package projections

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections/storetest"
)

// The hot state changes no byte of what is applied: a store with the cache
// and the key filter (reopened halfway, so the filter is loaded from
// disk and retries of operations decided before the reopen are caught)
// reaches the digest of a store that reads everything from Pebble. A tiny
// cache exercises the generation turnover.
func TestHotStateIsTransparent(t *testing.T) {
	const parts = 3
	hist := storetest.History(parts, 20_000, 21)
	digest := func(hot int, reopen bool) string {
		fs := vfs.NewMem()
		open := func() *Store {
			s, err := Open(Options{Dir: "s", FS: fs, Partitions: parts, HotKeys: hot})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		s := open()
		for p, es := range hist {
			for i := 0; i < len(es); i += 97 {
				if reopen && i >= len(es)/2 && i < len(es)/2+97 {
					s.Close()
					s = open()
				}
				if err := s.Apply(int32(p), es[i:min(i+97, len(es))]); err != nil {
					t.Fatal(err)
				}
			}
		}
		defer s.Close()
		d, err := s.Digest()
		if err != nil {
			t.Fatal(err)
		}
		var dups uint64
		for p := range int32(parts) {
			dups += s.Checkpoint(p).Duplicates
		}
		if dups == 0 {
			t.Fatal("the history retries nothing: the dedup is not exercised")
		}
		return d
	}
	want := digest(-1, false)
	for _, c := range []struct {
		hot    int
		reopen bool
	}{{0, false}, {0, true}, {16, true}} {
		if got := digest(c.hot, c.reopen); got != want {
			t.Errorf("HotKeys %d, reopen %v: digest %s, want %s (no hot state)", c.hot, c.reopen, got, want)
		}
	}
}

func TestKeyFilter(t *testing.T) {
	f := newKeyFilter(0)
	for i := range 10_000 {
		f.add(decisionKey("s", "u", string(rune(i))))
	}
	for i := range 10_000 {
		if !f.mayContain(decisionKey("s", "u", string(rune(i)))) {
			t.Fatalf("key %d added and not contained", i)
		}
	}
	fp := 0
	for i := range 100_000 {
		if f.mayContain(decisionKey("s", "v", string(rune(i)))) {
			fp++
		}
	}
	if fp > 100 {
		t.Fatalf("%d false positives in 100,000", fp)
	}
}

// Store.Decision answers "absent" from the key filter without reading
// Pebble, so the filter must hold a decision key by the time Pebble shows
// it (a commit is visible before Commit returns): a reader racing the
// runner never finds a decision in Pebble that Store.Decision denies. A
// retry after a reopen (the filter loaded from disk) finds its decision.
func TestDecisionFilterNeverHidesCommitted(t *testing.T) {
	fs := vfs.NewMem()
	s, err := Open(Options{Dir: "s", FS: fs, Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	const n = 3000
	login := func(i int) *pb.Event {
		u := fmt.Sprint("u", i)
		return &pb.Event{SchemaVersion: engine.SchemaVersion, App: "app", ClientOpId: fmt.Sprint("op", i), Kind: pb.Kind_KIND_LOGIN,
			StreamKey: engine.UserStream("app", u), Actor: &pb.Actor{User: u}, TimeUnixMs: int64(1000 + i),
			Payload: &pb.Event_Login{Login: &pb.Login{Platform: 1, LoginId: fmt.Sprint("d", i)}}}
	}
	var started atomic.Int64
	started.Store(-1)
	done := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		defer close(errc)
		seen := 0
		for {
			select {
			case <-done:
				if seen == 0 {
					errc <- fmt.Errorf("the reader never saw a decision in Pebble: the race is not exercised")
				}
				return
			default:
			}
			i := int(started.Load())
			if i < 0 {
				continue
			}
			ev := login(i)
			_, closer, err := s.db.Get(decisionKey(ev.StreamKey, ev.Actor.User, ev.ClientOpId))
			if err != nil {
				continue // not committed yet
			}
			closer.Close()
			seen++
			if _, ok, err := s.Decision(ev.App, ev.StreamKey, ev.Actor.User, ev.ClientOpId); err != nil || !ok {
				errc <- fmt.Errorf("op %d: decision in Pebble, Store.Decision says %v, %v", i, ok, err)
				return
			}
		}
	}()
	for i := range n {
		b, err := engine.Encode(login(i))
		if err != nil {
			t.Fatal(err)
		}
		started.Store(int64(i))
		if err := s.Apply(0, []engine.Entry{{Partition: 0, Offset: int64(i), Value: b}}); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = Open(Options{Dir: "s", FS: fs, Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range n {
		ev := login(i)
		if _, ok, err := s.Decision(ev.App, ev.StreamKey, ev.Actor.User, ev.ClientOpId); err != nil || !ok {
			t.Fatalf("after reopen, op %d: %v, %v", i, ok, err)
		}
	}
	ev := login(n)
	if _, ok, err := s.Decision(ev.App, ev.StreamKey, ev.Actor.User, ev.ClientOpId); err != nil || ok {
		t.Fatalf("an op never applied: %v, %v", ok, err)
	}
}

// Each per-user hot key is owned by exactly one partition, its user's
// (the partition that writes it); a group's state is never cached.
func TestOwnsHotKey(t *testing.T) {
	const n = 7
	for i := range 50 {
		u := fmt.Sprint("user", i)
		want := engine.PartitionFor([]byte(engine.UserStream("app", u)), n)
		for _, k := range [][]byte{sessionsKey("app", u), metaKey("app", u), contactsKey("app", u), userGroupsKey("app", u),
			convKey("app", u, int32(pb.ChatType_CHAT_TYPE_USER), "peer"), convKey("app", u, int32(pb.ChatType_CHAT_TYPE_GROUP), "g")} {
			if !hotTable(k[0]) {
				t.Fatalf("%q: not a hot table", k)
			}
			for p := range int32(n) {
				if got := ownsHotKey(string(k), p, n); got != (p == want) {
					t.Fatalf("%q: owned by %d is %v; the user's partition is %d", k, p, got, want)
				}
			}
		}
	}
	if hotTable(groupKey("app", "g")[0]) || hotTable(roomKey("app", "r")[0]) {
		t.Fatal("a group's or a room's state is cached: it is written by the group's partition")
	}
}

// The hot cache answers with the last value put for a key, keeps at least
// the max keys used last (a key used as its generation turns included),
// and holds at most two generations of max keys.
func TestHotCacheGenerations(t *testing.T) {
	const size = 8
	h := newHotCache(size)
	rng := rand.New(rand.NewPCG(1, 2))
	last := map[string][]byte{} // the last value put, for keys still cached
	var recent []string         // distinct keys, least recently used first
	use := func(k string) {
		recent = slices.DeleteFunc(recent, func(r string) bool { return r == k })
		recent = append(recent, k)
	}
	turns := h.gen
	for i := range 20_000 {
		k := fmt.Sprint("k", rng.IntN(3*size))
		switch rng.IntN(3) {
		case 0:
			v := []byte(fmt.Sprint(i))
			h.put(k, v, nil, nil)
			last[k] = v
			use(k)
		case 1:
			hv, ok := h.get(k)
			if ok {
				if want, put := last[k]; !put || !bytes.Equal(hv.b, want) {
					t.Fatalf("step %d: %s is %q, last put %q", i, k, hv.b, want)
				}
				use(k)
			}
		case 2:
			if e, hv := h.take(k); e != nil {
				if e.k != k || !bytes.Equal(hv.b, last[k]) {
					t.Fatalf("step %d: take %s gave %s %q, last put %q", i, k, e.k, hv.b, last[k])
				}
				use(k)
			}
		}
		if len(h.m) > 2*size {
			t.Fatalf("step %d: %d keys cached, more than two generations of %d", i, len(h.m), size)
		}
		for _, r := range recent[max(0, len(recent)-size):] {
			if _, ok := h.m[r]; !ok {
				t.Fatalf("step %d: %s, among the %d keys used last, is not cached", i, r, size)
			}
		}
	}
	if h.gen-turns < 100 {
		t.Fatalf("the generation turned %d times: the turnover is not exercised", h.gen-turns)
	}
}

// A read in a batch answers what the batch wrote, not the committed value
// the hot cache holds beside it: a sessions value written as bytes (Put,
// which drops the decoded form) is what sessionsOf and raw return next.
func TestBatchReadsItsWriteOverTheHotCache(t *testing.T) {
	s, err := Open(Options{FS: vfs.NewMem(), Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	login := &pb.Event{SchemaVersion: engine.SchemaVersion, App: "app", ClientOpId: "op", Kind: pb.Kind_KIND_LOGIN,
		StreamKey: engine.UserStream("app", "u"), Actor: &pb.Actor{User: "u"}, TimeUnixMs: 1000,
		Payload: &pb.Event_Login{Login: &pb.Login{Platform: 1, LoginId: "d"}}}
	b, err := engine.Encode(login)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(0, []engine.Entry{{Partition: 0, Offset: 0, Value: b}}); err != nil {
		t.Fatal(err)
	}
	k := sessionsKey("app", "u")
	if hv, ok := s.parts[0].hot.get(string(k)); !ok || hv.b == nil {
		t.Fatal("the committed sessions are not in the hot cache: nothing to check")
	}
	tx := s.parts[0].txn
	batch := s.db.NewBatch()
	defer batch.Close()
	tx.reset(batch, &[256]bool{tagSessions: true})
	if st, err := tx.sessionsOf("app", "u"); err != nil || len(st.Sessions) != 1 {
		t.Fatalf("committed sessions: %v, %v", st, err)
	}
	if err := tx.Put(k, &pb.UserSessions{CredentialEpoch: 7}); err != nil {
		t.Fatal(err)
	}
	st, err := tx.sessionsOf("app", "u")
	if err != nil || len(st.Sessions) != 0 || st.CredentialEpoch != 7 {
		t.Fatalf("after the batch wrote them, sessionsOf gives %v, %v", st, err)
	}
	if err := tx.Delete(k); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := tx.raw(k); err != nil || ok || v != nil {
		t.Fatalf("after the batch deleted it, raw gives %x, %v, %v", v, ok, err)
	}

	// The same for a value read decoded (peekState: a login reads its
	// timeline meta), which leaves the decoded committed value cached.
	mk := metaKey("app", "u")
	tx.own = &[256]bool{tagMeta: true}
	m, err := tx.peekState(mk, newMeta)
	if err != nil || m.(*pb.TimelineMeta).FirstSeq != 1 {
		t.Fatalf("committed meta: %v, %v", m, err)
	}
	if hv, _ := s.parts[0].hot.get(string(mk)); hv.m != m {
		t.Fatal("peekState did not leave the committed meta decoded in the hot cache")
	}
	if err := tx.Put(mk, &pb.TimelineMeta{Epoch: "other"}); err != nil {
		t.Fatal(err)
	}
	if m, err := tx.peekState(mk, newMeta); err != nil || m.(*pb.TimelineMeta).Epoch != "other" {
		t.Fatalf("after the batch wrote it, peekState gives %v, %v", m, err)
	}
}

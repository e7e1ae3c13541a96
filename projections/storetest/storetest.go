// Package storetest is the conformance suite of a projection store: what a
// store must guarantee for the projector, the engine's writers and rebuilds
// to be right (DESIGN.md invariants 2 and 3). A store runs it from a test:
//
//	storetest.Run(t, storetest.Harness{Open: ..., Crash: ..., ErrGap: ErrGap})
//
// The guarantees:
//
//   - Checkpoint with state: Apply commits a batch's state and the
//     partition's next offset together. After a crash at any moment, the
//     reopened store's state is exactly what applying the log up to its
//     checkpoint produces, and applying on from the checkpoint reaches the
//     same state as never having crashed: nothing lost, nothing twice.
//   - Visibility: once Apply returns nil, Checkpoint reports the batch and
//     WaitApplied for any position in it returns nil at once. WaitApplied for
//     a later position waits until a batch holding it is applied, or ctx
//     ends (ctx.Err()), or the store closes (an error); it never returns nil
//     early.
//   - Determinism: the digest of the state depends only on the entries
//     applied, not on how they were cut into batches nor on the order in
//     which partitions were applied; rebuilding from offset 0 gives the
//     same digest.
//   - No gaps: Apply refuses entries that do not continue the checkpoint
//     (a skip, a repeat, another partition) with ErrGap and changes nothing.
//   - Garbage and retries: an undecodable entry and a retried append of an
//     operation are consumed (the checkpoint moves on) without failing.
//   - The engine's reads (a store that is its engine.Projector): every
//     applied operation's decision is found by stream, user and client op
//     id, at its first append; Policy is the newest version applied; a
//     device that never logged in may not act (1005). A store that also
//     serves the session reads (Devices, Audit) tells the same story: a
//     listed device may act, an ended one may not.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// Store is what the suite needs of a projection store.
type Store interface {
	// Partitions is the partition count the store was opened with.
	Partitions() int32
	// Apply applies entries of partition p, which must continue its
	// checkpoint, atomically with the new checkpoint.
	Apply(p int32, entries []engine.Entry) error
	// Checkpoint returns p's committed checkpoint.
	Checkpoint(p int32) *pb.Checkpoint
	// WaitApplied blocks until the entry at pos is applied and visible.
	WaitApplied(ctx context.Context, pos engine.Position) error
	// Digest hashes the state derived from the log.
	Digest() (string, error)
	Close() error
}

// Harness opens the stores under test.
type Harness struct {
	// Open returns a new, empty store with the given partition count; the
	// suite closes it (Close must be idempotent).
	Open func(t *testing.T, partitions int32) Store

	// Crash simulates a power loss of s at this instant and returns a store
	// opened on what survived; s is not used again. variant (0, 1, 2, …)
	// lets the harness vary what survives (only synced data, some of the
	// rest, all of it). Nil: the crash tests are skipped, and say so.
	Crash func(t *testing.T, s Store, variant int) Store

	// Durable: every Apply that returned survives a crash (the store
	// syncs each batch). Otherwise a crash may move checkpoints back, with
	// their state.
	Durable bool

	// ErrGap is the store's error for entries that do not continue the
	// checkpoint; the suite matches it with errors.Is.
	ErrGap error
}

// Partitions is the partition count of the suite's stores.
const Partitions = 3

// Run runs every test of the suite.
func Run(t *testing.T, h Harness) {
	log := History(Partitions, 600, 1)
	t.Run("ApplyThenVisible", func(t *testing.T) { testApplyThenVisible(t, h, log) })
	t.Run("WaitAppliedWaits", func(t *testing.T) { testWaitAppliedWaits(t, h, log) })
	t.Run("ApplyRefusesGap", func(t *testing.T) { testApplyRefusesGap(t, h, log) })
	t.Run("RebuildSameDigest", func(t *testing.T) { testRebuildSameDigest(t, h, log) })
	t.Run("CrashBetweenBatches", func(t *testing.T) { testCrashBetweenBatches(t, h, log) })
	t.Run("AfterClose", func(t *testing.T) { testAfterClose(t, h, log) })
	t.Run("Projector", func(t *testing.T) { testProjector(t, h, log) })
	t.Run("ReadsAgree", func(t *testing.T) { testReadsAgree(t, h, log) })
}

func open(t *testing.T, h Harness) Store {
	t.Helper()
	s := h.Open(t, Partitions)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func next(s Store, p int32) int64 { return s.Checkpoint(p).NextOffset }

func digest(t *testing.T, s Store) string {
	t.Helper()
	d, err := s.Digest()
	if err != nil {
		t.Fatalf("Digest: %v", err)
	}
	return d
}

// applyAll applies log[p][from[p]:to[p]] of every partition in batches of
// the given sizes (cycled), partitions interleaved batch by batch.
func applyAll(t *testing.T, s Store, log [][]engine.Entry, sizes []int, from, to []int64) {
	t.Helper()
	pos := append([]int64(nil), from...)
	for i := 0; ; i++ {
		progressed := false
		for p := range log {
			if pos[p] >= to[p] {
				continue
			}
			n := min(int64(sizes[i%len(sizes)]), to[p]-pos[p])
			if err := s.Apply(int32(p), log[p][pos[p]:pos[p]+n]); err != nil {
				t.Fatalf("Apply p%d [%d,%d): %v", p, pos[p], pos[p]+n, err)
			}
			pos[p] += n
			progressed = true
		}
		if !progressed {
			return
		}
	}
}

func zeros(n int) []int64 { return make([]int64, n) }

func ends(log [][]engine.Entry) []int64 {
	e := make([]int64, len(log))
	for p := range log {
		e[p] = int64(len(log[p]))
	}
	return e
}

// reference is the digest of a fresh store that applied log[p][:upto[p]],
// each partition in one batch.
func reference(t *testing.T, h Harness, log [][]engine.Entry, upto []int64) string {
	t.Helper()
	s := open(t, h)
	defer s.Close()
	applyAll(t, s, log, []int{1 << 30}, zeros(len(log)), upto)
	return digest(t, s)
}

func testApplyThenVisible(t *testing.T, h Harness, log [][]engine.Entry) {
	s := open(t, h)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a visible position must not need to wait at all
	for p := range log {
		for off := 0; off < len(log[p]); {
			n := min(1+off%13, len(log[p])-off)
			if err := s.Apply(int32(p), log[p][off:off+n]); err != nil {
				t.Fatalf("Apply p%d at %d: %v", p, off, err)
			}
			off += n
			if got := next(s, int32(p)); got != int64(off) {
				t.Fatalf("p%d: checkpoint %d after Apply returned through %d", p, got, off-1)
			}
			for _, o := range []int{0, off - 1} {
				if err := s.WaitApplied(ctx, engine.Position{Partition: int32(p), Offset: int64(o)}); err != nil {
					t.Fatalf("p%d: WaitApplied(%d) after Apply returned: %v", p, o, err)
				}
			}
		}
	}
	cp := s.Checkpoint(0)
	if cp.Applied+cp.Duplicates+cp.Skipped != uint64(cp.NextOffset) {
		t.Errorf("checkpoint counts applied %d + duplicates %d + skipped %d != next offset %d",
			cp.Applied, cp.Duplicates, cp.Skipped, cp.NextOffset)
	}
	var dups, skipped uint64
	for p := range log {
		cp := s.Checkpoint(int32(p))
		dups, skipped = dups+uint64(cp.Duplicates), skipped+uint64(cp.Skipped)
	}
	if dups == 0 || skipped == 0 {
		t.Errorf("the history's retried appends and garbage were not counted: duplicates %d, skipped %d", dups, skipped)
	}
	// Empty Apply: nothing to do, no error.
	before := digest(t, s)
	if err := s.Apply(0, nil); err != nil {
		t.Fatalf("Apply of nothing: %v", err)
	}
	if digest(t, s) != before {
		t.Fatal("Apply of nothing changed the state")
	}
}

func testWaitAppliedWaits(t *testing.T, h Harness, log [][]engine.Entry) {
	s := open(t, h)
	const p = 1
	target := engine.Position{Partition: p, Offset: 9}
	done := make(chan error, 1)
	go func() { done <- s.WaitApplied(context.Background(), target) }()
	notYet := func(what string) {
		t.Helper()
		select {
		case err := <-done:
			t.Fatalf("WaitApplied(%d) returned %v %s", target.Offset, err, what)
		case <-time.After(30 * time.Millisecond):
		}
	}
	notYet("before anything was applied")
	if err := s.Apply(p, log[p][:9]); err != nil {
		t.Fatal(err)
	}
	notYet("with the checkpoint just below it")
	if err := s.Apply(p, log[p][9:12]); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WaitApplied after its batch: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitApplied still waiting after its position was applied")
	}
	// ctx ends the wait with ctx's error.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.WaitApplied(ctx, engine.Position{Partition: p, Offset: 1 << 40}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitApplied past its deadline: %v, want DeadlineExceeded", err)
	}
	// A partition the store does not have.
	for _, bad := range []int32{-1, Partitions} {
		if err := s.WaitApplied(context.Background(), engine.Position{Partition: bad}); !errors.Is(err, engine.ErrBadPartition) {
			t.Fatalf("WaitApplied on partition %d: %v, want ErrBadPartition", bad, err)
		}
	}
	// Close ends a wait with an error, never nil.
	go func() { done <- s.WaitApplied(context.Background(), engine.Position{Partition: p, Offset: 1 << 40}) }()
	time.Sleep(20 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("WaitApplied returned nil when the store closed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitApplied still waiting after Close")
	}
}

func testApplyRefusesGap(t *testing.T, h Harness, log [][]engine.Entry) {
	s := open(t, h)
	const p = 2
	if err := s.Apply(p, log[p][:5]); err != nil {
		t.Fatal(err)
	}
	before := digest(t, s)
	for name, es := range map[string][]engine.Entry{
		"skip":            log[p][6:8],
		"repeat":          log[p][3:7],
		"repeat last":     log[p][4:6],
		"other partition": log[0][5:6],
		// Offsets that continue but are not dense inside the batch.
		"hole inside": {log[p][5], log[p][7]},
		// The right offset on an entry labelled with another partition.
		"mislabelled": func() []engine.Entry { e := log[p][5]; e.Partition = 0; return []engine.Entry{e} }(),
	} {
		err := s.Apply(p, es)
		if !errors.Is(err, h.ErrGap) {
			t.Errorf("%s: Apply = %v, want ErrGap", name, err)
		}
		if got := next(s, p); got != 5 {
			t.Fatalf("%s: checkpoint moved to %d", name, got)
		}
		if digest(t, s) != before {
			t.Fatalf("%s: a refused Apply changed the state", name)
		}
	}
	// After all the refusals, the right continuation applies.
	if err := s.Apply(p, log[p][5:8]); err != nil || next(s, p) != 8 {
		t.Fatalf("Apply of the continuation: %v, checkpoint %d", err, next(s, p))
	}
}

func testRebuildSameDigest(t *testing.T, h Harness, log [][]engine.Entry) {
	end := ends(log)
	want := reference(t, h, log, end)
	for _, sizes := range [][]int{{1}, {7, 1, 64}, {500}} {
		t.Run(fmt.Sprint(sizes), func(t *testing.T) {
			s := open(t, h)
			applyAll(t, s, log, sizes, zeros(len(log)), end)
			if got := digest(t, s); got != want {
				t.Fatalf("batches %v: digest %.16s, one batch per partition %.16s", sizes, got, want)
			}
		})
	}
	// Partitions in the other order, each to its end before the next.
	s := open(t, h)
	for p := len(log) - 1; p >= 0; p-- {
		if err := s.Apply(int32(p), log[p]); err != nil {
			t.Fatal(err)
		}
	}
	if got := digest(t, s); got != want {
		t.Fatalf("partitions in reverse order: digest %.16s, want %.16s", got, want)
	}
	// And a different history gives a different digest (the digest sees
	// the state at all).
	if other := reference(t, h, History(Partitions, 600, 2), ends(History(Partitions, 600, 2))); other == want {
		t.Fatal("two different histories have the same digest")
	}
}

func testCrashBetweenBatches(t *testing.T, h Harness, log [][]engine.Entry) {
	if h.Crash == nil {
		t.Skip("Harness.Crash is nil: this store cannot simulate a crash")
	}
	end := ends(log)
	want := reference(t, h, log, end)
	rng := rand.New(rand.NewPCG(7, 7))
	for variant := range 3 {
		t.Run(fmt.Sprint("variant", variant), func(t *testing.T) {
			s := open(t, h)
			// Crash after a random cut of every partition, applied in batches.
			cut := make([]int64, len(log))
			for p := range cut {
				cut[p] = rng.Int64N(end[p] + 1)
			}
			applyAll(t, s, log, []int{5, 17}, zeros(len(log)), cut)
			r := h.Crash(t, s, variant)
			t.Cleanup(func() { _ = r.Close() })
			got := make([]int64, len(log))
			for p := range got {
				got[p] = next(r, int32(p))
				if got[p] > cut[p] {
					t.Fatalf("p%d: checkpoint %d after a crash, only %d applied", p, got[p], cut[p])
				}
				if h.Durable && got[p] != cut[p] {
					t.Fatalf("p%d: a durable store lost batches in a crash: checkpoint %d, %d applied", p, got[p], cut[p])
				}
			}
			// The state is exactly the one of the checkpoint.
			if d, ref := digest(t, r), reference(t, h, log, got); d != ref {
				t.Fatalf("after a crash at %v the store holds checkpoints %v with other state: digest %.16s, want %.16s",
					cut, got, d, ref)
			}
			// Applying on from the checkpoint reaches the uncrashed state.
			applyAll(t, r, log, []int{11}, got, end)
			if d := digest(t, r); d != want {
				t.Fatalf("after a crash and applying on: digest %.16s, want %.16s", d, want)
			}
			t.Logf("cut %v, checkpoints after the crash %v", cut, got)
		})
	}
}

func testAfterClose(t *testing.T, h Harness, log [][]engine.Entry) {
	s := open(t, h)
	if err := s.Apply(0, log[0][:3]); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Apply(0, log[0][3:5]); err == nil {
		t.Fatal("Apply after Close succeeded")
	}
	if _, err := s.Digest(); err == nil {
		t.Fatal("Digest after Close succeeded")
	}
	if err := s.WaitApplied(context.Background(), engine.Position{Offset: 100}); err == nil {
		t.Fatal("WaitApplied after Close returned nil")
	}
}

// History returns a deterministic log of about n operations for the given
// partition count, chosen by seed: logins and logouts, messages to users
// and groups, contact requests and accepts, group creation and joins,
// conversation pins, policy changes (a copy to every partition), retried
// appends of earlier records, and undecodable garbage. Entry i of partition
// p has offset i.
func History(partitions int32, n int, seed uint64) [][]engine.Entry {
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	log := make([][]engine.Entry, partitions)
	var appended []engine.Entry
	put := func(p int32, key, value []byte) {
		e := engine.Entry{Partition: p, Offset: int64(len(log[p])), Key: key, Value: value}
		log[p] = append(log[p], e)
		appended = append(appended, e)
	}
	add := func(ev *pb.Event, p int32) {
		b, err := engine.Encode(ev)
		if err != nil {
			panic(err)
		}
		put(p, []byte(ev.StreamKey), b)
	}
	const app = "app"
	users := []string{"u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"}
	groups := []string{"g0", "g1", "g2"}
	logins := 0
	policy := uint64(0)
	for op := range n {
		user := users[rng.IntN(len(users))]
		peer := users[rng.IntN(len(users))]
		group := groups[rng.IntN(len(groups))]
		ev := &pb.Event{SchemaVersion: engine.SchemaVersion, App: app, ClientOpId: fmt.Sprint("op", op),
			Actor: &pb.Actor{User: user, LoginId: fmt.Sprint("d", rng.IntN(logins+1))}, TimeUnixMs: 1_000_000 + int64(op)*1000}
		switch r := rng.IntN(100); {
		case r < 2 && len(appended) > 0: // a retried append of an earlier record
			old := appended[rng.IntN(len(appended))]
			put(old.Partition, old.Key, old.Value)
			continue
		case r < 4: // garbage
			put(int32(rng.IntN(int(partitions))), []byte("x"), []byte{0xff, 0x01, 0x02})
			continue
		case r < 6: // a policy change, one copy per partition
			policy++
			for p := range partitions {
				cp := &pb.Event{SchemaVersion: engine.SchemaVersion, App: app, ClientOpId: ev.ClientOpId,
					Actor: &pb.Actor{User: "admin", Admin: true}, Kind: pb.Kind_KIND_POLICY_SET, TimeUnixMs: ev.TimeUnixMs,
					Payload: &pb.Event_PolicySet{PolicySet: &pb.PolicySet{
						Version: policy, Partition: p, Partitions: partitions,
						Mode: pb.PlatformMode_PLATFORM_MODE_MULTI, DefaultLimit: int32(1 + rng.IntN(4)),
						AutoLogin: pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST,
					}}}
				cp.StreamKey = engine.PolicyStream(app, p)
				cp.EventId = engine.EventID(engine.PolicyStream(app, 0), "admin", ev.ClientOpId)
				add(cp, p)
			}
			continue
		case r < 35:
			logins++
			ev.Kind = pb.Kind_KIND_LOGIN
			ev.Actor.LoginId = ""
			ev.Payload = &pb.Event_Login{Login: &pb.Login{Platform: int32(1 + rng.IntN(3)), LoginId: fmt.Sprint("d", logins), DeviceName: "dev"}}
		case r < 42:
			ev.Kind = pb.Kind_KIND_LOGOUT
		case r < 62:
			ev.Kind = pb.Kind_KIND_MESSAGE_SEND
			ev.Payload = &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: peer,
				ClientMsgId: fmt.Sprint("m", op), ContentType: "text", Body: []byte(fmt.Sprint("hello ", op))}}
		case r < 72:
			ev.Kind = pb.Kind_KIND_MESSAGE_SEND
			ev.Payload = &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_GROUP, To: group,
				ClientMsgId: fmt.Sprint("m", op), ContentType: "text", Body: []byte(fmt.Sprint("hi all ", op))}}
		case r < 77:
			ev.Kind = pb.Kind_KIND_GROUP_CREATE
			ev.Payload = &pb.Event_Group{Group: &pb.GroupOp{GroupId: group, Name: "group " + group}}
		case r < 85:
			ev.Kind = pb.Kind_KIND_GROUP_JOIN
			ev.Payload = &pb.Event_Group{Group: &pb.GroupOp{GroupId: group}}
		case r < 90:
			ev.Kind = pb.Kind_KIND_CONTACT_REQUEST
			ev.Payload = &pb.Event_Contact{Contact: &pb.ContactOp{User: peer}}
		case r < 95:
			ev.Kind = pb.Kind_KIND_CONTACT_ACCEPT
			ev.Payload = &pb.Event_Contact{Contact: &pb.ContactOp{User: peer}}
		default:
			ev.Kind = pb.Kind_KIND_CONVERSATION_PIN
			ev.Payload = &pb.Event_Conversation{Conversation: &pb.ConversationRef{ChatType: pb.ChatType_CHAT_TYPE_USER, ConversationId: peer}}
		}
		ev.StreamKey = engine.StreamKeyFor(ev)
		ev.EventId = engine.EventID(ev.StreamKey, user, ev.ClientOpId)
		add(ev, engine.PartitionFor([]byte(ev.StreamKey), partitions))
	}
	return log
}

package benchmarks

// Sync issue: catch-up cost (DESIGN.md invariant 5: it grows with what the
// device missed, not with the log) and group fan-out through the relay.
// As in core_bench_test.go, one benchmark op is one round of a fixed
// workload on both sides, so `-benchtime Nx` runs N rounds; the figures
// are the custom metrics and ns/op is just a round's length.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/mdsync/mdsync/adapters/embedlog"
	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

const (
	catchUpMissed  = 10_000 // entries the device missed (= the default retention)
	catchUpPage    = 500    // entries per Timeline call
	catchUpUsers   = 1000   // the other users: senders, and recipients in the large log
	catchUpRepeats = 10     // catch-ups per side per round, alternating sides
	catchUpLarge   = 10     // the large log is this many times the small one

	fanoutMembers    = 1000
	fanoutPartitions = 8
	fanoutBurst      = 20 // messages per round, submitted back to back
	fanoutSingles    = 5  // messages per round, each waited for alone
	fanoutSubmitters = 4
)

// catchUpTarget sorts in the middle of the other users ("user-0000" ..
// "user-1000"), so its timeline keys have other users' keys on both sides.
const catchUpTarget = "user-0500"

// msgBody is a 100-byte body shaped like an SDK's text message payload.
var msgBody = []byte(`{"type":"txt","msg":"see you at the station at 7, bring the tickets pls","ext":{"em":0,"v":"4.9"}}`)

func catchUpUser(i int) string {
	if i >= 500 { // skip the target's name
		i++
	}
	return fmt.Sprintf("user-%04d", i)
}

// userMsgOp is a message from one user to another as Engine.Submit would
// append it.
func userMsgOp(from, to string, seq int, now int64) *pb.Event {
	id := fmt.Sprintf("m-%s-%07d", from, seq)
	op := &pb.Event{
		App: benchApp, ClientOpId: id, Kind: pb.Kind_KIND_MESSAGE_SEND,
		Actor: &pb.Actor{User: from}, // the user's backend: no device session needed
		Payload: &pb.Event_Message{Message: &pb.MessageSend{
			ChatType: pb.ChatType_CHAT_TYPE_USER, To: to, ClientMsgId: id,
			ContentType: "text/plain", Body: msgBody,
		}},
	}
	return envelope(op, now)
}

// catchUpLog returns total message events in log order: every
// total/catchUpMissed-th goes from another user to the target, the others
// between other users (none from or to the target), so the target's
// entries are interleaved in time with everyone else's.
func catchUpLog(tb testing.TB, total, missed int) []engine.Entry {
	tb.Helper()
	every := total / missed
	evs := make([]*pb.Event, 0, total)
	for i := 0; i < total; i++ {
		from := catchUpUser(i % catchUpUsers)
		to := catchUpTarget
		if i%every != 0 {
			to = catchUpUser((i*7919 + 13) % catchUpUsers)
			if to == from {
				to = catchUpUser((i*7919 + 14) % catchUpUsers)
			}
		}
		ev := userMsgOp(from, to, i, 1_700_000_000_000+int64(i))
		if i < 2 {
			if err := engine.Validate(ev); err != nil {
				tb.Fatalf("generated op %d is invalid: %v", i, err)
			}
		}
		evs = append(evs, ev)
	}
	recs := encodeAll(tb, evs, 1)
	entries := make([]engine.Entry, len(recs))
	for i, r := range recs {
		entries[i] = engine.Entry{Partition: 0, Offset: int64(i), Key: r.Key, Value: r.Value}
	}
	return entries
}

// buildCatchUpStore applies the log to a new single-partition store in dir
// (batches of 512, as the projector reads) and closes it.
func buildCatchUpStore(tb testing.TB, dir string, fs vfs.FS, entries []engine.Entry) {
	tb.Helper()
	st, err := projections.Open(projections.Options{Dir: dir, FS: fs, Partitions: 1})
	if err != nil {
		tb.Fatal(err)
	}
	for i := 0; i < len(entries); i += applyBatch {
		if err := st.Apply(0, entries[i:min(i+applyBatch, len(entries))]); err != nil {
			tb.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		tb.Fatal(err)
	}
}

// catchUpAll is a device with no position paging through the whole
// timeline as the gateway does on connect (Store.TimelineEach: the stored
// wire JSON of each visible entry handed over as stored, not decoded; the
// gateway copies it into the frame, which is the send's cost, not the
// store's); it returns the entries read, checking each is JSON.
func catchUpAll(st *projections.Store, user string) (int, error) {
	var (
		epoch string
		pos   uint64
		n     int
	)
	for {
		next, meta, err := st.TimelineEach(benchApp, user, "dev-"+user+"-2", epoch, pos, catchUpPage,
			func(_ string, _ uint64, _ pb.Kind, j []byte) error {
				if len(j) == 0 || j[0] != '{' {
					return fmt.Errorf("entry is not JSON")
				}
				n++
				return nil
			})
		if err != nil {
			return n, err
		}
		epoch = meta.Epoch
		if next == pos {
			return n, nil
		}
		pos = next
	}
}

// catchUpDecoded is catchUpAll through Store.Timeline, which decodes every
// visible entry into a TimelineEntry (history and tests read that way).
func catchUpDecoded(st *projections.Store, user string) (int, error) {
	var (
		epoch string
		pos   uint64
		n     int
	)
	for {
		es, next, meta, err := st.Timeline(benchApp, user, "dev-"+user+"-2", epoch, pos, catchUpPage)
		if err != nil {
			return n, err
		}
		epoch = meta.Epoch
		if next == pos {
			return n, nil
		}
		pos, n = next, n+len(es)
	}
}

// rawTimelinePrefix is projections' timelinePrefix (keys.go): t 0 app 0 user 0.
func rawTimelinePrefix(app, user string) []byte {
	return []byte("t\x00" + app + "\x00" + user + "\x00")
}

// lastScanBytes is the value bytes the last rawScan read.
var lastScanBytes int

// rawScan iterates the user's timeline keys in one Pebble iterator and
// touches every value, decoding nothing.
func rawScan(db *pebble.DB, user string) (int, error) {
	lo := rawTimelinePrefix(benchApp, user)
	hi := append(lo[:len(lo)-1:len(lo)-1], 1)
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return 0, err
	}
	n, bytes := 0, 0
	for it.First(); it.Valid(); it.Next() {
		bytes += len(it.Value())
		n++
	}
	if bytes == 0 && n > 0 {
		return n, fmt.Errorf("empty values")
	}
	lastScanBytes = bytes
	return n, errorsJoin(it.Error(), it.Close())
}

func errorsJoin(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// copyDir copies the regular files of src into a new dir dst (a Pebble
// directory of a closed DB: same tables, manifest and WAL, so the same LSM).
func copyDir(tb testing.TB, src, dst string) {
	tb.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		tb.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
}

func openCatchUpStore(tb testing.TB, dir string) *projections.Store {
	tb.Helper()
	st, err := projections.Open(projections.Options{Dir: dir, Partitions: 1})
	if err != nil {
		tb.Fatal(err)
	}
	return st
}

func timed(f func() (int, error), want int, d *time.Duration) error {
	t := time.Now()
	n, err := f()
	*d += time.Since(t)
	if err == nil && n != want {
		err = fmt.Errorf("read %d entries, want %d", n, want)
	}
	return err
}

// BenchmarkCatchUp: a device with no position catches up 10,000 missed
// entries (messages from 1,000 other users, 100-byte bodies) through
// Store.TimelineEach (what the gateway's catch-up reads) in pages of 500,
// against a raw Pebble iterator over the same keys in a byte-for-byte copy
// of the same store (same LSM shape, same block cache size), touching each
// value and decoding nothing. Diagnostics: mdsync_decoded is the same
// catch-up through Store.Timeline (each visible entry decoded into a
// TimelineEntry). Warm caches: each side is run once before timing, then
// the sides alternate.
func BenchmarkCatchUp(b *testing.B) {
	dir := b.TempDir()
	buildCatchUpStore(b, filepath.Join(dir, "proj"), nil, catchUpLog(b, catchUpMissed, catchUpMissed))
	copyDir(b, filepath.Join(dir, "proj"), filepath.Join(dir, "raw"))
	st := openCatchUpStore(b, filepath.Join(dir, "proj"))
	defer st.Close()
	cache := pebble.NewCache(64 << 20)
	db, err := pebble.Open(filepath.Join(dir, "raw"), &pebble.Options{Cache: cache, Logger: quietLogger{}})
	cache.Unref()
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	md := func() (int, error) { return catchUpAll(st, catchUpTarget) }
	raw := func() (int, error) { return rawScan(db, catchUpTarget) }
	rawDec := func() (int, error) { return catchUpDecoded(st, catchUpTarget) }
	var warm time.Duration
	for _, f := range []func() (int, error){md, raw, rawDec} {
		if err := timed(f, catchUpMissed, &warm); err != nil {
			b.Fatal(err)
		}
	}
	var mdT, rawT, decT time.Duration
	b.ResetTimer()
	for round := 0; round < b.N; round++ {
		for r := 0; r < catchUpRepeats; r++ {
			order := []struct {
				f func() (int, error)
				d *time.Duration
			}{{md, &mdT}, {raw, &rawT}, {rawDec, &decT}}
			if r%2 == 1 {
				order[0], order[1] = order[1], order[0]
			}
			for _, o := range order {
				if err := timed(o.f, catchUpMissed, o.d); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	b.StopTimer()
	n := float64(b.N * catchUpRepeats * catchUpMissed)
	rawRate, decRate, mdRate := n/rawT.Seconds(), n/decT.Seconds(), n/mdT.Seconds()
	b.ReportMetric(rawRate, "raw_entries/s")
	b.ReportMetric(decRate, "mdsync_decoded_entries/s")
	b.ReportMetric(mdRate, "mdsync_entries/s")
	b.ReportMetric(mdRate/rawRate, "ratio")
	b.ReportMetric(ms(mdT)/float64(b.N*catchUpRepeats), "mdsync_ms/catchup")
	b.ReportMetric(float64(lastScanBytes)/catchUpMissed, "B/entry")
}

// BenchmarkCatchUpLargeLog: the same 10,000-entry catch-up on a store built
// from a log ten times larger (100,000 messages: the target's 10,000 plus
// 90,000 between 1,000 other users whose names sort on both sides of the
// target's, interleaved in log order, so the target's entries are spread
// over the same memtables and tables as everyone else's), against the small
// store (10,000 messages) in the same run. Both stores open at once, warm,
// alternating.
func BenchmarkCatchUpLargeLog(b *testing.B) {
	dir := b.TempDir()
	buildCatchUpStore(b, filepath.Join(dir, "small"), nil, catchUpLog(b, catchUpMissed, catchUpMissed))
	buildCatchUpStore(b, filepath.Join(dir, "large"), nil, catchUpLog(b, catchUpLarge*catchUpMissed, catchUpMissed))
	small := openCatchUpStore(b, filepath.Join(dir, "small"))
	defer small.Close()
	large := openCatchUpStore(b, filepath.Join(dir, "large"))
	defer large.Close()
	var smallT, largeT, warm time.Duration
	fs := func() (int, error) { return catchUpAll(small, catchUpTarget) }
	fl := func() (int, error) { return catchUpAll(large, catchUpTarget) }
	for _, f := range []func() (int, error){fs, fl} {
		if err := timed(f, catchUpMissed, &warm); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for round := 0; round < b.N; round++ {
		for r := 0; r < catchUpRepeats; r++ {
			first, second := fs, fl
			d1, d2 := &smallT, &largeT
			if r%2 == 1 {
				first, second, d1, d2 = fl, fs, &largeT, &smallT
			}
			if err := timed(first, catchUpMissed, d1); err != nil {
				b.Fatal(err)
			}
			if err := timed(second, catchUpMissed, d2); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	k := float64(b.N * catchUpRepeats)
	b.ReportMetric(ms(smallT)/k, "small_ms/catchup")
	b.ReportMetric(ms(largeT)/k, "large_ms/catchup")
	b.ReportMetric(float64(largeT)/float64(smallT), "ratio")
	b.ReportMetric(dirSize(b, filepath.Join(dir, "small"))/(1<<20), "small_MiB")
	b.ReportMetric(dirSize(b, filepath.Join(dir, "large"))/(1<<20), "large_MiB")
}

func dirSize(tb testing.TB, dir string) float64 {
	tb.Helper()
	var n int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return float64(n)
}

func groupMember(i int) string { return fmt.Sprintf("member-%04d", i) }

// BenchmarkGroupFanout: messages to a 1,000-member group (members spread
// over 8 partitions by hash) submitted through node.New + Engine.Submit;
// measured until every member's timeline has every message (the source
// partition applies its members' copies inline, the relay appends DELIVER
// events for the others and their partitions apply them). A round is a
// burst of 20 messages from 4 concurrent submitters (throughput), then 5
// messages each waited for alone (latency to the last member). Baseline in
// the same run: a bare embedlog.Log (8 partitions, own dir) appending the
// same number of DELIVER records, built as the relay builds them from the
// same kind of message, 1,000 per Append call (the relay appends one batch
// per read of source events).
func BenchmarkGroupFanout(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	log.SetOutput(io.Discard) // node.New gives Pebble the default logger
	defer log.SetOutput(os.Stderr)
	const group = "group-bench"
	var delivered atomic.Int64
	notify := make(chan struct{}, 1)
	nd, err := node.New(ctx, node.Options{
		Dir: filepath.Join(dir, "node"), Partitions: fanoutPartitions,
		OnApplied: func(_ int32, a projections.Applied) {
			n := 0
			for _, e := range a.Entries {
				if src := e.Entry.Source; src.GetKind() == pb.Kind_KIND_MESSAGE_SEND && src.GetMessage().GetTo() == group {
					n++
				}
			}
			if n > 0 {
				delivered.Add(int64(n))
				select {
				case notify <- struct{}{}:
				default:
				}
			}
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer nd.Close()
	waitFor := func(target int64) {
		deadline := time.After(60 * time.Second)
		for delivered.Load() < target {
			select {
			case <-notify:
			case <-deadline:
				b.Fatalf("fan-out stalled: %d of %d entries delivered (node err %v)", delivered.Load(), target, nd.Err())
			}
		}
	}
	// A busy refusal (admission, engine.CodeBusy) decided nothing: the op
	// is sent again after its RetryAfter, as a client does, and counted.
	var busy atomic.Int64
	submitOnce := func(ev *pb.Event) (*pb.Decision, error) {
		for {
			d, err := nd.Engine.Submit(ctx, ev)
			var e *engine.Error
			if !errors.As(err, &e) || e.Code != engine.CodeBusy {
				return d, err
			}
			busy.Add(1)
			time.Sleep(max(e.RetryAfter, time.Millisecond))
		}
	}
	submit := func(ev *pb.Event) {
		d, err := submitOnce(ev)
		if err == nil && d.Code != 0 {
			err = fmt.Errorf("refused: %d %s", d.Code, d.Message)
		}
		if err != nil {
			b.Fatalf("%s by %s: %v", engine.KindName(ev.Kind), ev.Actor.User, err)
		}
	}
	// The group: the owner creates it with 99 members, 900 more join.
	owner := groupMember(0)
	first := make([]string, 0, engine.MaxUsersPerOp-1)
	for i := 1; i < engine.MaxUsersPerOp; i++ {
		first = append(first, groupMember(i))
	}
	submit(&pb.Event{App: benchApp, ClientOpId: "create", Kind: pb.Kind_KIND_GROUP_CREATE,
		Actor:   &pb.Actor{User: owner},
		Payload: &pb.Event_Group{Group: &pb.GroupOp{GroupId: group, Name: "bench group", Users: first}}})
	perPart := make([]int, fanoutPartitions)
	for i := 0; i < fanoutMembers; i++ {
		u := groupMember(i)
		perPart[engine.PartitionFor([]byte(engine.UserStream(benchApp, u)), fanoutPartitions)]++
		if i < engine.MaxUsersPerOp {
			continue
		}
		submit(&pb.Event{App: benchApp, ClientOpId: "join", Kind: pb.Kind_KIND_GROUP_JOIN,
			Actor:   &pb.Actor{User: u},
			Payload: &pb.Event_Group{Group: &pb.GroupOp{GroupId: group}}})
	}
	srcPart := engine.PartitionFor([]byte(engine.StreamKeyFor(&pb.Event{App: benchApp, Kind: pb.Kind_KIND_MESSAGE_SEND,
		Actor: &pb.Actor{User: owner}, Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_GROUP, To: group}}})), fanoutPartitions)
	b.Logf("members per partition %v; the group's messages are on partition %d (%d members applied inline)", perPart, srcPart, perPart[srcPart])

	var seq atomic.Int64
	groupMsg := func(from string) *pb.Event {
		id := fmt.Sprintf("g-%s-%07d", from, seq.Add(1))
		return &pb.Event{App: benchApp, ClientOpId: id, Kind: pb.Kind_KIND_MESSAGE_SEND,
			Actor: &pb.Actor{User: from}, // the user's backend: no device session needed
			Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_GROUP, To: group,
				ClientMsgId: id, ContentType: "text/plain", Body: msgBody}}}
	}

	// The baseline's records: the DELIVER copies of one group message, for
	// every member, exactly as the relay encodes them.
	src := envelope(groupMsg(owner), time.Now().UnixMilli())
	var recs []engine.Record
	var recBytes int
	for i := 0; i < fanoutMembers; i++ {
		u := groupMember(i)
		dl := &pb.Deliver{Recipient: u, From: owner, Source: src, SourcePartition: int32(srcPart), SourceOffset: 12345}
		de := engine.DeliverEvent(dl)
		v, err := engine.Encode(de)
		if err != nil {
			b.Fatal(err)
		}
		recs = append(recs, engine.Record{Partition: engine.PartitionFor([]byte(de.StreamKey), fanoutPartitions), Key: []byte(de.StreamKey), Value: v})
		recBytes += len(de.StreamKey) + len(v)
	}
	lg, err := embedlog.Open(embedlog.Options{Dir: filepath.Join(dir, "rawlog"), Partitions: fanoutPartitions,
		Pebble: &pebble.Options{Logger: quietLogger{}}})
	if err != nil {
		b.Fatal(err)
	}
	defer lg.Close()

	var fanT, rawT time.Duration
	var singles []time.Duration
	var msgs int64
	b.ResetTimer()
	for round := 0; round < b.N; round++ {
		// Raw: the same number of records as the burst delivers.
		t := time.Now()
		for m := 0; m < fanoutBurst; m++ {
			if _, err := lg.Append(ctx, recs); err != nil {
				b.Fatal(err)
			}
		}
		rawT += time.Since(t)

		base := delivered.Load()
		t = time.Now()
		_, _, err := runConcurrent(fanoutSubmitters, fanoutBurst, func(i int) error {
			ev := groupMsg(groupMember((round*fanoutBurst + i) % fanoutMembers))
			d, err := submitOnce(ev)
			if err == nil && d.Code != 0 {
				err = fmt.Errorf("refused: %d %s", d.Code, d.Message)
			}
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		waitFor(base + fanoutBurst*fanoutMembers)
		fanT += time.Since(t)
		msgs += fanoutBurst

		for m := 0; m < fanoutSingles; m++ {
			base := delivered.Load()
			t := time.Now()
			submit(groupMsg(groupMember((7 * (round*fanoutSingles + m)) % fanoutMembers)))
			waitFor(base + fanoutMembers)
			singles = append(singles, time.Since(t))
		}
	}
	b.StopTimer()
	if got, want := delivered.Load(), int64(b.N*(fanoutBurst+fanoutSingles)*fanoutMembers); got != want {
		b.Fatalf("delivered %d message entries, want %d (a duplicate or a stray copy)", got, want)
	}
	entries := float64(msgs * fanoutMembers)
	md, raw := entries/fanT.Seconds(), entries/rawT.Seconds()
	b.ReportMetric(md, "fanout_entries/s")
	b.ReportMetric(raw, "raw_append_rec/s")
	b.ReportMetric(md/raw, "ratio")
	b.ReportMetric(float64(recBytes)/float64(len(recs)), "B/deliver_rec")
	b.ReportMetric(ms(percentile(singles, 0.5)), "msg_to_all_p50_ms")
	b.ReportMetric(ms(percentile(singles, 1)), "msg_to_all_max_ms")
	b.ReportMetric(float64(busy.Load())/float64(b.N*(fanoutBurst+fanoutSingles)), "busy/msg")
}

// The catch-up workload must be what RESULTS.md says: the target has
// exactly the missed entries, all visible to the catching-up device, the
// large log leaves it untouched, and other users' timelines sort on both
// sides of the target's. Small sizes, in memory.
func TestCatchUpWorkload(t *testing.T) {
	for _, factor := range []int{1, catchUpLarge} {
		const missed = 300
		fs := vfs.NewMem()
		entries := catchUpLog(t, factor*missed, missed)
		buildCatchUpStore(t, "", fs, entries)
		st, err := projections.Open(projections.Options{FS: fs, Partitions: 1})
		if err != nil {
			t.Fatal(err)
		}
		n, err := catchUpAll(st, catchUpTarget)
		if err != nil || n != missed {
			t.Errorf("factor %d: caught up %d entries (%v), want %d", factor, n, err, missed)
		}
		_, _, meta, err := st.Timeline(benchApp, catchUpTarget, "x", "", 0, 1)
		if err != nil || meta.LastSeq != missed || meta.FirstSeq != 1 {
			t.Errorf("factor %d: target timeline %v (%v)", factor, meta, err)
		}
		if factor > 1 {
			for _, u := range []string{catchUpUser(100), catchUpUser(900)} {
				if n, err := catchUpAll(st, u); err != nil || n == 0 {
					t.Errorf("%s has %d entries (%v)", u, n, err)
				}
			}
		}
		st.Close()
	}
}

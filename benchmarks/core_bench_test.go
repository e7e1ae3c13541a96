package benchmarks

// Issue 2: the core's cost against raw Pebble and the disk, each ratio
// measured against a baseline run in the same process. One benchmark op is
// one round of a fixed workload (raw baseline, then mdsync), so
// `-benchtime Nx` runs N rounds of every benchmark; the figures are the
// custom metrics, summed over rounds, and ns/op is just a round's length.

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/mdsync/mdsync/adapters/embedlog"
	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

const (
	appendRecordsPerRound = 4000   // per side, per round
	appendChunk           = 200    // records per alternation
	applyEventsPerRound   = 100000 // events applied per side, per round
	applyBatch            = 512    // the projector's read batch
	applyUsers            = 20000  // 5 operations per user per round
	latencyOpsPerRound    = 2000   // logins (and fsyncs) per round
	latencyChunk          = 100    // ops per measurement, interleaved
)

// BenchmarkEmbeddedAppend: durable appends of encoded login events through
// embedlog (group commit) against raw Pebble Sync batches writing the same
// keys and values, one record per call, with the same number of appenders.
// The halves alternate in every round so drift in disk speed hits both.
func BenchmarkEmbeddedAppend(b *testing.B) {
	const partitions = 8
	recs := encodeAll(b, sessionEvents(b, appendRecordsPerRound, appendRecordsPerRound/4), partitions)
	var size int
	for _, r := range recs {
		size += len(r.Key) + len(r.Value)
	}
	for _, appenders := range []int{1, 8} {
		b.Run(fmt.Sprintf("appenders=%d", appenders), func(b *testing.B) {
			db := openRawPebble(b, filepath.Join(b.TempDir(), "raw"), nil)
			defer db.Close()
			lg, err := embedlog.Open(embedlog.Options{
				Dir: filepath.Join(b.TempDir(), "log"), Partitions: partitions,
				Pebble: &pebble.Options{Logger: quietLogger{}},
			})
			if err != nil {
				b.Fatal(err)
			}
			defer lg.Close()
			ctx := context.Background()
			var rawTime, logTime time.Duration
			var rawN int64
			raw := func(recs []engine.Record) error {
				d, _, err := runConcurrent(appenders, len(recs), func(i int) error {
					// The bytes embedlog hands Pebble: its record key
					// (tag, partition, offset) and uvarint(len key)+key+value.
					r := recs[i]
					k := make([]byte, 0, 13)
					k = append(k, 'r')
					k = binary.BigEndian.AppendUint32(k, uint32(r.Partition))
					k = binary.BigEndian.AppendUint64(k, uint64(rawN+int64(i)))
					v := binary.AppendUvarint(make([]byte, 0, 2+len(r.Key)+len(r.Value)), uint64(len(r.Key)))
					v = append(append(v, r.Key...), r.Value...)
					batch := db.NewBatch()
					defer batch.Close()
					_ = batch.Set(k, v, nil)
					return db.Apply(batch, pebble.Sync)
				})
				rawTime += d
				rawN += int64(len(recs))
				return err
			}
			mdsync := func(recs []engine.Record) error {
				d, _, err := runConcurrent(appenders, len(recs), func(i int) error {
					_, err := lg.Append(ctx, recs[i:i+1])
					return err
				})
				logTime += d
				return err
			}
			b.ResetTimer()
			for round := 0; round < b.N; round++ {
				// Alternate small chunks, swapping which side goes first:
				// fsync latency here drifts by several times within
				// seconds, and both sides must see the same disk.
				for c := 0; c < len(recs); c += appendChunk {
					chunk := recs[c:min(c+appendChunk, len(recs))]
					first, second := raw, mdsync
					if (c/appendChunk)%2 == 1 {
						first, second = mdsync, raw
					}
					if err := first(chunk); err != nil {
						b.Fatal(err)
					}
					if err := second(chunk); err != nil {
						b.Fatal(err)
					}
				}
				if testing.Verbose() {
					b.Logf("round %d: raw %.0f rec/s, mdsync %.0f rec/s (cumulative)", round, float64((round+1)*len(recs))/rawTime.Seconds(), float64((round+1)*len(recs))/logTime.Seconds())
				}
			}
			b.StopTimer()
			n := float64(b.N * len(recs))
			rawRate, md := n/rawTime.Seconds(), n/logTime.Seconds()
			st := lg.Stats()
			b.ReportMetric(rawRate, "raw_rec/s")
			b.ReportMetric(md, "mdsync_rec/s")
			b.ReportMetric(md/rawRate, "ratio")
			b.ReportMetric(float64(size)/float64(len(recs)), "B/rec")
			b.ReportMetric(float64(st.Records)/float64(st.Commits), "rec/commit")
		})
	}
}

// BenchmarkProjectionApply: projections.Store.Apply of session events in
// batches of 512 (as the projector does, NoSync) against raw Pebble NoSync
// batches that write the same number of WAL bytes per event. The baseline
// writes, per event, a per-user key (overwritten, like the sessions state)
// and a unique per-event key (like the decision), with the real keys and
// values sized to match the WAL bytes mdsync wrote in the same round, plus
// one checkpoint key per batch. It does no reads, no decoding, no decisions:
// it is the floor for the bytes the projection must write. Both databases
// have the projection's Pebble options (projections.TunePebble).
func BenchmarkProjectionApply(b *testing.B) {
	evs := sessionEvents(b, applyEventsPerRound, applyUsers)
	recs := encodeAll(b, evs, 1)
	entries := make([]engine.Entry, len(recs))
	for i, r := range recs {
		entries[i] = engine.Entry{Partition: 0, Offset: int64(i), Key: r.Key, Value: r.Value}
	}
	var (
		mdTime, rawTime       time.Duration
		mdWAL, rawWAL         int64
		mdOther, rawOther     int64
		decided, ended, total int64
	)
	tmp := b.TempDir()
	for round := 0; round < b.N; round++ {
		b.StopTimer()
		dir := filepath.Join(tmp, fmt.Sprint(round))
		mfs := newCountingFS()
		st, err := projections.Open(projections.Options{
			Dir: filepath.Join(dir, "proj"), FS: mfs, Partitions: 1,
			OnApplied: func(_ int32, a projections.Applied) {
				ds := a.Decisions
				for _, d := range ds {
					ended += int64(len(d.Ended))
				}
				decided += int64(len(ds))
			},
		})
		if err != nil {
			b.Fatal(err)
		}
		mfs.wal.Store(0)
		mfs.other.Store(0)
		b.StartTimer()
		start := time.Now()
		for i := 0; i < len(entries); i += applyBatch {
			if err := st.Apply(0, entries[i:min(i+applyBatch, len(entries))]); err != nil {
				b.Fatal(err)
			}
		}
		mdTime += time.Since(start)
		b.StopTimer()
		if err := st.Close(); err != nil {
			b.Fatal(err)
		}
		wal := mfs.wal.Load()
		mdWAL += wal
		mdOther += mfs.other.Load()
		total += int64(len(entries))

		rfs := newCountingFS()
		// The baseline's Pebble is configured as the projection's, so the
		// ratio measures what the projection adds, not a configuration.
		ro := &pebble.Options{FS: rfs, Logger: quietLogger{}}
		projections.TunePebble(ro)
		db, err := pebble.Open(filepath.Join(dir, "raw"), ro)
		if err != nil {
			b.Fatal(err)
		}
		rfs.wal.Store(0)
		rfs.other.Store(0)
		keys := make([][2][]byte, len(evs))
		var keyBytes int
		for i, ev := range evs {
			keys[i][0] = []byte("s\x00" + ev.App + "\x00" + ev.Actor.User)
			keys[i][1] = []byte("d\x00" + ev.StreamKey + "\x00" + ev.Actor.User + "\x00" + ev.ClientOpId)
			keyBytes += len(keys[i][0]) + len(keys[i][1])
		}
		// Per Set the WAL holds kind, two uvarint lengths, key and value:
		// size both values so the raw WAL matches what mdsync wrote.
		vsize := int((wal-int64(keyBytes))/int64(len(evs))-6) / 2
		vsize = max(vsize, 1)
		// Values are the event's own encoding repeated, not zeros: Pebble
		// compresses tables, and zeros would make the baseline's flushes
		// and compactions unrealistically cheap.
		values := make([][]byte, len(evs))
		for i, r := range recs {
			values[i] = make([]byte, vsize)
			for o := 0; o < vsize; o += copy(values[i][o:], r.Value) {
			}
		}
		cp := make([]byte, 24)
		b.StartTimer()
		start = time.Now()
		for i := 0; i < len(evs); i += applyBatch {
			batch := db.NewBatch()
			for j := i; j < min(i+applyBatch, len(evs)); j++ {
				_ = batch.Set(keys[j][0], values[j], nil)
				_ = batch.Set(keys[j][1], values[j], nil)
			}
			binary.BigEndian.PutUint64(cp, uint64(i))
			_ = batch.Set([]byte("c\x00\x00\x00\x00\x00"), cp, nil)
			if err := db.Apply(batch, pebble.NoSync); err != nil {
				b.Fatal(err)
			}
			batch.Close()
		}
		rawTime += time.Since(start)
		b.StopTimer()
		if err := db.Close(); err != nil {
			b.Fatal(err)
		}
		rawWAL += rfs.wal.Load()
		rawOther += rfs.other.Load()
		os.RemoveAll(dir) // 100k events a round: keep the disk footprint flat
		b.StartTimer()
	}
	b.StopTimer()
	n := float64(total)
	raw, md := n/rawTime.Seconds(), n/mdTime.Seconds()
	b.ReportMetric(raw, "raw_ev/s")
	b.ReportMetric(md, "mdsync_ev/s")
	b.ReportMetric(md/raw, "ratio")
	b.ReportMetric(float64(mdWAL)/n, "mdsync_walB/ev")
	b.ReportMetric(float64(rawWAL)/n, "raw_walB/ev")
	b.ReportMetric(float64(mdOther)/n, "mdsync_tableB/ev")
	b.ReportMetric(float64(rawOther)/n, "raw_tableB/ev")
	b.ReportMetric(float64(ended)/float64(decided), "ended/decision")
}

// BenchmarkLoginLatency: Engine.Submit of a login through node.New (embedded
// log fsync, projector apply, decision read) from 1 and 8 concurrent
// clients, against the disk's fsync latency measured on the same file
// system in the same round: a 200-byte write plus fsync on a plain file (one
// writer), and single-key Pebble Sync writes (as many writers as clients).
// p99_ratio is login p99 over file fsync p99; append_* isolates the log.
func BenchmarkLoginLatency(b *testing.B) {
	for _, clients := range []int{1, 8} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			dir := b.TempDir()
			ctx := context.Background()
			// node.New gives Pebble its default logger, which prints info
			// lines through the standard logger into the benchmark's result
			// line; errors still come back as returned errors.
			log.SetOutput(io.Discard)
			defer log.SetOutput(os.Stderr)
			nd, err := node.New(ctx, node.Options{Dir: filepath.Join(dir, "node")})
			if err != nil {
				b.Fatal(err)
			}
			defer nd.Close()
			f, err := os.Create(filepath.Join(dir, "fsync-probe"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			db := openRawPebble(b, filepath.Join(dir, "raw"), nil)
			defer db.Close()
			buf := make([]byte, 200)
			var logins, appends, fsyncs, psyncs []time.Duration
			var wall time.Duration
			b.ResetTimer()
			for round := 0; round < b.N; round++ {
				// Interleave the four measurements in small chunks: the
				// disk's fsync tail comes in bursts of a few hundred ms,
				// and each figure must sample the same bursts.
				for c := 0; c < latencyOpsPerRound; c += latencyChunk {
					base := round*latencyOpsPerRound + c
					_, lat, err := runConcurrent(1, latencyChunk, func(int) error {
						if _, err := f.Write(buf); err != nil {
							return err
						}
						return f.Sync()
					})
					if err != nil {
						b.Fatal(err)
					}
					fsyncs = append(fsyncs, lat...)
					// Pebble Sync writes from as many writers as clients: what
					// the disk gives concurrent durable writes, group commit
					// included.
					_, lat, err = runConcurrent(clients, latencyChunk, func(i int) error {
						return db.Set(binary.BigEndian.AppendUint64(nil, uint64(base+i)), buf, pebble.Sync)
					})
					if err != nil {
						b.Fatal(err)
					}
					psyncs = append(psyncs, lat...)
					// 1000 users, so a user logs in every ~1000 ops and the
					// per-platform limit starts evicting after a few rounds.
					d, lat, err := runConcurrent(clients, latencyChunk, func(i int) error {
						seq := base + i
						op := loginOp(fmt.Sprintf("user-%07d", seq%1000), seq, int32(1+seq%3))
						dec, err := nd.Engine.Submit(ctx, op)
						if err == nil && dec.Code != 0 {
							err = fmt.Errorf("login refused: %v", dec)
						}
						return err
					})
					if err != nil {
						b.Fatal(err)
					}
					logins = append(logins, lat...)
					wall += d
					// The log's share of a login: appends alone through the
					// same node log, same concurrency, events of other users.
					_, lat, err = runConcurrent(clients, latencyChunk, func(i int) error {
						seq := base + i
						ev := envelope(loginOp(fmt.Sprintf("apuser-%07d", seq%1000), seq, int32(1+seq%3)), time.Now().UnixMilli())
						rs := encodeAll(b, []*pb.Event{ev}, nd.Log.Partitions())
						_, err := nd.Log.Append(ctx, rs)
						return err
					})
					if err != nil {
						b.Fatal(err)
					}
					appends = append(appends, lat...)
				}
			}
			b.StopTimer()
			lp50, lp99 := percentile(logins, 0.50), percentile(logins, 0.99)
			fp50, fp99 := percentile(fsyncs, 0.50), percentile(fsyncs, 0.99)
			pp50, pp99 := percentile(psyncs, 0.50), percentile(psyncs, 0.99)
			b.ReportMetric(ms(percentile(appends, 0.50)), "append_p50_ms")
			b.ReportMetric(ms(percentile(appends, 0.99)), "append_p99_ms")
			b.ReportMetric(ms(lp50), "login_p50_ms")
			b.ReportMetric(ms(lp99), "login_p99_ms")
			b.ReportMetric(ms(fp50), "fsync_p50_ms")
			b.ReportMetric(ms(fp99), "fsync_p99_ms")
			b.ReportMetric(ms(pp50), "pebble_sync_p50_ms")
			b.ReportMetric(ms(pp99), "pebble_sync_p99_ms")
			b.ReportMetric(float64(lp99)/float64(fp99), "p99_ratio")
			b.ReportMetric(float64(lp99)/float64(pp99), "p99_vs_pebble")
			b.ReportMetric(float64(len(logins))/wall.Seconds(), "logins/s")
		})
	}
}

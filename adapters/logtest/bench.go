package logtest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/mdsync/mdsync/engine"
)

// BenchRecordBytes is the len(Key)+len(Value) of every record Bench writes.
const BenchRecordBytes = 256

const benchKeyBytes = 16

// BenchPartitions is the partition count Bench asks the factory for.
const BenchPartitions = 8

// Bench measures an adapter with logs made by f. One op is one record, so
// ns/op and MB/s compare across sub-benchmarks and adapters:
//
//   - Append/appenders=N: N goroutines each appending one record per call;
//     N=1 is the latency of a durable append, larger N shows group commit.
//   - AppendBatch/records=N: one goroutine appending N records per call.
//   - Read/max=N: reading back a partition sequentially, N per Read.
func Bench(b *testing.B, f Factory) {
	for _, n := range []int{1, 16, 128} {
		b.Run(fmt.Sprintf("Append/appenders=%d", n), func(b *testing.B) { benchAppend(b, f, n) })
	}
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("AppendBatch/records=%d", n), func(b *testing.B) { benchAppendBatch(b, f, n) })
	}
	b.Run("Read/max=1000", func(b *testing.B) { benchRead(b, f, 1000) })
}

// benchRecord is record i of a run: keys spread over partitions like real
// stream keys do.
func benchRecord(i int, value []byte) engine.Record {
	key := fmt.Appendf(make([]byte, 0, benchKeyBytes), "user-%011d", i%10007)
	return engine.Record{
		Partition: engine.PartitionFor(key, BenchPartitions),
		Key:       key[:benchKeyBytes],
		Value:     value,
	}
}

func benchValue() []byte {
	v := make([]byte, BenchRecordBytes-benchKeyBytes)
	for i := range v {
		v[i] = byte('a' + i%26)
	}
	return v
}

func benchLog(b *testing.B, f Factory) engine.Log {
	b.Helper()
	l, _ := f(b, BenchPartitions)
	b.Cleanup(func() { _ = l.Close() })
	return l
}

func benchAppend(b *testing.B, f Factory, appenders int) {
	l := benchLog(b, f)
	ctx := context.Background()
	value := benchValue()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, appenders)
	b.SetBytes(BenchRecordBytes)
	b.ReportAllocs()
	b.ResetTimer()
	for g := 0; g < appenders; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			recs := make([]engine.Record, 1)
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				recs[0] = benchRecord(i, value)
				if _, err := l.Append(ctx, recs); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

func benchAppendBatch(b *testing.B, f Factory, size int) {
	l := benchLog(b, f)
	ctx := context.Background()
	value := benchValue()
	recs := make([]engine.Record, 0, size)
	b.SetBytes(BenchRecordBytes)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; {
		recs = recs[:0]
		for ; len(recs) < size && i < b.N; i++ {
			recs = append(recs, benchRecord(i, value))
		}
		if _, err := l.Append(ctx, recs); err != nil {
			b.Fatal(err)
		}
	}
}

func benchRead(b *testing.B, f Factory, max int) {
	l := benchLog(b, f)
	ctx := context.Background()
	value := benchValue()
	// Everything in partition 0, so the read is one sequential scan.
	recs := make([]engine.Record, 0, 1000)
	for i := 0; i < b.N; {
		recs = recs[:0]
		for ; len(recs) < cap(recs) && i < b.N; i++ {
			r := benchRecord(i, value)
			r.Partition = 0
			recs = append(recs, r)
		}
		if _, err := l.Append(ctx, recs); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(BenchRecordBytes)
	b.ReportAllocs()
	b.ResetTimer()
	for from := int64(0); from < int64(b.N); {
		es, err := l.Read(ctx, 0, from, max)
		if err != nil {
			b.Fatal(err)
		}
		from += int64(len(es))
	}
}

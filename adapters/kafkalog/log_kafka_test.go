package kafkalog

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdsync/mdsync/adapters/internal/testutil"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/mdsync/mdsync/adapters/logtest"
	"github.com/mdsync/mdsync/engine"
)

// testMaxRecordBytes is small so the size tests stay cheap.
const testMaxRecordBytes = 64 << 10

// brokers returns the real broker list, or starts a kfake cluster that lives
// until tb ends.
func brokers(tb testing.TB) []string { return testutil.Brokers(tb) }

// uniqueTopic names a topic no earlier test (nor run, on a real broker)
// used.
func uniqueTopic(tb testing.TB) string { return testutil.UniqueTopic(tb) }

func open(tb testing.TB, o Options) *Log {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := Open(ctx, o)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	return l
}

// factory makes logtest factories over one broker set: each log gets a
// fresh topic; reopen opens the same topic without creating it.
func factory(bs []string, maxRecordBytes int) logtest.Factory {
	return func(tb testing.TB, partitions int32) (engine.Log, func() engine.Log) {
		o := Options{
			Brokers:        bs,
			Topic:          uniqueTopic(tb),
			Partitions:     partitions,
			CreateTopic:    true,
			MaxRecordBytes: maxRecordBytes,
		}
		l := open(tb, o)
		o.CreateTopic = false
		return l, func() engine.Log { return open(tb, o) }
	}
}

func TestConformance(t *testing.T) {
	logtest.Run(t, factory(brokers(t), testMaxRecordBytes), logtest.Features{
		Persistent:     true,
		MaxRecordBytes: testMaxRecordBytes,
		AtomicRejects:  true,
		Timeout:        10 * time.Second,
	})
}

func TestOpenChecksTopic(t *testing.T) {
	bs := brokers(t)
	topic := uniqueTopic(t)
	ctx := context.Background()

	_, err := Open(ctx, Options{Brokers: bs, Topic: topic, Partitions: 3})
	if !errors.Is(err, ErrTopic) {
		t.Fatalf("Open of a missing topic without CreateTopic: err = %v, want ErrTopic", err)
	}
	l := open(t, Options{Brokers: bs, Topic: topic, Partitions: 3, CreateTopic: true})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = Open(ctx, Options{Brokers: bs, Topic: topic, Partitions: 4, CreateTopic: true})
	if !errors.Is(err, ErrTopic) || !strings.Contains(err.Error(), "has 3 partitions") {
		t.Fatalf("Open with another partition count: err = %v, want ErrTopic naming 3 partitions", err)
	}
	l = open(t, Options{Brokers: bs, Topic: topic, Partitions: 3})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestOptionsValidate(t *testing.T) {
	ok := Options{Brokers: []string{"127.0.0.1:1"}, Topic: "t"}
	ok.EnsureDefaults()
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if ok.Partitions != DefaultPartitions || ok.MaxRecordBytes != DefaultMaxRecordBytes || ok.Linger != 0 {
		t.Fatalf("unexpected defaults: %+v", ok)
	}
	for name, mut := range map[string]func(*Options){
		"no brokers":    func(o *Options) { o.Brokers = nil },
		"no topic":      func(o *Options) { o.Topic = "" },
		"partitions":    func(o *Options) { o.Partitions = -1 },
		"rf":            func(o *Options) { o.ReplicationFactor = -1 },
		"linger":        func(o *Options) { o.Linger = -time.Millisecond },
		"batch size":    func(o *Options) { o.BatchSize = -1 },
		"read max wait": func(o *Options) { o.ReadMaxWait = time.Microsecond },
	} {
		o := ok
		mut(&o)
		if err := o.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, o)
		}
	}
}

// Many small concurrent Appends to one partition are grouped, and each still
// gets its own exact offset.
func TestGroupCommitOffsets(t *testing.T) {
	l := open(t, Options{Brokers: brokers(t), Topic: uniqueTopic(t), Partitions: 2, CreateTopic: true})
	defer l.Close()
	ctx := context.Background()
	const n = 64
	var wg sync.WaitGroup
	got := make([]engine.Position, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pos, err := l.Append(ctx, []engine.Record{{Partition: 1, Value: []byte(fmt.Sprint(i))}})
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = pos[0]
		}()
	}
	wg.Wait()
	for i, p := range got {
		es, err := l.Read(ctx, 1, p.Offset, 1)
		if err != nil {
			t.Fatal(err)
		}
		if string(es[0].Value) != fmt.Sprint(i) {
			t.Fatalf("append %d at %d holds %q", i, p.Offset, es[0].Value)
		}
	}
}

// benchFactory opens logs on one broker set shared by the whole benchmark
// binary run (kfake's startup stays out of the numbers).
var (
	benchOnce    sync.Once
	benchBrokers []string
)

func sharedBrokers(b *testing.B) []string {
	benchOnce.Do(func() {
		if env := os.Getenv(testutil.BrokersEnv); env != "" {
			benchBrokers = strings.Split(env, ",")
			return
		}
		// Lives until the process exits: benchmarks share it.
		c, err := kfake.NewCluster(kfake.NumBrokers(1))
		if err != nil {
			b.Fatalf("kfake: %v", err)
		}
		benchBrokers = c.ListenAddrs()
	})
	return benchBrokers
}

func BenchmarkAppend(b *testing.B) {
	logtest.Bench(b, factory(sharedBrokers(b), 0))
}

// bareWriterBatchTimeout is the bare Writer's BatchTimeout. kafka-go has no
// "send at once": its zero value means 1 s, so the smallest useful value
// stands in for the Log's default Linger of 0.
const bareWriterBatchTimeout = time.Millisecond

// BenchmarkBareWriter is the floor the Log is measured against: a kafka-go
// Writer with acks=all, records of the same size and partition as
// logtest.Bench's, written synchronously (WriteMessages returns after the
// acks). It reports no offsets, which is what the Log adds.
func BenchmarkBareWriter(b *testing.B) {
	for _, n := range []int{1, 16, 128} {
		b.Run(fmt.Sprintf("appenders=%d", n), func(b *testing.B) { benchBareWriter(b, n, 1) })
	}
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) { benchBareWriter(b, 1, n) })
	}
}

func benchBareWriter(b *testing.B, appenders, batch int) {
	bs := sharedBrokers(b)
	topic := uniqueTopic(b)
	// Create the topic the same way the Log does.
	l := open(b, Options{Brokers: bs, Topic: topic, Partitions: logtest.BenchPartitions, CreateTopic: true})
	defer l.Close()

	w := &kafka.Writer{
		Addr:  kafka.TCP(bs...),
		Topic: topic,
		// A transport of its own, like the Log's: kafka-go's shared default
		// may hold metadata from before the topic existed.
		Transport:    &kafka.Transport{MetadataTopics: []string{topic}},
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: bareWriterBatchTimeout,
		// kafka-go's own defaults, stated: a larger BatchSize makes the
		// Writer allocate a slice that big per batch (1.5 MB/op at 10000).
		BatchSize:  100,
		BatchBytes: 1 << 20,
		// The partition the engine would choose, like the Log.
		Balancer: kafka.BalancerFunc(func(m kafka.Message, ps ...int) int {
			return int(engine.PartitionFor(m.Key, int32(len(ps))))
		}),
	}
	defer w.Close()

	value := make([]byte, logtest.BenchRecordBytes-16)
	for i := range value {
		value[i] = byte('a' + i%26)
	}
	ctx := context.Background()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, appenders)
	b.SetBytes(logtest.BenchRecordBytes)
	b.ReportAllocs()
	b.ResetTimer()
	for range appenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs := make([]kafka.Message, 0, batch)
			for {
				start := int(next.Add(int64(batch))) - batch
				if start >= b.N {
					return
				}
				msgs = msgs[:0]
				for i := start; i < start+batch && i < b.N; i++ {
					key := fmt.Appendf(make([]byte, 0, 16), "user-%011d", i%10007)
					msgs = append(msgs, kafka.Message{Key: key[:16], Value: value})
				}
				if err := w.WriteMessages(ctx, msgs...); err != nil {
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

package benchmarks

import (
	"context"
	"fmt"
	"github.com/mdsync/mdsync/adapters/kafkagroup"
	"io"
	"log"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/mdsync/mdsync/adapters/kafkalog"
	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// Kafka benchmarks run on a real broker only: MDSYNC_KAFKA_BROKERS (make
// kafka-test's broker: `bash .ci/kafka/start.sh`). kfake's latencies say
// nothing about Kafka's.
const (
	kafkaBenchParts      = 8
	kafkaOpsPerRound     = 800 // logins (and baseline produces) per round and client count
	kafkaChunk           = 100 // ops per measurement, the two sides interleaved
	kafkaBenchUsers      = 1000
	kafkaBenchReadyLimit = 90 * time.Second
)

func kafkaBenchBrokers(b *testing.B) []string {
	env := os.Getenv("MDSYNC_KAFKA_BROKERS")
	if env == "" {
		b.Skip("needs a real Kafka broker: MDSYNC_KAFKA_BROKERS")
	}
	return strings.Split(env, ",")
}

// BenchmarkKafkaLogin measures a login's decision round trip on Kafka:
// Engine.Submit through an owned-mode node (one process, every partition
// assigned by the consumer group): validate, produce with acks=all, fetch
// it back, apply in Pebble, read the decision. The baseline, measured in
// the same rounds from as many clients: a bare kafka-go Client.Produce with
// acks=all of one record of the same bytes to the same partition of a
// topic of its own — the append alone, without offsets handed back in
// order, projection or decision. login_p99_ms has the goal ≤ 10 ms;
// ops_ratio is logins/s over produces/s.
func BenchmarkKafkaLogin(b *testing.B) {
	brokers := kafkaBenchBrokers(b)
	log.SetOutput(io.Discard) // Pebble's default logger
	defer log.SetOutput(os.Stderr)
	for _, clients := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			ctx := context.Background()
			id := fmt.Sprintf("%d", time.Now().UnixNano())
			octx, cancel := context.WithTimeout(ctx, kafkaBenchReadyLimit)
			defer cancel()
			nd, err := node.New(octx, node.Options{
				Dir:   b.TempDir(),
				Kafka: &kafkalog.Options{Brokers: brokers, Topic: "mdsync-bench." + id, Partitions: kafkaBenchParts, CreateTopic: true},
				Group: &kafkagroup.Options{
					GroupID: "mdsync-bench." + id, Addr: "127.0.0.1:1",
					Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				},
			})
			if err != nil {
				b.Fatal(err)
			}
			defer nd.Close()
			for len(nd.Owned()) < kafkaBenchParts {
				if octx.Err() != nil {
					b.Fatalf("partitions not all served after %v: %v", kafkaBenchReadyLimit, nd.Owned())
				}
				time.Sleep(20 * time.Millisecond)
			}
			// The baseline's topic, created like the log's.
			base, err := kafkalog.Open(octx, kafkalog.Options{Brokers: brokers, Topic: "mdsync-bench-raw." + id, Partitions: kafkaBenchParts, CreateTopic: true})
			if err != nil {
				b.Fatal(err)
			}
			base.Close()
			client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second,
				Transport: &kafka.Transport{MetadataTopics: []string{"mdsync-bench-raw." + id}}}

			var logins, produces []time.Duration
			var loginWall, produceWall time.Duration
			b.ResetTimer()
			for round := 0; round < b.N; round++ {
				for c := 0; c < kafkaOpsPerRound; c += kafkaChunk {
					seq0 := round*kafkaOpsPerRound + c
					d, lat, err := runConcurrent(clients, kafkaChunk, func(i int) error {
						seq := seq0 + i
						op := loginOp(fmt.Sprintf("user-%07d", seq%kafkaBenchUsers), seq, int32(1+seq%3))
						dec, err := nd.Engine.Submit(ctx, op)
						if err == nil && dec.Code != 0 {
							err = fmt.Errorf("login refused: %v", dec)
						}
						return err
					})
					if err != nil {
						b.Fatal(err)
					}
					logins, loginWall = append(logins, lat...), loginWall+d
					d, lat, err = runConcurrent(clients, kafkaChunk, func(i int) error {
						seq := seq0 + i
						ev := envelope(loginOp(fmt.Sprintf("user-%07d", seq%kafkaBenchUsers), seq, int32(1+seq%3)), time.Now().UnixMilli())
						return rawProduce(ctx, client, "mdsync-bench-raw."+id, ev)
					})
					if err != nil {
						b.Fatal(err)
					}
					produces, produceWall = append(produces, lat...), produceWall+d
				}
			}
			b.StopTimer()
			lp99, pp99 := percentile(logins, 0.99), percentile(produces, 0.99)
			b.ReportMetric(ms(percentile(logins, 0.50)), "login_p50_ms")
			b.ReportMetric(ms(lp99), "login_p99_ms")
			b.ReportMetric(ms(percentile(produces, 0.50)), "produce_p50_ms")
			b.ReportMetric(ms(pp99), "produce_p99_ms")
			lps := float64(len(logins)) / loginWall.Seconds()
			pps := float64(len(produces)) / produceWall.Seconds()
			b.ReportMetric(lps, "logins/s")
			b.ReportMetric(pps, "produces/s")
			b.ReportMetric(lps/pps, "ops_ratio")
			b.ReportMetric(float64(lp99)/float64(pp99), "p99_ratio")
		})
	}
}

// rawProduce writes ev's bytes as one record with acks=all to the
// partition the engine would choose.
func rawProduce(ctx context.Context, c *kafka.Client, topic string, ev *pb.Event) error {
	v, err := engine.Encode(ev)
	if err != nil {
		return err
	}
	res, err := c.Produce(ctx, &kafka.ProduceRequest{
		Topic: topic, Partition: int(engine.PartitionFor([]byte(ev.StreamKey), kafkaBenchParts)),
		RequiredAcks: kafka.RequireAll,
		Records:      kafka.NewRecordReader(kafka.Record{Key: kafka.NewBytes([]byte(ev.StreamKey)), Value: kafka.NewBytes(v)}),
	})
	if err == nil && res.Error != nil {
		err = res.Error
	}
	return err
}

package replaytest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mdsync/mdsync/adapters/kafkalog"
	"github.com/mdsync/mdsync/engine"
	"github.com/twmb/franz-go/pkg/kfake"
)

// ToKafka appends every record of lg, partition by partition, to a new
// topic of a kfake cluster and returns the brokers and the topic.
func ToKafka(t testing.TB, lg engine.Log) (string, string) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	brokers, topic := c.ListenAddrs(), "mdsync.log"
	kl, err := kafkalog.Open(ctx, kafkalog.Options{Brokers: brokers, Topic: topic, Partitions: lg.Partitions(), CreateTopic: true})
	if err != nil {
		t.Fatal(err)
	}
	defer kl.Close()
	for p := int32(0); p < lg.Partitions(); p++ {
		end, err := lg.End(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		for off := int64(0); off < end; {
			ents, err := lg.Read(ctx, p, off, 200)
			if err != nil {
				t.Fatal(err)
			}
			recs := make([]engine.Record, len(ents))
			for i, e := range ents {
				recs[i] = engine.Record{Partition: p, Key: e.Key, Value: e.Value}
			}
			pos, err := kl.Append(ctx, recs)
			if err != nil {
				t.Fatal(err)
			}
			if pos[0].Offset != off {
				t.Fatalf("copied %d/%d to offset %d", p, off, pos[0].Offset)
			}
			off += int64(len(ents))
		}
	}
	return strings.Join(brokers, ","), topic
}

// Command consumer is an example consumer of mdsync's Kafka topic in its
// own consumer group (docs/events.md): it decodes each record as a
// mdsync.v1.Event and prints it in the protobuf JSON mapping, one line per
// event, with the record's partition and offset. It commits offsets after
// printing (at-least-once; event_id identifies duplicates).
//
//	go run ./docs/examples/consumer -brokers 127.0.0.1:9092 -topic mdsync.log -group analytics
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/segmentio/kafka-go"
	"google.golang.org/protobuf/encoding/protojson"
)

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "comma-separated Kafka brokers")
	topic := flag.String("topic", "mdsync.log", "mdsync's log topic")
	group := flag.String("group", "mdsync-example-consumer", "this consumer's group (never mdsync's own)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: strings.Split(*brokers, ","), Topic: *topic, GroupID: *group,
		StartOffset: kafka.FirstOffset, // a new group reads the log from the start
	})
	defer r.Close()
	mo := protojson.MarshalOptions{UseProtoNames: true}
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Fatal(err)
		}
		ev, err := engine.Decode(m.Value)
		if err != nil {
			log.Printf("partition %d offset %d: %v (skipped)", m.Partition, m.Offset, err)
		} else if ev.SchemaVersion > engine.SchemaVersion {
			// A newer envelope: known fields still decode; say so.
			log.Printf("partition %d offset %d: schema_version %d is newer than %d", m.Partition, m.Offset, ev.SchemaVersion, engine.SchemaVersion)
		}
		if ev != nil && ev.Kind != pb.Kind_KIND_DELIVER { // DELIVER: fan-out copies of events already seen
			b, _ := mo.Marshal(ev)
			fmt.Printf("{\"partition\":%d,\"offset\":%d,\"event\":%s}\n", m.Partition, m.Offset, b)
		}
		if err := r.CommitMessages(ctx, m); err != nil && ctx.Err() == nil {
			log.Fatal(err)
		}
	}
}

package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/mdsync/mdsync/adapters/kafkagroup"
	"github.com/mdsync/mdsync/adapters/kafkalog"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// stressKafka holds stress's Kafka flags: with brokers set, stress runs an
// owned-mode node (node.New with a Group) on a shared topic, as one of several
// processes; the Kafka fault tests (kafka_fault_test.go) drive it.
type stressKafka struct {
	brokers, topic, group, addr string
}

func stressKafkaFlags(fs *flag.FlagSet) *stressKafka {
	k := &stressKafka{}
	fs.StringVar(&k.brokers, "kafka-brokers", "", "run on this Kafka cluster (comma-separated) in owned mode instead of the embedded log")
	fs.StringVar(&k.topic, "kafka-topic", "mdsync.stress", "the log's topic (created when missing)")
	fs.StringVar(&k.group, "kafka-group", "mdsync.stress", "the consumer group of the processes sharing the topic")
	fs.StringVar(&k.addr, "addr", "127.0.0.1:0", "the address published as owner (stress serves no HTTP)")
	return k
}

func (k *stressKafka) open(ctx context.Context, dir string, parts int32) (*node.Node, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	octx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return node.New(octx, node.Options{
		Dir:   dir,
		Kafka: &kafkalog.Options{Brokers: strings.Split(k.brokers, ","), Topic: k.topic, Partitions: parts, CreateTopic: true},
		Group: &kafkagroup.Options{
			GroupID: k.group, Addr: k.addr,
			Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
		},
	})
}

// transient reports errors a Kafka stress worker skips: the user's
// partition is served elsewhere or being restored (1018, 1009), or the
// broker is away (1009). The operation was not acknowledged; the worker
// moves on after a pause. On the embedded log every error stops stress.
func (k *stressKafka) transient(err error) bool {
	if k.brokers == "" {
		return false
	}
	switch engine.CodeOf(err) {
	case engine.CodeNotOwner, engine.CodeUnavailable:
		time.Sleep(20 * time.Millisecond)
		return true
	}
	fmt.Fprintln(os.Stderr, "stress:", err)
	return false
}

// op is stress's next operation. On Kafka a quarter are 1:1 messages to
// another user, so the relay's copies cross partitions (and, in the fault
// tests, rebalances and restarts); on the embedded log the mix is
// stressOp's alone, as the crash test expects.
func (k *stressKafka) op(rng *rand.Rand, users int, opID string) *pb.Event {
	if k.brokers == "" || users < 2 || rng.IntN(4) != 0 {
		return stressOp(rng, users, opID)
	}
	from := rng.IntN(users)
	to := (from + 1 + rng.IntN(users-1)) % users
	return &pb.Event{
		App: "stress", ClientOpId: opID, Kind: pb.Kind_KIND_MESSAGE_SEND,
		Actor: &pb.Actor{User: fmt.Sprintf("u%d", from)},
		Payload: &pb.Event_Message{Message: &pb.MessageSend{
			ChatType: pb.ChatType_CHAT_TYPE_USER, To: fmt.Sprintf("u%d", to), ClientMsgId: opID, Body: []byte(opID),
		}},
	}
}

package bus

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"
)

// Watermill's universal Pub/Sub suite on the bus's kafka-go Publisher and
// Subscriber (kfake in-process, or MDSYNC_KAFKA_BROKERS).
//
// Two adaptations, both outside the code under test:
//   - The bus's Publisher and Subscriber serve one topic each (a Bus has
//     one); the suite uses a topic per test and several per test, so
//     multiTopic keeps one newKafka transport per topic, created (with the
//     bus's ensureTopic) by SubscribeInitialize or on first use.
//   - The suite publishes before it subscribes, so its subscribers read
//     from each partition's first offset (kafkaSubscriber.fromFirst).
//     Production subscribers start at the end; TestKafkaSubscriberNackRedelivers
//     proves that.
//
// What the suite skips, and why:
//   - TestConsumerGroups: the bus has no consumer groups by design; every
//     process, and every handler, gets every effect.
//   - TestReconnect: it needs a command that restarts the broker; kfake has
//     none. TestKafkaPublishErrorCounted covers a broker that goes away.
func TestKafkaUniversalPubSub(t *testing.T) {
	brokers := kafkaBrokers(t)
	features := tests.Features{
		// No consumer groups: see above.
		ConsumerGroups: false,
		// At least once: a nacked message is sent again, and a subscriber
		// that starts again reads again (there is no committed position).
		ExactlyOnceDelivery: false,
		// Order is per record key (app and user, from the metadata); the
		// suite's messages have neither, so they share a key and a
		// partition, and each subscription reads a partition in order,
		// holding each message until it is acked.
		GuaranteedOrder: true,
		// The topic keeps messages (Options.Retention), so a subscriber
		// reading from the first offset sees what other instances published.
		Persistent:                       true,
		NewSubscriberReceivesOldMessages: true,
		// Any number of instances: nothing is shared between them but the
		// topic.
		RequireSingleInstance: false,
		// The message's context is the subscription's, cancelled on ack,
		// nack or the subscription's end; not the publisher's.
		ContextPreserved: false,
		// Full sizes (~12 s on kfake, 5000 messages to 50 subscribers);
		// -short runs the suite's short sizes (~2 s).
		ForceShort: false,
		GenerateTopicFunc: func(tctx tests.TestContext) string {
			return "mdsync-test.watermill." + string(tctx.TestID)
		},
	}
	newPubSub := func(t *testing.T) (message.Publisher, message.Subscriber) {
		o := kafkaOptions(t, brokers, "")
		o.Partitions = 2
		// Each Close waits for the fetches in flight; the suite closes a
		// few hundred subscribers.
		o.ReadMaxWait = 100 * time.Millisecond
		o.EnsureDefaults()
		return &multiTopic{t: t, o: o, pub: true}, &multiTopic{t: t, o: o}
	}
	tests.TestPubSub(t, features, newPubSub, nil)
}

// multiTopic is a Publisher or a Subscriber over one bus Kafka transport
// per topic.
type multiTopic struct {
	t   *testing.T
	o   Options
	pub bool // the Publisher half: Close closes its writers

	mu     sync.Mutex
	ks     map[string]*kafkaTransport
	closed bool
}

var (
	_ message.Publisher            = (*multiTopic)(nil)
	_ message.Subscriber           = (*multiTopic)(nil)
	_ message.SubscribeInitializer = (*multiTopic)(nil)
)

func (m *multiTopic) transport(topic string) (*kafkaTransport, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if k := m.ks[topic]; k != nil {
		return k, nil
	}
	o := m.o
	o.Topic = topic
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k, err := newKafka(ctx, &o, o.Logger)
	if err != nil {
		return nil, err
	}
	k.sub.fromFirst = true
	if m.ks == nil {
		m.ks = map[string]*kafkaTransport{}
	}
	m.ks[topic] = k
	return k, nil
}

func (m *multiTopic) SubscribeInitialize(topic string) error {
	_, err := m.transport(topic)
	return err
}

func (m *multiTopic) Publish(topic string, msgs ...*message.Message) error {
	k, err := m.transport(topic)
	if err != nil {
		return err
	}
	return k.pub.Publish(topic, msgs...)
}

func (m *multiTopic) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	k, err := m.transport(topic)
	if err != nil {
		return nil, err
	}
	return k.sub.Subscribe(ctx, topic)
}

// Close closes every topic's transport; a second Close does nothing.
func (m *multiTopic) Close() error {
	m.mu.Lock()
	ks := m.ks
	m.ks, m.closed = nil, true
	m.mu.Unlock()
	var errs []error
	for _, k := range ks {
		errs = append(errs, k.Close())
	}
	return errors.Join(errs...)
}

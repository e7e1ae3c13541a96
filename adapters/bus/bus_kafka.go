package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/segmentio/kafka-go"

	"github.com/mdsync/mdsync/adapters/internal/kafkaadmin"
)

// Kafka record layout of an effect: key app "\x00" user (so kafka.Hash
// keeps one user's effects on one partition, in order), value the payload,
// headers the metadata plus the message UUID under uuidHeader.
const uuidHeader = "_uuid"

// kafkaTransport is the Kafka Publisher and Subscriber of one Bus.
type kafkaTransport struct {
	pub *kafkaPublisher
	sub *kafkaSubscriber
	tr  *kafka.Transport
}

func newKafka(ctx context.Context, o *Options, log *slog.Logger) (*kafkaTransport, error) {
	tr := &kafka.Transport{
		DialTimeout:    o.DialTimeout,
		MetadataTTL:    2 * time.Second,
		MetadataTopics: []string{o.Topic},
		ClientID:       o.ClientID,
	}
	client := &kafka.Client{Addr: kafka.TCP(o.Brokers...), Timeout: o.RequestTimeout, Transport: tr}
	if err := ensureTopic(ctx, client, o); err != nil {
		tr.CloseIdleConnections()
		return nil, err
	}
	errLog := kafka.LoggerFunc(func(msg string, args ...any) { log.Warn("kafka: " + fmt.Sprintf(msg, args...)) })
	w := &kafka.Writer{
		Addr:  kafka.TCP(o.Brokers...),
		Topic: o.Topic,
		// One user's effects on one partition: per-user order.
		Balancer:        &kafka.Hash{},
		MaxAttempts:     3,
		WriteBackoffMin: 20 * time.Millisecond,
		WriteBackoffMax: 500 * time.Millisecond,
		BatchSize:       o.MaxBatch,
		BatchBytes:      4 << 20,
		// kafka-go's zero means 1 s; effects are latency-bound and the
		// pump already hands over whole batches.
		BatchTimeout: 2 * time.Millisecond,
		ReadTimeout:  o.RequestTimeout,
		WriteTimeout: o.RequestTimeout,
		// One replica's ack: an effect only tells the edges that the store
		// (the source of truth, fed by the durable log) changed. Losing one
		// in a leader failover delays a push until the device's next sync;
		// waiting for every in-sync replica would add that round trip to
		// every push's latency for no durability the system relies on.
		RequiredAcks: kafka.RequireOne,
		// Synchronous: the pump learns of failures and counts them.
		Async:                  false,
		Compression:            0, // none: small records, latency first
		ErrorLogger:            errLog,
		Transport:              tr,
		AllowAutoTopicCreation: false, // ensureTopic created it with our settings
	}
	dialer := &kafka.Dialer{Timeout: o.DialTimeout, ClientID: o.ClientID, DualStack: true}
	bctx, cancel := context.WithCancel(context.Background())
	return &kafkaTransport{
		tr:  tr,
		pub: &kafkaPublisher{w: w, timeout: o.RequestTimeout},
		sub: &kafkaSubscriber{
			o: o, client: client, dialer: dialer, log: log, errLog: errLog,
			ctx: bctx, cancel: cancel,
		},
	}, nil
}

// Close closes the writer and every reader; it waits for the readers.
func (k *kafkaTransport) Close() error {
	err := k.pub.Close()
	err2 := k.sub.Close()
	k.tr.CloseIdleConnections()
	return errors.Join(err, err2)
}

// ensureTopic creates the topic if it is missing, with a bounded retention
// (effects are for live processes only), and waits until every partition
// has a leader that answers. An existing topic is used with its own
// partition count.
func ensureTopic(ctx context.Context, c *kafka.Client, o *Options) error {
	ctx, cancel := context.WithTimeout(ctx, o.RequestTimeout)
	defer cancel()
	_, err := kafkaadmin.Ensure(ctx, c, kafkaadmin.Topic{
		Name:              o.Topic,
		Create:            true,
		Partitions:        o.Partitions,
		ReplicationFactor: o.ReplicationFactor,
		Configs:           map[string]string{"retention.ms": strconv.FormatInt(o.Retention.Milliseconds(), 10)},
	})
	if err != nil {
		return fmt.Errorf("bus: %w", err)
	}
	return nil
}

// kafkaPublisher is a Watermill Publisher on a kafka-go Writer.
type kafkaPublisher struct {
	w       *kafka.Writer
	timeout time.Duration
}

var _ message.Publisher = (*kafkaPublisher)(nil)

// Publish writes msgs in order and returns when the partition leaders have
// them (RequireOne) or failed. topic must be the writer's topic.
func (p *kafkaPublisher) Publish(topic string, msgs ...*message.Message) error {
	if topic != p.w.Topic {
		return fmt.Errorf("bus: publish to %q on a writer of %q", topic, p.w.Topic)
	}
	kms := make([]kafka.Message, len(msgs))
	for i, m := range msgs {
		hs := make([]kafka.Header, 0, len(m.Metadata)+1)
		hs = append(hs, kafka.Header{Key: uuidHeader, Value: []byte(m.UUID)})
		for k, v := range m.Metadata {
			hs = append(hs, kafka.Header{Key: k, Value: []byte(v)})
		}
		kms[i] = kafka.Message{
			Key:     []byte(m.Metadata.Get(metaApp) + "\x00" + m.Metadata.Get(metaUser)),
			Value:   m.Payload,
			Headers: hs,
		}
	}
	// Bounded even if a broker hangs: the pump must move on.
	ctx, cancel := context.WithTimeout(context.Background(), 2*p.timeout)
	defer cancel()
	if err := p.w.WriteMessages(ctx, kms...); err != nil {
		return fmt.Errorf("bus: kafka write: %w", err)
	}
	return nil
}

func (p *kafkaPublisher) Close() error { return p.w.Close() }

// kafkaSubscriber is a Watermill Subscriber on kafka-go Readers: every
// Subscribe reads every partition from its end at that moment, with no
// consumer group (every process, and every handler, gets every effect;
// what was published before is not its business: its devices catch up
// from the store when they connect). A message is held until acked; a
// nacked one is sent again. Partitions are read in parallel, each in
// order.
type kafkaSubscriber struct {
	o      *Options
	client *kafka.Client
	dialer *kafka.Dialer
	log    *slog.Logger
	errLog kafka.Logger

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// fromFirst makes Subscribe read every partition from its first
	// retained offset instead of its end. Only Watermill's universal
	// Pub/Sub suite sets it: its tests publish before they subscribe (as
	// watermill-kafka's tests set sarama's Offsets.Initial to OffsetOldest).
	// A Bus never does.
	fromFirst bool
}

var _ message.Subscriber = (*kafkaSubscriber)(nil)

// Subscribe returns once every partition's start offset is fixed: effects
// written after it returns reach the channel. The channel is closed when
// ctx is done or the subscriber closed.
func (s *kafkaSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if s.ctx.Err() != nil {
		return nil, ErrClosed
	}
	md, err := s.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("bus: metadata of %q: %w", topic, err)
	}
	n := 0
	for _, t := range md.Topics {
		if t.Name == topic {
			n = len(t.Partitions)
		}
	}
	if n == 0 {
		return nil, fmt.Errorf("bus: topic %q has no partitions", topic)
	}
	ends := make([]int64, n)
	if s.fromFirst {
		for p := range ends {
			ends[p] = kafka.FirstOffset
		}
	} else if ends, err = kafkaadmin.EndOffsets(ctx, s.client, topic, kafkaadmin.Range(n)...); err != nil {
		return nil, fmt.Errorf("bus: %w", err)
	}
	rctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	out := make(chan *message.Message)
	var wg sync.WaitGroup
	for p := range n {
		r := kafka.NewReader(kafka.ReaderConfig{
			Brokers:          s.o.Brokers,
			Topic:            topic,
			Partition:        p,
			Dialer:           s.dialer,
			QueueCapacity:    100,
			MinBytes:         1, // return as soon as anything is there
			MaxBytes:         4 << 20,
			MaxWait:          s.o.ReadMaxWait,
			ReadBatchTimeout: s.o.RequestTimeout,
			ReadLagInterval:  -1,
			ReadBackoffMin:   50 * time.Millisecond,
			ReadBackoffMax:   time.Second,
			ErrorLogger:      s.errLog,
			IsolationLevel:   kafka.ReadUncommitted,
			MaxAttempts:      3,
		})
		if err := r.SetOffset(ends[p]); err != nil {
			cancel()
			_ = r.Close()
			return nil, fmt.Errorf("bus: reader %q/%d: %w", topic, p, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.Close()
			s.read(rctx, r, out)
		}()
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		wg.Wait()
		stop()
		cancel()
		close(out)
	}()
	return out, nil
}

func (s *kafkaSubscriber) read(ctx context.Context, r *kafka.Reader, out chan<- *message.Message) {
	for {
		km, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// The reader retries connections itself; an error here is
			// persistent enough to say so, not to stop reading.
			s.log.Warn("bus: kafka read", "partition", r.Config().Partition, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		msg := message.NewMessage("", km.Value)
		for _, h := range km.Headers {
			if h.Key == uuidHeader {
				msg.UUID = string(h.Value)
			} else {
				msg.Metadata.Set(h.Key, string(h.Value))
			}
		}
		for {
			// A fresh copy each time: an acked or nacked message stays so.
			acked, ok := handOver(ctx, msg.Copy(), out)
			if !ok {
				return
			}
			if acked {
				break
			}
			// Nacked: send it again.
		}
	}
}

// handOver sends m on out and waits until it is acked (acked) or nacked.
// m's context is cancelled then (Watermill's convention: the work on a
// message ends with its ack or nack). ok is false when ctx ended first.
func handOver(ctx context.Context, m *message.Message, out chan<- *message.Message) (acked, ok bool) {
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.SetContext(mctx)
	select {
	case out <- m:
	case <-ctx.Done():
		return false, false
	}
	select {
	case <-m.Acked():
		return true, true
	case <-m.Nacked():
		return false, true
	case <-ctx.Done():
		return false, false
	}
}

// Close stops every subscription's readers and waits for them.
func (s *kafkaSubscriber) Close() error {
	s.cancel()
	s.wg.Wait()
	return nil
}

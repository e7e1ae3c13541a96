package kafkaadmin

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// These tests run on kfake only: several inject broker answers with kfake's
// control functions, which a real broker has no equivalent of. The real
// broker runs of adapters/kafkalog and adapters/bus go through Ensure and
// EndOffsets on every Open.

var topicSeq atomic.Int64

func cluster(t *testing.T) (*kfake.Cluster, *kafka.Client) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	tr := &kafka.Transport{MetadataTTL: 100 * time.Millisecond}
	t.Cleanup(tr.CloseIdleConnections)
	return c, &kafka.Client{Addr: kafka.TCP(c.ListenAddrs()...), Timeout: 5 * time.Second, Transport: tr}
}

func topicName(t *testing.T) string {
	return fmt.Sprintf("kafkaadmin.%s.%d", strings.ReplaceAll(t.Name(), "/", "."), topicSeq.Add(1))
}

func ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestEnsureCreatesWithConfigs(t *testing.T) {
	c, client := cluster(t)
	name := topicName(t)
	n, err := Ensure(ctx(t), client, Topic{
		Name: name, Create: true, Partitions: 3, ReplicationFactor: 1,
		Configs: map[string]string{"retention.ms": "1234", "retention.bytes": "-1"},
	})
	if err != nil || n != 3 {
		t.Fatalf("Ensure = %d, %v; want 3, nil", n, err)
	}
	info := c.TopicInfo(name)
	if info == nil {
		t.Fatal("topic not created")
	}
	for k, want := range map[string]string{"retention.ms": "1234", "retention.bytes": "-1"} {
		if v := info.Configs[k]; v == nil || *v != want {
			t.Errorf("config %s = %v, want %s", k, v, want)
		}
	}
	// Ensure again: nothing to create, same answer.
	if n, err := Ensure(ctx(t), client, Topic{Name: name}); err != nil || n != 3 {
		t.Fatalf("second Ensure = %d, %v; want 3, nil", n, err)
	}
}

func TestEnsureMissingWithoutCreate(t *testing.T) {
	c, client := cluster(t)
	name := topicName(t)
	_, err := Ensure(ctx(t), client, Topic{Name: name, Partitions: 2, ReplicationFactor: 1})
	if !errors.Is(err, ErrMissing) {
		t.Fatalf("Ensure of a missing topic without Create: %v, want ErrMissing", err)
	}
	if c.TopicInfo(name) != nil {
		t.Fatal("topic created although Create is off")
	}
	if _, err := Ensure(ctx(t), client, Topic{}); err == nil {
		t.Fatal("Ensure without a name succeeded")
	}
}

// An existing topic keeps its partition count; Ensure reports it.
func TestEnsureExistingKeepsItsPartitions(t *testing.T) {
	c, client := cluster(t)
	name := topicName(t)
	if err := c.CreateTopic(name, 5, nil); err != nil {
		t.Fatal(err)
	}
	n, err := Ensure(ctx(t), client, Topic{Name: name, Create: true, Partitions: 2, ReplicationFactor: 1})
	if err != nil || n != 5 {
		t.Fatalf("Ensure = %d, %v; want 5, nil", n, err)
	}
}

// Processes starting together race to create the topic: every one of them
// gets it ready (TopicAlreadyExists is not an error).
func TestEnsureConcurrentCreate(t *testing.T) {
	_, client := cluster(t)
	name := topicName(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			n, err := Ensure(ctx(t), client, Topic{Name: name, Create: true, Partitions: 4, ReplicationFactor: 1})
			if err == nil && n != 4 {
				err = fmt.Errorf("%d partitions", n)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Ensure %d: %v", i, err)
		}
	}
}

// failListOffsets makes the first fails list-offsets requests answer code
// on every partition, and counts the requests.
func failListOffsets(c *kfake.Cluster, fails int64, code int16) *atomic.Int64 {
	var calls atomic.Int64
	c.ControlKey(int16(kmsg.ListOffsets), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if calls.Add(1) > fails {
			return nil, nil, false
		}
		req := kreq.(*kmsg.ListOffsetsRequest)
		resp := req.ResponseKind().(*kmsg.ListOffsetsResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewListOffsetsResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewListOffsetsResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	return &calls
}

// A freshly elected leader refuses for a moment (not leader, too few
// in-sync replicas): Ensure waits it out instead of failing Open.
func TestEnsureWaitsForLeaders(t *testing.T) {
	for _, tc := range []struct {
		name string
		code int16
	}{
		{"NotLeaderForPartition", 6},
		{"LeaderNotAvailable", 5},
		{"NotEnoughReplicas", 19},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, client := cluster(t)
			calls := failListOffsets(c, 3, tc.code)
			n, err := Ensure(ctx(t), client, Topic{Name: topicName(t), Create: true, Partitions: 2, ReplicationFactor: 1})
			if err != nil || n != 2 {
				t.Fatalf("Ensure = %d, %v; want 2, nil", n, err)
			}
			if got := calls.Load(); got < 4 {
				t.Fatalf("%d list-offsets requests, want the 3 refused and one more", got)
			}
		})
	}
}

// An error that is not a refusal to retry ends Ensure at once, naming it.
func TestEnsureFailsOnOtherErrors(t *testing.T) {
	c, client := cluster(t)
	failListOffsets(c, 1000, 29) // TOPIC_AUTHORIZATION_FAILED
	start := time.Now()
	_, err := Ensure(ctx(t), client, Topic{Name: topicName(t), Create: true, Partitions: 1, ReplicationFactor: 1})
	if !errors.Is(err, kafka.TopicAuthorizationFailed) {
		t.Fatalf("Ensure = %v, want TopicAuthorizationFailed", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Ensure took %v to fail on an error it must not retry", d)
	}
}

// Ensure gives up when ctx ends, saying what it waited for.
func TestEnsureBoundedByContext(t *testing.T) {
	c, client := cluster(t)
	failListOffsets(c, 1_000_000, 6)
	cx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := Ensure(cx, client, Topic{Name: topicName(t), Create: true, Partitions: 1, ReplicationFactor: 1})
	if err == nil || !strings.Contains(err.Error(), "kafkaadmin:") {
		t.Fatalf("Ensure past its deadline = %v, want a kafkaadmin error", err)
	}
}

func TestEndOffsets(t *testing.T) {
	_, client := cluster(t)
	name := topicName(t)
	if _, err := Ensure(ctx(t), client, Topic{Name: name, Create: true, Partitions: 2, ReplicationFactor: 1}); err != nil {
		t.Fatal(err)
	}
	res, err := client.Produce(ctx(t), &kafka.ProduceRequest{
		Topic: name, Partition: 1, RequiredAcks: kafka.RequireAll,
		Records: kafka.NewRecordReader(kafka.Record{Value: kafka.NewBytes([]byte("a"))},
			kafka.Record{Value: kafka.NewBytes([]byte("b"))}, kafka.Record{Value: kafka.NewBytes([]byte("c"))}),
	})
	if err != nil || res.Error != nil {
		t.Fatalf("produce: %v %v", err, res.Error)
	}
	for _, tc := range []struct {
		ps   []int
		want []int64
	}{
		{Range(2), []int64{0, 3}},
		{[]int{1, 0}, []int64{3, 0}},
		{[]int{1}, []int64{3}},
	} {
		got, err := EndOffsets(ctx(t), client, name, tc.ps...)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("EndOffsets(%v) = %v, %v; want %v", tc.ps, got, err, tc.want)
		}
	}
	// A partition the topic does not have is an error, not a zero.
	if got, err := EndOffsets(ctx(t), client, name, 0, 7); err == nil {
		t.Errorf("EndOffsets of partition 7 of 2 = %v, want an error", got)
	}
}

func TestAllLed(t *testing.T) {
	led := kafka.Partition{Leader: kafka.Broker{Host: "b1", Port: 9092}}
	for _, tc := range []struct {
		name string
		ps   []kafka.Partition
		want bool
	}{
		{"empty", nil, false},
		{"all led", []kafka.Partition{led, led}, true},
		{"one without leader", []kafka.Partition{led, {}}, false},
		{"one in error", []kafka.Partition{led, {Leader: led.Leader, Error: kafka.LeaderNotAvailable}}, false},
	} {
		if got := AllLed(tc.ps); got != tc.want {
			t.Errorf("%s: AllLed = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestRetriable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{kafka.NotLeaderForPartition, true},
		{kafka.LeaderNotAvailable, true},
		{kafka.UnknownTopicOrPartition, true},
		{kafka.NotEnoughReplicas, true},
		{fmt.Errorf("wrapped: %w", kafka.NotEnoughReplicas), true},
		// Written, maybe: sending again could duplicate.
		{kafka.RequestTimedOut, false},
		{kafka.NotEnoughReplicasAfterAppend, false},
		{context.DeadlineExceeded, false},
		{kafka.TopicAuthorizationFailed, false},
		{nil, false},
	} {
		if got := Retriable(tc.err); got != tc.want {
			t.Errorf("Retriable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestRetry(t *testing.T) {
	bg := context.Background()
	t.Run("until success", func(t *testing.T) {
		calls := 0
		err := Retry(bg, 5*time.Second, func() error {
			if calls++; calls < 3 {
				return kafka.NotEnoughReplicas
			}
			return nil
		})
		if err != nil || calls != 3 {
			t.Fatalf("Retry = %v after %d calls, want nil after 3", err, calls)
		}
	})
	t.Run("not retriable", func(t *testing.T) {
		calls := 0
		err := Retry(bg, 5*time.Second, func() error { calls++; return kafka.RequestTimedOut })
		if !errors.Is(err, kafka.RequestTimedOut) || calls != 1 {
			t.Fatalf("Retry = %v after %d calls, want RequestTimedOut after 1", err, calls)
		}
	})
	t.Run("budget", func(t *testing.T) {
		start := time.Now()
		err := Retry(bg, 100*time.Millisecond, func() error { return kafka.LeaderNotAvailable })
		if !errors.Is(err, kafka.LeaderNotAvailable) {
			t.Fatalf("Retry = %v, want the last error", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("Retry with a 100ms budget took %v", d)
		}
	})
	t.Run("context", func(t *testing.T) {
		cx, cancel := context.WithCancel(bg)
		calls := 0
		err := Retry(cx, time.Hour, func() error { calls++; cancel(); return kafka.LeaderNotAvailable })
		if !errors.Is(err, kafka.LeaderNotAvailable) || calls != 1 {
			t.Fatalf("Retry = %v after %d calls, want the last error after 1", err, calls)
		}
	})
}

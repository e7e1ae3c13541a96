// Package kafkaadmin is the Kafka topic administration that the log
// (adapters/kafkalog) and the delivery bus (adapters/bus) share, so that the
// two cannot drift apart: creating a topic, waiting until every partition
// has a leader that answers, listing end offsets, and telling which broker
// errors mean a request was refused before anything was written.
//
// Every function takes a kafka-go Client the caller owns (its Transport, its
// timeouts); none keeps state between calls.
package kafkaadmin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/segmentio/kafka-go"
)

// ErrMissing is returned by Ensure for a topic that does not exist when
// Topic.Create is off.
var ErrMissing = errors.New("kafkaadmin: topic does not exist")

// Topic is what Ensure makes ready.
type Topic struct {
	// Name is the topic. Required.
	Name string

	// Create lets Ensure create the topic when it is missing, with
	// Partitions, ReplicationFactor and Configs. Off: a missing topic is
	// ErrMissing.
	Create bool

	// Partitions and ReplicationFactor are used only when Ensure creates
	// the topic; an existing topic keeps its own (Ensure returns its
	// partition count for the caller to check).
	Partitions        int
	ReplicationFactor int

	// Configs are the topic configs (retention.ms, min.insync.replicas, …)
	// of a topic Ensure creates. Sent in key order.
	Configs map[string]string
}

// Poll is how long Ensure waits between two looks at the topic's metadata
// while the topic is being created or its leaders elected.
const Poll = 50 * time.Millisecond

// Ensure creates t if it is missing and t.Create is set, then waits until
// every partition has a leader that answers a list-offsets request, so the
// caller can produce and fetch at once. It returns the topic's partition
// count. Another process creating the topic at the same moment is not an
// error. ctx bounds the whole wait: give it a deadline.
func Ensure(ctx context.Context, c *kafka.Client, t Topic) (int, error) {
	if t.Name == "" {
		return 0, errors.New("kafkaadmin: Topic.Name is required")
	}
	for created := false; ; {
		md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{t.Name}})
		if err != nil {
			return 0, fmt.Errorf("kafkaadmin: metadata of %q: %w", t.Name, err)
		}
		var kt *kafka.Topic
		for i := range md.Topics {
			if md.Topics[i].Name == t.Name {
				kt = &md.Topics[i]
			}
		}
		missing := kt == nil || errors.Is(kt.Error, kafka.UnknownTopicOrPartition)
		switch {
		case missing && t.Create && !created:
			if err := create(ctx, c, t); err != nil {
				return 0, err
			}
			created = true
			continue
		case missing && !created:
			return 0, fmt.Errorf("%w: %q", ErrMissing, t.Name)
		case missing:
			// Created, not yet in the metadata the broker answers with.
		case kt.Error != nil && !Retriable(kt.Error):
			return 0, fmt.Errorf("kafkaadmin: metadata of %q: %w", t.Name, kt.Error)
		case AllLed(kt.Partitions):
			n := len(kt.Partitions)
			_, err := EndOffsets(ctx, c, t.Name, Range(n)...)
			if err == nil {
				return n, nil
			}
			if !Retriable(err) {
				return 0, fmt.Errorf("kafkaadmin: topic %q not ready: %w", t.Name, err)
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("kafkaadmin: waiting for topic %q: %w", t.Name, ctx.Err())
		case <-time.After(Poll):
		}
	}
}

func create(ctx context.Context, c *kafka.Client, t Topic) error {
	var entries []kafka.ConfigEntry
	for _, k := range slices.Sorted(maps.Keys(t.Configs)) {
		entries = append(entries, kafka.ConfigEntry{ConfigName: k, ConfigValue: t.Configs[k]})
	}
	res, err := c.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic:             t.Name,
		NumPartitions:     t.Partitions,
		ReplicationFactor: t.ReplicationFactor,
		ConfigEntries:     entries,
	}}})
	if err != nil {
		return fmt.Errorf("kafkaadmin: create topic %q: %w", t.Name, err)
	}
	// Another process may have created it first: the caller's checks on
	// the partition count decide whether it fits.
	if err := res.Errors[t.Name]; err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
		return fmt.Errorf("kafkaadmin: create topic %q: %w", t.Name, err)
	}
	return nil
}

// AllLed reports whether every partition has a leader and no error. An
// empty list is not led: a topic without partitions cannot be served.
func AllLed(ps []kafka.Partition) bool {
	for _, p := range ps {
		if p.Error != nil || p.Leader.Host == "" {
			return false
		}
	}
	return len(ps) > 0
}

// Retriable reports Kafka errors that mean the request was refused before
// anything was written (the broker is not, or not yet, the partition's
// leader; too few in-sync replicas to accept acks=all), so sending it again
// cannot duplicate records. A new topic's leader also answers these for a
// moment after the controller has elected it. Timeouts are not here: a
// timed out produce may have been written.
func Retriable(err error) bool {
	return errors.Is(err, kafka.NotLeaderForPartition) ||
		errors.Is(err, kafka.LeaderNotAvailable) ||
		errors.Is(err, kafka.UnknownTopicOrPartition) ||
		errors.Is(err, kafka.NotEnoughReplicas)
}

// Backoff bounds of Retry: the first wait and the longest.
const (
	BackoffMin = 20 * time.Millisecond
	BackoffMax = 500 * time.Millisecond
)

// Retry calls fn until it succeeds, fails with an error that is not
// Retriable, budget has passed, or ctx is done; then it returns fn's last
// error (never ctx's: the caller decides how to report a cancelled wait).
// The backoff, BackoffMin doubling up to BackoffMax, gives a transport time
// to refresh its metadata after a leader moved.
func Retry(ctx context.Context, budget time.Duration, fn func() error) error {
	deadline := time.Now().Add(budget)
	backoff := BackoffMin
	for {
		err := fn()
		if err == nil || !Retriable(err) || time.Now().Add(backoff).After(deadline) {
			return err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		backoff = min(2*backoff, BackoffMax)
	}
}

// EndOffsets returns the high watermark (the offset after the last record
// every in-sync replica has) of each of topic's partitions, in the order
// asked, in one list-offsets request. A partition's error is returned
// wrapped, so Retriable sees it.
func EndOffsets(ctx context.Context, c *kafka.Client, topic string, partitions ...int) ([]int64, error) {
	reqs := make([]kafka.OffsetRequest, len(partitions))
	for i, p := range partitions {
		reqs[i] = kafka.LastOffsetOf(p)
	}
	res, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("kafkaadmin: list offsets of %q: %w", topic, err)
	}
	got := make(map[int]int64, len(partitions))
	for _, po := range res.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("kafkaadmin: list offsets of %q/%d: %w", topic, po.Partition, po.Error)
		}
		got[po.Partition] = po.LastOffset
	}
	ends := make([]int64, len(partitions))
	for i, p := range partitions {
		end, ok := got[p]
		if !ok {
			return nil, fmt.Errorf("kafkaadmin: list offsets of %q: partition %d not answered", topic, p)
		}
		ends[i] = end
	}
	return ends, nil
}

// Range returns 0, 1, …, n-1: every partition of an n-partition topic.
func Range(n int) []int {
	ps := make([]int, n)
	for i := range ps {
		ps[i] = i
	}
	return ps
}

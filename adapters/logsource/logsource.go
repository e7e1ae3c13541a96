// Package logsource opens the log for a read-only tool (export, explain,
// replay of a live log): the embedded log of a data directory, running
// server or not, or a Kafka topic. It never creates or changes a log.
package logsource

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mdsync/mdsync/adapters/embedlog"
	"github.com/mdsync/mdsync/adapters/internal/kafkaadmin"
	"github.com/mdsync/mdsync/adapters/kafkalog"
	"github.com/mdsync/mdsync/engine"
	"github.com/segmentio/kafka-go"
)

// Source is where a read-only tool finds the log.
type Source struct {
	Data       string // data directory: the embedded log is Data/log
	Kafka      string // comma-separated brokers; "" = the embedded log
	Topic      string // the log's Kafka topic
	Partitions int    // Kafka only: the topic's partition count, 1..1024; 0 = the topic's
	TempDir    string // parent of a running server's log snapshot ("" = os.TempDir)
}

// maxPartitions bounds a log's partition count, as serve does.
const maxPartitions = 1024

// Open opens the log without creating or changing anything: a missing
// embedded log or topic is an error, not a new empty log. The embedded log
// is opened read-only; one a server holds (Pebble allows one process at a
// time, read-only or not) is read from a snapshot (SnapshotOpen: hard links
// of its table files, copies of its write-ahead logs and manifest), removed
// when the log is closed. A snapshot holds the records the server had
// written when it was taken, possibly a few whose fsync was still in
// flight. Its ends do not move: a Read at an end waits for ctx.
func (s Source) Open(ctx context.Context) (engine.Log, error) {
	if s.Kafka == "" {
		dir := filepath.Join(s.Data, "log")
		if !PebbleExists(dir) {
			return nil, engine.Errorf(engine.CodeNotFound, "no embedded log in %s (give --data, or --kafka-brokers)", dir)
		}
		open := func(dir string) (*embedlog.Log, error) {
			return embedlog.Open(embedlog.Options{Dir: dir, ReadOnly: true})
		}
		if !Held(dir) {
			return open(dir)
		}
		lg, cleanup, err := SnapshotOpen(dir, s.TempDir, Link, open)
		if err != nil {
			return nil, err
		}
		return snapshotLog{lg, cleanup}, nil
	}
	if s.Partitions < 0 || s.Partitions > maxPartitions {
		return nil, engine.Errorf(engine.CodeInvalidArgument, "--partitions %d is outside [0,%d]", s.Partitions, maxPartitions)
	}
	octx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	brokers := strings.Split(s.Kafka, ",")
	parts := int32(s.Partitions)
	if parts == 0 {
		n, err := topicPartitions(octx, brokers, s.Topic)
		if err != nil {
			return nil, err
		}
		if n > maxPartitions {
			return nil, engine.Errorf(engine.CodeInvalidArgument, "topic %q has %d partitions, more than %d", s.Topic, n, maxPartitions)
		}
		parts = int32(n)
	}
	return kafkalog.Open(octx, kafkalog.Options{Brokers: brokers, Topic: s.Topic, Partitions: parts})
}

// topicPartitions is the partition count of an existing topic.
func topicPartitions(ctx context.Context, brokers []string, topic string) (int, error) {
	tr := &kafka.Transport{MetadataTopics: []string{topic}}
	defer tr.CloseIdleConnections()
	n, err := kafkaadmin.Ensure(ctx, &kafka.Client{Addr: kafka.TCP(brokers...), Transport: tr}, kafkaadmin.Topic{Name: topic})
	if errors.Is(err, kafkaadmin.ErrMissing) {
		return 0, engine.Errorf(engine.CodeNotFound, "no topic %q on %s", topic, strings.Join(brokers, ","))
	}
	return n, err
}

// snapshotLog is a log read from a snapshot, removed when it is closed.
type snapshotLog struct {
	*embedlog.Log
	cleanup func()
}

func (l snapshotLog) Close() error {
	err := l.Log.Close()
	l.cleanup()
	return err
}

// PebbleExists reports whether dir holds a Pebble database (a manifest).
func PebbleExists(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "MANIFEST-") {
			return true
		}
	}
	return false
}

// Package logsource opens the log for a read-only tool (export, explain,
// replay of a live log): the embedded log of a data directory, or a Kafka
// topic. It never creates a log.
package logsource

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mdsync/mdsync/adapters/embedlog"
	"github.com/mdsync/mdsync/adapters/kafkalog"
	"github.com/mdsync/mdsync/engine"
)

// Source is where a read-only tool finds the log.
type Source struct {
	Data       string // data directory: the embedded log is Data/log
	Kafka      string // comma-separated brokers; "" = the embedded log
	Topic      string // the log's Kafka topic
	Partitions int    // Kafka only: the topic's partition count, 1..1024
}

// Open opens the log without creating anything: a missing embedded log or
// topic is an error, not a new empty log. The embedded log is a Pebble
// database that one process at a time may open, so a running server's log
// is read through Kafka (or after the server stopped).
func (s Source) Open(ctx context.Context) (engine.Log, error) {
	if s.Kafka == "" {
		dir := filepath.Join(s.Data, "log")
		if !PebbleExists(dir) {
			return nil, engine.Errorf(engine.CodeNotFound, "no embedded log in %s (give --data, or --kafka-brokers)", dir)
		}
		lg, err := embedlog.Open(embedlog.Options{Dir: dir})
		if err != nil {
			return nil, fmt.Errorf("%w (is a server running on this data directory? stop it, or read the log through Kafka)", err)
		}
		return lg, nil
	}
	if s.Partitions < 1 || s.Partitions > 1024 {
		return nil, engine.Errorf(engine.CodeInvalidArgument, "--partitions %d is outside [1,1024]", s.Partitions)
	}
	octx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return kafkalog.Open(octx, kafkalog.Options{
		Brokers: strings.Split(s.Kafka, ","), Topic: s.Topic, Partitions: int32(s.Partitions),
	})
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

package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/mdsync/mdsync/adapters/kafkagroup"
	"github.com/mdsync/mdsync/adapters/kafkalog"
	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	"github.com/mdsync/mdsync/projections"
)

// openNode opens the embedded log, or the Kafka topic when brokers are set.
// On Kafka a process always joins the consumer group --kafka-group, also
// alone: the group is what hands partitions over when processes come and go
// and what restarts a partition's projector after a broker outage.
func openNode(ctx context.Context, c serveConfig, brokers []string, onApplied func(int32, projections.Applied), wrap func(engine.Log) engine.Log) (*node.Node, error) {
	if len(brokers) == 0 {
		return node.New(ctx, node.Options{Dir: c.data, Partitions: int32(c.partitions), OnApplied: onApplied, WrapLog: wrap,
			MaxPending: c.maxPending, MaxPendingAge: c.maxPendingAge})
	}
	octx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return node.New(octx, node.Options{
		Dir: c.data, OnApplied: onApplied, WrapLog: wrap, MaxPending: c.maxPending, MaxPendingAge: c.maxPendingAge,
		Kafka: &kafkalog.Options{Brokers: brokers, Topic: c.topic, Partitions: int32(c.partitions), ReplicationFactor: c.rf, CreateTopic: true},
		Group: &kafkagroup.Options{GroupID: c.group, Addr: c.advertise},
	})
}

// secretFile returns value if set, else the secret stored in path,
// creating it (0600, n random bytes as hex) on first start.
func secretFile(value, path string, n int) (string, error) {
	if value != "" {
		return value, nil
	}
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	buf := make([]byte, n)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(buf)
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("serve: write %s: %w", path, err)
	}
	return tok, nil
}

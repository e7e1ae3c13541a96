package main

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/mdsync/mdsync/engine"
)

// patientLog is the log as the aggregates projection reads it: a read that
// fails on the way to Kafka (a broker restarting: EOF, connection refused,
// no leader) is tried again with backoff until ctx ends, instead of
// stopping the projection and with it serve. The consumer group restarts
// the main projector after such an outage itself; the aggregates follow
// the whole log on their own and had nothing to. Errors a retry cannot
// cure (closed log, offset out of range, bad partition) pass through.
type patientLog struct {
	engine.Log
	logger *slog.Logger
}

const (
	patientMinWait = 100 * time.Millisecond
	patientMaxWait = 5 * time.Second
)

func (l patientLog) Read(ctx context.Context, p int32, from int64, max int) ([]engine.Entry, error) {
	wait := patientMinWait
	for attempt := 1; ; attempt++ {
		es, err := l.Log.Read(ctx, p, from, max)
		switch {
		case err == nil:
			return es, nil
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case errors.Is(err, engine.ErrLogClosed), errors.Is(err, engine.ErrOffsetRange), errors.Is(err, engine.ErrBadPartition):
			return nil, err
		}
		if attempt == 1 {
			l.logger.Warn("aggregates: log read failed; retrying until it succeeds", "partition", p, "offset", from, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, patientMaxWait)
	}
}

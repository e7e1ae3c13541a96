package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/mdsync/mdsync/engine"
)

// flakyLog fails its first reads with errs, then returns one entry.
type flakyLog struct {
	engine.Log
	errs  []error
	reads int
}

func (l *flakyLog) Read(ctx context.Context, p int32, from int64, max int) ([]engine.Entry, error) {
	l.reads++
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		return nil, err
	}
	return []engine.Entry{{Offset: from}}, nil
}

// A read that fails on the way to the broker is tried again until it
// succeeds; an error no retry cures, and ctx's end, come back at once.
func TestPatientLogRetriesTransientReads(t *testing.T) {
	ctx := context.Background()
	quiet := slog.New(slog.DiscardHandler)
	fl := &flakyLog{errs: []error{io.ErrUnexpectedEOF, errors.New("dial tcp: connection refused")}}
	es, err := patientLog{fl, quiet}.Read(ctx, 3, 301, 10)
	if err != nil || len(es) != 1 || fl.reads != 3 {
		t.Fatalf("after two transient errors: %v %v, %d reads", es, err, fl.reads)
	}
	for _, want := range []error{engine.ErrLogClosed, engine.ErrOffsetRange, engine.ErrBadPartition} {
		fl := &flakyLog{errs: []error{want}}
		if _, err := (patientLog{fl, quiet}).Read(ctx, 0, 0, 1); !errors.Is(err, want) || fl.reads != 1 {
			t.Fatalf("%v: got %v after %d reads", want, err, fl.reads)
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	fl = &flakyLog{errs: make([]error, 1000)}
	for i := range fl.errs {
		fl.errs[i] = io.ErrUnexpectedEOF
	}
	if _, err := (patientLog{fl, quiet}).Read(cctx, 0, 0, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a broker that stays away: %v, want ctx's error", err)
	}
}

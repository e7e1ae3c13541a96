package aggregates_test

import (
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/mdsync/mdsync/projections"
	"github.com/mdsync/mdsync/projections/aggregates"
	"github.com/mdsync/mdsync/projections/storetest"
)

// BenchmarkAggregatesPlacement measures where the counts should run (the
// choice is in docs/design-notes.md, "One projector runner"): the main
// store alone, the main store with the counts handler in its own batches
// (on the decisions' critical path), and the counts as a second runner of
// their own (off it). The history is storetest.History's mix (logins,
// logouts, messages to users and groups, contacts, groups, policy changes,
// retries, garbage) in one partition, applied in batches of 512 on disk.
func BenchmarkAggregatesPlacement(b *testing.B) {
	const n = 30_000
	log := storetest.History(1, n, 11)[0]
	for _, c := range []struct {
		name string
		open func(dir string) (io.Closer, func(i, j int) error, error)
	}{
		{"store", func(dir string) (io.Closer, func(i, j int) error, error) {
			s, err := projections.Open(projections.Options{Dir: dir, Partitions: 1})
			if err != nil {
				return nil, nil, err
			}
			return s, func(i, j int) error { return s.Apply(0, log[i:j]) }, nil
		}},
		{"store+counts_same_batch", func(dir string) (io.Closer, func(i, j int) error, error) {
			s, err := projections.Open(projections.Options{Dir: dir, Partitions: 1, Handlers: []projections.Handler{aggregates.Handler()}})
			if err != nil {
				return nil, nil, err
			}
			return s, func(i, j int) error { return s.Apply(0, log[i:j]) }, nil
		}},
		{"counts_runner", func(dir string) (io.Closer, func(i, j int) error, error) {
			a, err := aggregates.Open(aggregates.Options{Dir: dir, Partitions: 1})
			if err != nil {
				return nil, nil, err
			}
			return a, func(i, j int) error { return a.Apply(0, log[i:j]) }, nil
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			var total time.Duration
			for round := 0; round < b.N; round++ {
				b.StopTimer()
				db, apply, err := c.open(filepath.Join(b.TempDir(), "db"))
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				start := time.Now()
				for i := 0; i < len(log); i += 512 {
					if err := apply(i, min(i+512, len(log))); err != nil {
						b.Fatal(err)
					}
				}
				total += time.Since(start)
				b.StopTimer()
				if err := db.Close(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*len(log))/total.Seconds(), "ev/s")
		})
	}
}

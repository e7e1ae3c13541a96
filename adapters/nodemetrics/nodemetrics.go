// Package nodemetrics holds the Prometheus metrics of a node's core: the
// log's append time (a decorator of the engine.Log), the projector's batch
// time, the operations it decided and the sessions they ended (its
// OnApplied hook), and its lag per partition served (a collector). The
// edges (the gateway, the bus, the REST API, push) register their own.
package nodemetrics

import (
	"context"
	"strconv"
	"time"

	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	"github.com/mdsync/mdsync/projections"
	"github.com/prometheus/client_golang/prometheus"
)

// Core are the log's and the projector's metrics.
type Core struct {
	appendSeconds prometheus.Histogram
	applySeconds  prometheus.Histogram
	applied       *prometheus.CounterVec
	ended         *prometheus.CounterVec
}

// NewCore registers the core metrics on reg.
func NewCore(reg prometheus.Registerer) (*Core, error) {
	m := &Core{
		appendSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mdsync_log_append_duration_seconds",
			Help:    "Time of one durable log append (a call may carry several records).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		applySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mdsync_projection_apply_duration_seconds",
			Help:    "Time to apply and commit one projection batch.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdsync_operations_applied_total",
			Help: "Operations decided by the projections, by kind and result code (0 = accepted), whatever submitted them.",
		}, []string{"kind", "code"}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdsync_sessions_ended_total",
			Help: "Sessions ended by evictions, kicks, logouts, password changes and removals, by reason.",
		}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{m.appendSeconds, m.applySeconds, m.applied, m.ended} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Observe counts one committed projection batch (a projections OnApplied
// hook).
func (m *Core) Observe(a projections.Applied) {
	m.applySeconds.Observe(a.Duration.Seconds())
	for _, d := range a.Decisions {
		m.applied.WithLabelValues(engine.KindName(d.Kind), strconv.Itoa(int(d.Code))).Inc()
		for _, e := range d.Ended {
			m.ended.WithLabelValues(e.Reason.String()).Inc() // "REASON_KICKED", as the protocol says it
		}
	}
}

// TimeAppends returns l with its successful appends timed into
// mdsync_log_append_duration_seconds; reads pass through.
func (m *Core) TimeAppends(l engine.Log) engine.Log { return timedLog{l, m.appendSeconds} }

// timedLog times the engine's appends; reads pass through.
type timedLog struct {
	engine.Log
	h prometheus.Histogram
}

func (l timedLog) Append(ctx context.Context, recs []engine.Record) ([]engine.Position, error) {
	start := time.Now()
	pos, err := l.Log.Append(ctx, recs)
	if err == nil {
		l.h.Observe(time.Since(start).Seconds())
	}
	return pos, err
}

// lagCollector reports, per partition this process serves, the events
// appended but not yet applied: the projector's lag. Partitions served by
// another process (Kafka owned mode) are that process's to report.
type lagCollector struct {
	desc *prometheus.Desc
	n    *node.Node
}

// NewLag is the collector of mdsync_projection_lag_events for n.
func NewLag(n *node.Node) prometheus.Collector {
	return &lagCollector{n: n, desc: prometheus.NewDesc("mdsync_projection_lag_events",
		"Events appended to the log but not yet applied, per partition served here.", []string{"partition"}, nil)}
}

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, p := range c.n.Owned() {
		end, err := c.n.Log.End(ctx, p)
		if err != nil {
			continue // a scrape must not fail because one partition is unreachable
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue,
			float64(end-c.n.Store.Checkpoint(p).NextOffset), strconv.Itoa(int(p)))
	}
}

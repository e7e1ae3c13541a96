package bus

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics of one Bus, on the injected registerer.
type metrics struct {
	published     prometheus.Counter       // effects the transport took
	dropped       *prometheus.CounterVec   // {reason}
	deliveries    *prometheus.CounterVec   // {handler, result}: final outcome per effect
	attemptErrors *prometheus.CounterVec   // {handler, cause}: every failed call
	handle        *prometheus.HistogramVec // {handler}: all attempts of one effect
	lag           prometheus.Histogram     // operation accepted -> effect published
	deliveryLag   *prometheus.HistogramVec // {handler}: operation accepted -> handled
}

var lagBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

func newMetrics(r prometheus.Registerer, depth func() float64) (*metrics, error) {
	m := &metrics{
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mdsync_bus_published_total",
			Help: "Effects handed to the bus transport.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdsync_bus_dropped_total",
			Help: "Effects dropped before the transport took them, by reason (queue_full, closed, publish_error, invalid).",
		}, []string{"reason"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdsync_bus_deliveries_total",
			Help: "Effects a handler finished with, by result (ok, failed after retries, malformed, cancelled at stop).",
		}, []string{"handler", "result"}),
		attemptErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdsync_bus_handler_errors_total",
			Help: "Failed handler calls (each retry counts), by cause (error, panic, timeout, malformed).",
		}, []string{"handler", "cause"}),
		handle: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mdsync_bus_handle_seconds",
			Help:    "Time a handler took for one effect, retries included.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"handler"}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mdsync_bus_projector_lag_seconds",
			Help:    "Time from an operation's acceptance (its event time) to its effect's publication: the projector's lag.",
			Buckets: lagBuckets,
		}),
		deliveryLag: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mdsync_bus_delivery_lag_seconds",
			Help:    "Time from an operation's acceptance to a handler finishing its effect.",
			Buckets: lagBuckets,
		}, []string{"handler"}),
	}
	depthGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "mdsync_bus_queue_depth",
		Help: "Effects published but not yet handed to the transport.",
	}, depth)
	for _, c := range []prometheus.Collector{m.published, m.dropped, m.deliveries, m.attemptErrors, m.handle, m.lag, m.deliveryLag, depthGauge} {
		if err := r.Register(c); err != nil {
			return nil, fmt.Errorf("bus: register metrics: %w", err)
		}
	}
	return m, nil
}

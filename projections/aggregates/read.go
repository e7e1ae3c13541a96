package aggregates

import (
	"encoding/binary"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/mdsync/mdsync/engine"
	"github.com/prometheus/client_golang/prometheus"
)

// MaxHours bounds the hour buckets one read returns.
const MaxHours = 10_000

// Counts is an app's aggregates (the JSON of GET /v1/apps/{app}/aggregates).
type Counts struct {
	App           string `json:"app"`
	Logins        int64  `json:"logins"`
	LoginsRefused int64  `json:"logins_refused"`
	// Ended counts ended sessions by reason, spelled as the protocol does:
	// REASON_LOGIN_OTHER_DEVICE (evicted by a newer login), REASON_KICKED,
	// REASON_PASSWORD_CHANGED, REASON_USER_REMOVED, REASON_POLICY_LIMIT,
	// REASON_LOGOUT. Messages and MessagesByHour key chat types the same
	// way (CHAT_TYPE_USER...).
	Ended map[string]int64 `json:"ended"`
	// ActiveDevices counts logged-in devices by platform (osType).
	ActiveDevices map[string]int64 `json:"active_devices"`
	// Messages counts MESSAGE_SEND operations appended, by chat type; an
	// operation the group rules refused is counted too.
	Messages map[string]int64 `json:"messages"`
	// MessagesByHour is per chat type and hour of event time, in time order.
	MessagesByHour []HourCount `json:"messages_by_hour"`
	// Truncated: more than MaxHours buckets matched; the oldest are returned.
	Truncated bool `json:"truncated,omitempty"`
}

// HourCount is one hour bucket: [HourMs, HourMs+1h) of event time.
type HourCount struct {
	ChatType string `json:"chat_type"`
	HourMs   int64  `json:"hour_ms"`
	Hour     string `json:"hour"` // RFC 3339, UTC
	Count    int64  `json:"count"`
}

// App returns an app's counts; hour buckets starting in [sinceMs, untilMs)
// (untilMs <= 0: no bound). An app without events has zero counts.
func (a *Aggregates) App(app string, sinceMs, untilMs int64) (*Counts, error) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.closed {
		return nil, ErrClosed
	}
	c := &Counts{App: app, Ended: map[string]int64{}, ActiveDevices: map[string]int64{}, Messages: map[string]int64{}, MessagesByHour: []HourCount{}}
	hours := map[[2]string]int64{}
	for p := int32(0); p < a.opts.Partitions; p++ {
		prefix := append(counterPrefix(p), app+"\x00"...)
		err := a.scan(prefix, func(rest []string, v int64) {
			switch {
			case len(rest) == 1 && rest[0] == mLogins:
				c.Logins += v
			case len(rest) == 1 && rest[0] == mLoginsRefused:
				c.LoginsRefused += v
			case len(rest) == 2 && rest[0] == mEnded:
				c.Ended[rest[1]] += v
			case len(rest) == 2 && rest[0] == mActive:
				c.ActiveDevices[rest[1]] += v
			case len(rest) == 2 && rest[0] == mMessages:
				c.Messages[rest[1]] += v
			case len(rest) == 3 && rest[0] == mMessagesHour:
				hours[[2]string{rest[2], rest[1]}] += v
			}
		})
		if err != nil {
			return nil, err
		}
	}
	for k, n := range c.ActiveDevices {
		if n == 0 {
			delete(c.ActiveDevices, k)
		}
	}
	keys := make([][2]string, 0, len(hours))
	for k := range hours {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(x, y [2]string) int { return strings.Compare(x[0]+"\x00"+x[1], y[0]+"\x00"+y[1]) })
	for _, k := range keys {
		h, _ := strconv.ParseInt(k[0], 10, 64)
		h -= offsetHour
		if h < sinceMs || (untilMs > 0 && h >= untilMs) {
			continue
		}
		if len(c.MessagesByHour) == MaxHours {
			c.Truncated = true
			break
		}
		c.MessagesByHour = append(c.MessagesByHour, HourCount{
			ChatType: k[1], HourMs: h, Hour: time.UnixMilli(h).UTC().Format(time.RFC3339), Count: hours[k],
		})
	}
	return c, nil
}

// scan calls fn with the label parts after prefix and the counter value of
// every counter key under prefix.
func (a *Aggregates) scan(prefix []byte, fn func(rest []string, v int64)) error {
	it, err := a.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		v := it.Value()
		if len(v) != 8 {
			continue
		}
		fn(strings.Split(string(it.Key()[len(prefix):]), "\x00"), int64(binary.BigEndian.Uint64(v)))
	}
	return it.Error()
}

// Apps lists the apps with any counter, sorted.
func (a *Aggregates) Apps() ([]string, error) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.closed {
		return nil, ErrClosed
	}
	set := map[string]bool{}
	for p := int32(0); p < a.opts.Partitions; p++ {
		prefix := counterPrefix(p)
		it, err := a.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
		if err != nil {
			return nil, err
		}
		for it.First(); it.Valid(); it.Next() {
			app, _, _ := strings.Cut(string(it.Key()[len(prefix):]), "\x00")
			set[app] = true
		}
		if err := it.Close(); err != nil {
			return nil, err
		}
	}
	apps := make([]string, 0, len(set))
	for app := range set {
		apps = append(apps, app)
	}
	slices.Sort(apps)
	return apps, nil
}

// Handler serves GET /v1/apps/{app}/aggregates[?since=MS&until=MS] as JSON
// (Counts). It does no authentication: mount it behind the admin
// credential.
func (a *Aggregates) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/apps/{app}/aggregates", func(w http.ResponseWriter, r *http.Request) {
		app := r.PathValue("app")
		if !engine.ValidID(app) {
			writeError(w, http.StatusBadRequest, engine.CodeInvalidArgument, "app is not a valid id")
			return
		}
		var bounds [2]int64
		for i, name := range []string{"since", "until"} {
			s := r.URL.Query().Get(name)
			if s == "" {
				continue
			}
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil || v < 0 {
				writeError(w, http.StatusBadRequest, engine.CodeInvalidArgument, name+" is not a non-negative Unix time in ms")
				return
			}
			bounds[i] = v
		}
		c, err := a.App(app, bounds[0], bounds[1])
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, engine.CodeUnavailable, err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(c)
	})
	return mux
}

func writeError(w http.ResponseWriter, status int, code engine.Code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(struct {
		Code    int32  `json:"code"`
		Message string `json:"message"`
	}{int32(code), msg})
}

// Collector exposes the counts as mdsync_aggregate_* metrics, read from
// the database at each scrape. Hour buckets are not exported (their label
// set grows without bound); messages are by app and chat type.
func (a *Aggregates) Collector() prometheus.Collector { return collector{a} }

var (
	descLogins = prometheus.NewDesc("mdsync_aggregate_logins_total",
		"Accepted logins in the log, by app.", []string{"app"}, nil)
	descRefused = prometheus.NewDesc("mdsync_aggregate_logins_refused_total",
		"Refused logins in the log, by app.", []string{"app"}, nil)
	descEnded = prometheus.NewDesc("mdsync_aggregate_sessions_ended_total",
		"Sessions ended (evictions, kicks, logouts...) in the log, by app and reason.", []string{"app", "reason"}, nil)
	descActive = prometheus.NewDesc("mdsync_aggregate_active_devices",
		"Logged-in devices as of the projection's position, by app and platform.", []string{"app", "platform"}, nil)
	descMessages = prometheus.NewDesc("mdsync_aggregate_messages_total",
		"Message sends in the log, by app and chat type.", []string{"app", "chat_type"}, nil)
	descCollectErr = prometheus.NewDesc("mdsync_aggregate_collect_errors",
		"1 when the last scrape could not read the aggregates.", nil, nil)
)

type collector struct{ a *Aggregates }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLogins, descRefused, descEnded, descActive, descMessages, descCollectErr} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	failed := 0.0
	defer func() { ch <- prometheus.MustNewConstMetric(descCollectErr, prometheus.GaugeValue, failed) }()
	apps, err := c.a.Apps()
	if err != nil {
		failed = 1
		return
	}
	for _, app := range apps {
		n, err := c.a.App(app, 0, 1) // no hour buckets needed
		if err != nil {
			failed = 1
			return
		}
		ch <- prometheus.MustNewConstMetric(descLogins, prometheus.CounterValue, float64(n.Logins), app)
		ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(n.LoginsRefused), app)
		for r, v := range n.Ended {
			ch <- prometheus.MustNewConstMetric(descEnded, prometheus.CounterValue, float64(v), app, r)
		}
		for p, v := range n.ActiveDevices {
			ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(v), app, p)
		}
		for ct, v := range n.Messages {
			ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(v), app, ct)
		}
	}
}

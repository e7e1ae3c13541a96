package push

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"
)

var secret = []byte("s3cret")

// receiver is a webhook on loopback that records every request and
// answers with respond (200 when nil).
type receiver struct {
	t       *testing.T
	srv     *httptest.Server
	mu      sync.Mutex
	reqs    []request
	respond func(r request, n int) (status int, header http.Header) // n: attempts seen for this key, 1-based
}

type request struct {
	key, sig, ctype string
	body            []byte
	at              time.Time
}

func newReceiver(t *testing.T, respond func(r request, n int) (int, http.Header)) *receiver {
	rc := &receiver{t: t, respond: respond}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, hr *http.Request) {
		body, _ := io.ReadAll(hr.Body)
		r := request{key: hr.Header.Get(HeaderIdempotencyKey), sig: hr.Header.Get(HeaderSignature),
			ctype: hr.Header.Get("Content-Type"), body: body, at: time.Now()}
		rc.mu.Lock()
		rc.reqs = append(rc.reqs, r)
		n := 0
		for _, x := range rc.reqs {
			if x.key == r.key {
				n++
			}
		}
		rc.mu.Unlock()
		status, h := http.StatusOK, http.Header(nil)
		if rc.respond != nil {
			status, h = rc.respond(r, n)
		}
		for k, v := range h {
			w.Header()[k] = v
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(rc.srv.Close)
	if !strings.HasPrefix(rc.srv.URL, "http://127.0.0.1:") {
		t.Fatalf("receiver not on loopback: %s", rc.srv.URL)
	}
	return rc
}

func (rc *receiver) requests() []request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]request(nil), rc.reqs...)
}

// byKey returns the requests seen per key.
func (rc *receiver) byKey() map[string][]request {
	out := map[string][]request{}
	for _, r := range rc.requests() {
		out[r.key] = append(out[r.key], r)
	}
	return out
}

// fastOptions keep backoffs in milliseconds so tests stay quick.
func fastOptions(url string, reg *prometheus.Registry) Options {
	return Options{URL: url, Secret: secret, InitialBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
		RequestTimeout: time.Second, Registerer: reg}
}

// run starts d and returns a stop function that waits for Run to return.
func run(t *testing.T, d *Dispatcher) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(3 * time.Second):
				t.Fatal("Run did not return after cancel")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func metric(t *testing.T, reg *prometheus.Registry, name, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if result != "" && (len(m.GetLabel()) != 1 || m.GetLabel()[0].GetValue() != result) {
				continue
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func enqueue(t *testing.T, ob *Outbox, n int) map[string]bool {
	t.Helper()
	want := map[string]bool{}
	var es []Entry
	for i := range n {
		es = append(es, entry(i))
		want[entry(i).Key()] = true
	}
	if err := ob.Enqueue(es...); err != nil {
		t.Fatal(err)
	}
	return want
}

func TestDeliverOncePerKey(t *testing.T) {
	rc := newReceiver(t, nil)
	ob := openMemOutbox(t, vfs.NewMem(), OutboxOptions{})
	reg := prometheus.NewRegistry()
	d, err := NewDispatcher(ob, fastOptions(rc.srv.URL, reg))
	if err != nil {
		t.Fatal(err)
	}
	want := enqueue(t, ob, 20)
	stop := run(t, d)
	// Entries enqueued while Run is waiting are picked up too.
	waitFor(t, "first batch", func() bool { return ob.Depth() == 0 })
	late := entry(50)
	if err := ob.Enqueue(late); err != nil {
		t.Fatal(err)
	}
	want[late.Key()] = true
	waitFor(t, "late entry", func() bool { return len(rc.requests()) == len(want) && ob.Depth() == 0 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	got := rc.byKey()
	if len(got) != len(want) {
		t.Fatalf("%d keys delivered, want %d", len(got), len(want))
	}
	for k, rs := range got {
		if !want[k] || len(rs) != 1 {
			t.Errorf("key %q: %d requests (expected: %v)", k, len(rs), want[k])
			continue
		}
		r := rs[0]
		var body struct {
			Key string `json:"key"`
			Entry
		}
		if err := json.Unmarshal(r.body, &body); err != nil || body.Key != k || body.Entry.Key() != k {
			t.Errorf("key %q: body %s (%v)", k, r.body, err)
		}
		if body.From != "alice" || body.ChatType != "CHAT_TYPE_USER" || body.TimeUnixMs == 0 || body.Preview != "" {
			t.Errorf("key %q: body fields %+v", k, body.Entry)
		}
		if r.ctype != "application/json" {
			t.Errorf("content type %q", r.ctype)
		}
		if !hmac.Equal([]byte(r.sig), []byte(Sign(secret, r.body))) {
			t.Errorf("key %q: bad signature %q", k, r.sig)
		}
	}
	if v := metric(t, reg, "mdsync_push_deliveries_total", "delivered"); v != float64(len(want)) {
		t.Errorf("delivered_total = %v", v)
	}
	if v := metric(t, reg, "mdsync_push_outbox_depth", ""); v != 0 {
		t.Errorf("outbox depth gauge = %v", v)
	}
}

func TestRetryThenDeliver(t *testing.T) {
	for _, status := range []int{500, 503, 408, 429} {
		rc := newReceiver(t, func(r request, n int) (int, http.Header) {
			if n <= 3 {
				return status, nil
			}
			return 200, nil
		})
		ob := openMemOutbox(t, vfs.NewMem(), OutboxOptions{})
		reg := prometheus.NewRegistry()
		opts := fastOptions(rc.srv.URL, reg)
		opts.Secret = nil
		d, err := NewDispatcher(ob, opts)
		if err != nil {
			t.Fatal(err)
		}
		want := enqueue(t, ob, 3)
		stop := run(t, d)
		waitFor(t, "delivery after retries", func() bool { return ob.Depth() == 0 })
		stop()
		for k, rs := range rc.byKey() {
			if !want[k] || len(rs) != 4 {
				t.Errorf("status %d: key %q: %d attempts, want 4", status, k, len(rs))
			}
			for _, r := range rs {
				if string(r.body) != string(rs[0].body) || r.sig != "" {
					t.Errorf("status %d: key %q: body or signature changed across retries", status, k)
				}
			}
			for i := 1; i < len(rs); i++ {
				if gap := rs[i].at.Sub(rs[i-1].at); gap < opts.InitialBackoff/2 {
					t.Errorf("status %d: retry %d after %v, below the backoff floor", status, i, gap)
				}
			}
		}
		if v := metric(t, reg, "mdsync_push_deliveries_total", "retry"); v != 9 {
			t.Errorf("status %d: retry_total = %v, want 9", status, v)
		}
	}
}

func TestRetryAfterIsHonored(t *testing.T) {
	rc := newReceiver(t, func(r request, n int) (int, http.Header) {
		if n == 1 {
			return http.StatusTooManyRequests, http.Header{"Retry-After": {"1"}}
		}
		return 200, nil
	})
	ob := openMemOutbox(t, vfs.NewMem(), OutboxOptions{})
	opts := fastOptions(rc.srv.URL, nil)
	opts.InitialBackoff, opts.MaxBackoff = time.Millisecond, time.Millisecond
	d, err := NewDispatcher(ob, opts)
	if err != nil {
		t.Fatal(err)
	}
	enqueue(t, ob, 1)
	run(t, d)
	waitFor(t, "delivery", func() bool { return ob.Depth() == 0 })
	rs := rc.requests()
	if len(rs) != 2 {
		t.Fatalf("%d requests, want 2", len(rs))
	}
	if gap := rs[1].at.Sub(rs[0].at); gap < 950*time.Millisecond {
		t.Errorf("retried after %v, Retry-After said 1s", gap)
	}
}

func TestPermanentFailureGoesToDeadLetters(t *testing.T) {
	rc := newReceiver(t, func(r request, n int) (int, http.Header) {
		if strings.HasSuffix(r.key, "m001") {
			return http.StatusBadRequest, nil
		}
		return 200, nil
	})
	ob := openMemOutbox(t, vfs.NewMem(), OutboxOptions{})
	reg := prometheus.NewRegistry()
	opts := fastOptions(rc.srv.URL, reg)
	opts.InitialBackoff, opts.MaxBackoff = time.Millisecond, time.Millisecond
	d, err := NewDispatcher(ob, opts)
	if err != nil {
		t.Fatal(err)
	}
	enqueue(t, ob, 3)
	stop := run(t, d)
	waitFor(t, "outbox drained", func() bool { return ob.Depth() == 0 })
	time.Sleep(50 * time.Millisecond) // ample time for a wrong retry at 1ms backoff
	stop()
	if n := len(rc.byKey()[entry(1).Key()]); n != 1 {
		t.Errorf("refused entry sent %d times, want 1", n)
	}
	dl, err := ob.DeadLetters(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(dl) != 1 || dl[0].Entry.Key() != entry(1).Key() || dl[0].Status != 400 || dl[0].Attempts != 1 {
		t.Fatalf("dead letters %+v", dl)
	}
	if v := metric(t, reg, "mdsync_push_deliveries_total", "dead"); v != 1 {
		t.Errorf("dead_total = %v", v)
	}
	// A dead key is not pushed again when its event is re-applied.
	if err := ob.Enqueue(entry(1)); err != nil || ob.Depth() != 0 {
		t.Errorf("re-enqueue of a dead key: depth %d, %v", ob.Depth(), err)
	}
}

func TestMaxAttempts(t *testing.T) {
	rc := newReceiver(t, func(request, int) (int, http.Header) { return 502, nil })
	ob := openMemOutbox(t, vfs.NewMem(), OutboxOptions{})
	opts := fastOptions(rc.srv.URL, nil)
	opts.InitialBackoff, opts.MaxBackoff, opts.MaxAttempts = time.Millisecond, time.Millisecond, 3
	d, err := NewDispatcher(ob, opts)
	if err != nil {
		t.Fatal(err)
	}
	enqueue(t, ob, 1)
	run(t, d)
	waitFor(t, "given up", func() bool { return ob.Depth() == 0 })
	dl, _ := ob.DeadLetters(0)
	if len(dl) != 1 || dl[0].Attempts != 3 || dl[0].Status != 502 || len(rc.requests()) != 3 {
		t.Fatalf("dead letters %+v after %d requests", dl, len(rc.requests()))
	}
}

func TestNetworkErrorIsRetried(t *testing.T) {
	// A listener that closes: the first attempts fail to connect.
	dead := httptest.NewServer(http.NotFoundHandler())
	url := dead.URL
	dead.Close()
	ob := openMemOutbox(t, vfs.NewMem(), OutboxOptions{})
	reg := prometheus.NewRegistry()
	d, err := NewDispatcher(ob, fastOptions(url, reg))
	if err != nil {
		t.Fatal(err)
	}
	enqueue(t, ob, 1)
	stop := run(t, d)
	waitFor(t, "retries", func() bool { return metric(t, reg, "mdsync_push_deliveries_total", "retry") >= 2 })
	stop()
	if ob.Depth() != 1 {
		t.Errorf("depth %d: an undelivered entry left the outbox", ob.Depth())
	}
}

func TestRequestTimeoutIsRetried(t *testing.T) {
	var once sync.Once
	block := make(chan struct{})
	t.Cleanup(func() { once.Do(func() { close(block) }) })
	rc := newReceiver(t, func(r request, n int) (int, http.Header) {
		if n == 1 {
			<-block // hang past the client's timeout
		}
		return 200, nil
	})
	ob := openMemOutbox(t, vfs.NewMem(), OutboxOptions{})
	opts := fastOptions(rc.srv.URL, nil)
	opts.RequestTimeout = 50 * time.Millisecond
	d, err := NewDispatcher(ob, opts)
	if err != nil {
		t.Fatal(err)
	}
	enqueue(t, ob, 1)
	run(t, d)
	waitFor(t, "delivery after timeout", func() bool { return ob.Depth() == 0 })
	once.Do(func() { close(block) })
	if n := len(rc.requests()); n != 2 {
		t.Errorf("%d requests, want 2", n)
	}
}

// TestRestartResumesUndelivered stops the process mid-flight: the webhook
// has the requests but the outbox never records the acks. A new outbox and
// dispatcher on the same directory deliver everything; the webhook sees
// some keys twice, and deduplicating by key gives exactly the enqueued set.
func TestRestartResumesUndelivered(t *testing.T) {
	dir := t.TempDir()
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	rc := newReceiver(t, func(request, int) (int, http.Header) {
		<-release // before the crash, answer only after it; then at once
		return 200, nil
	})

	ob, err := OpenOutbox(OutboxOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	want := enqueue(t, ob, 10)
	d, err := NewDispatcher(ob, fastOptions(rc.srv.URL, nil))
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, d)
	waitFor(t, "requests in flight", func() bool { return len(rc.requests()) == 4 }) // Concurrency
	// The crash: nothing more reaches the outbox.
	if err := ob.Close(); err != nil {
		t.Fatal(err)
	}
	once.Do(func() { close(release) }) // the webhook did get them
	if err := stop(); err != nil && !errors.Is(err, ErrClosed) {
		t.Fatalf("Run: %v", err)
	}
	first := rc.byKey()

	ob, err = OpenOutbox(OutboxOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer ob.Close()
	if ob.Depth() != 10 {
		t.Fatalf("after restart depth %d, want 10 (no ack was recorded)", ob.Depth())
	}
	d, err = NewDispatcher(ob, fastOptions(rc.srv.URL, nil))
	if err != nil {
		t.Fatal(err)
	}
	run(t, d)
	waitFor(t, "resumed delivery", func() bool { return ob.Depth() == 0 })

	got := rc.byKey()
	if len(got) != len(want) {
		t.Fatalf("distinct keys %d, want %d", len(got), len(want))
	}
	for k, rs := range got {
		if !want[k] {
			t.Errorf("unexpected key %q", k)
		}
		wantN := 1 + len(first[k]) // a duplicate only for keys in flight at the crash
		if len(rs) != wantN {
			t.Errorf("key %q: %d requests, want %d", k, len(rs), wantN)
		}
		for _, r := range rs {
			if string(r.body) != string(rs[0].body) {
				t.Errorf("key %q: body differs across deliveries", k)
			}
		}
	}
}

func TestOneRunPerOutbox(t *testing.T) {
	rc := newReceiver(t, nil)
	ob := openMemOutbox(t, vfs.NewMem(), OutboxOptions{})
	d, err := NewDispatcher(ob, fastOptions(rc.srv.URL, nil))
	if err != nil {
		t.Fatal(err)
	}
	run(t, d)
	waitFor(t, "first Run", func() bool { return ob.dispatching.Load() })
	if err := d.Run(context.Background()); !errors.Is(err, ErrBusy) {
		t.Fatalf("a second Run on the same dispatcher: %v", err)
	}
	d2, err := NewDispatcher(ob, fastOptions(rc.srv.URL, nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Run(context.Background()); !errors.Is(err, ErrBusy) {
		t.Fatalf("a second dispatcher on the same outbox: %v", err)
	}
}

func TestMetricsSurviveRestartOnOneRegistry(t *testing.T) {
	ob := openMemOutbox(t, vfs.NewMem(), OutboxOptions{})
	reg := prometheus.NewRegistry()
	for range 2 {
		if _, err := NewDispatcher(ob, fastOptions("http://127.0.0.1:1/", reg)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	bad := []Options{
		{},
		{URL: "ftp://x/"},
		{URL: "http:///path"},
		{URL: "http://x/", Concurrency: -1},
		{URL: "http://x/", RequestTimeout: -1},
		{URL: "http://x/", InitialBackoff: time.Second, MaxBackoff: time.Millisecond},
		{URL: "http://x/", MaxAttempts: -1},
	}
	for _, o := range bad {
		o.EnsureDefaults()
		if err := o.Validate(); err == nil {
			t.Errorf("%+v accepted", o)
		} else if !strings.HasPrefix(err.Error(), "push: ") {
			t.Errorf("error %q does not name the package", err)
		}
	}
	o := Options{URL: "https://push.example/hook"}
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if o.Concurrency != 4 || o.RequestTimeout != 5*time.Second || o.InitialBackoff != 200*time.Millisecond ||
		o.MaxBackoff != 30*time.Second || o.Client == nil || o.Logger == nil {
		t.Errorf("defaults %+v", o)
	}
}

func TestBackoff(t *testing.T) {
	d := &Dispatcher{opts: Options{InitialBackoff: 200 * time.Millisecond, MaxBackoff: 30 * time.Second}}
	for n, ceil := range map[int]time.Duration{1: 200 * time.Millisecond, 2: 400 * time.Millisecond, 4: 1600 * time.Millisecond, 20: 30 * time.Second} {
		for range 50 {
			if b := d.backoff(n); b < ceil/2 || b > ceil {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", n, b, ceil/2, ceil)
			}
		}
	}
}

func TestRetryAfterParse(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"": 0, "0": 0, "-3": 0, "junk": 0, "2": 2 * time.Second,
		now.Add(3 * time.Second).Format(http.TimeFormat): 3 * time.Second,
		now.Add(-time.Hour).Format(http.TimeFormat):      0,
	} {
		if got := retryAfter(v, now); got != want {
			t.Errorf("retryAfter(%q) = %v, want %v", v, got, want)
		}
	}
}

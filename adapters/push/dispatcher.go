package push

import (
	"bytes"
	"container/heap"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrBusy is returned by Run when another Run is using the same Outbox.
var ErrBusy = errors.New("push: outbox already has a running dispatcher")

// Headers of a webhook request.
const (
	HeaderIdempotencyKey = "Idempotency-Key"
	// HeaderSignature is "sha256=" + hex HMAC-SHA256 of the body with
	// Options.Secret; absent when no secret is set.
	HeaderSignature = "X-Mdsync-Signature"
)

// Options configure a Dispatcher.
type Options struct {
	// URL is the webhook, http or https. Required.
	URL string
	// Secret, when set, signs each body (HeaderSignature). Default: unsigned.
	Secret []byte
	// Concurrency bounds the requests in flight. Default 4.
	Concurrency int
	// RequestTimeout bounds one attempt, connection to response headers.
	// Default 5s.
	RequestTimeout time.Duration
	// InitialBackoff is the wait after the first failed attempt; it doubles
	// per attempt up to MaxBackoff, with jitter in [d/2, d). Defaults 200ms
	// and 30s.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// MaxRetryAfter caps a Retry-After the webhook asks for, so a bad value
	// cannot stall pushes for days. Default 5m.
	MaxRetryAfter time.Duration
	// MaxAttempts moves an entry to the dead letters after that many
	// failed attempts. Default 0: retry until delivered (at-least-once);
	// the outbox's MaxAge already bounds what is enqueued.
	MaxAttempts int
	// Client sends the requests. Default: a client of its own that does not
	// follow redirects (a redirected POST would lose its body or method).
	Client *http.Client
	// Registerer receives the metrics mdsync_push_outbox_depth and
	// mdsync_push_deliveries_total{result="delivered"|"retry"|"dead"}.
	// Default nil: no metrics.
	Registerer prometheus.Registerer
	// Logger. Default slog.Default().
	Logger *slog.Logger
}

// EnsureDefaults sets the zero fields to their defaults.
func (o *Options) EnsureDefaults() {
	if o.Concurrency == 0 {
		o.Concurrency = 4
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = 5 * time.Second
	}
	if o.InitialBackoff == 0 {
		o.InitialBackoff = 200 * time.Millisecond
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 30 * time.Second
	}
	if o.MaxRetryAfter == 0 {
		o.MaxRetryAfter = 5 * time.Minute
	}
	if o.Client == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = o.Concurrency
		o.Client = &http.Client{
			Transport:     t,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	// A nil *Registry in the interface is not nil; callers pass one when
	// metrics are off.
	if r, ok := o.Registerer.(*prometheus.Registry); ok && r == nil {
		o.Registerer = nil
	}
}

// Validate reports options that cannot work.
func (o *Options) Validate() error {
	u, err := url.Parse(o.URL)
	switch {
	case o.URL == "":
		return errors.New("push: Options.URL is required")
	case err != nil:
		return fmt.Errorf("push: Options.URL: %w", err)
	case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
		return fmt.Errorf("push: Options.URL %q: want http(s)://host/...", o.URL)
	case o.Concurrency < 1:
		return fmt.Errorf("push: Options.Concurrency must be >= 1, got %d", o.Concurrency)
	case o.RequestTimeout <= 0 || o.InitialBackoff <= 0 || o.MaxBackoff <= 0 || o.MaxRetryAfter <= 0:
		return errors.New("push: Options timeouts and backoffs must be > 0")
	case o.MaxBackoff < o.InitialBackoff:
		return fmt.Errorf("push: Options.MaxBackoff %s < InitialBackoff %s", o.MaxBackoff, o.InitialBackoff)
	case o.MaxAttempts < 0:
		return fmt.Errorf("push: Options.MaxAttempts must be >= 0, got %d", o.MaxAttempts)
	}
	return nil
}

// window bounds the entries a dispatcher holds in memory (waiting, ready
// or in flight). Entries beyond it stay in the outbox until earlier ones
// leave; with a webhook that is down, everything waits anyway.
const window = 1024

// Dispatcher delivers an Outbox's entries to the webhook: a 2xx removes
// the entry; a 4xx other than 408 and 429 moves it to the dead letters;
// anything else (5xx, 408, 429, 3xx, network errors, timeouts) is retried
// with exponential backoff. A Retry-After on a failed response pauses every
// attempt until then, since it speaks for the endpoint, not one entry.
// Entries are attempted oldest first; order of arrival is not guaranteed.
//
// Each request is a POST with Content-Type application/json, the entry's
// key in HeaderIdempotencyKey (the same on every retry and after a
// restart: receivers deduplicate on it), HeaderSignature when a Secret is
// set, and the Entry as body, plus its key, byte-identical on every retry:
//
//	{"key":"app/bob/EV1","app":"app","user":"bob","entry_id":"EV1","seq":12,"from":"alice",
//	 "chat_type":"user","conversation_id":"alice","time_unix_ms":1767225600000}
type Dispatcher struct {
	ob   *Outbox
	opts Options

	depth      prometheus.Gauge
	deliveries *prometheus.CounterVec
}

// NewDispatcher returns a dispatcher for ob; it sends nothing until Run.
func NewDispatcher(ob *Outbox, opts Options) (*Dispatcher, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	d := &Dispatcher{
		ob: ob, opts: opts,
		depth: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mdsync_push_outbox_depth", Help: "Push entries waiting for the webhook.",
		}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdsync_push_deliveries_total", Help: "Webhook attempts by result: delivered, retry, dead.",
		}, []string{"result"}),
	}
	if r := opts.Registerer; r != nil {
		// A dispatcher restarted on the same registry reuses the collectors.
		if err := r.Register(d.depth); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, fmt.Errorf("push: register metrics: %w", err)
			}
			d.depth = are.ExistingCollector.(prometheus.Gauge)
		}
		if err := r.Register(d.deliveries); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, fmt.Errorf("push: register metrics: %w", err)
			}
			d.deliveries = are.ExistingCollector.(*prometheus.CounterVec)
		}
	}
	return d, nil
}

// result is the outcome of one attempt.
type result struct {
	x          *item
	status     int // 0: no response
	retryAfter time.Duration
	err        error
}

// Run delivers until ctx is done, then returns nil after its requests have
// stopped; it returns earlier with an error only if the outbox fails (e.g.
// ErrClosed). Entries in flight when it stops stay in the outbox and are
// sent again by the next Run: the webhook may see a key twice. One Run at a
// time per Outbox (ErrBusy otherwise): two would send every entry twice.
func (d *Dispatcher) Run(ctx context.Context) error {
	if !d.ob.dispatching.CompareAndSwap(false, true) {
		return ErrBusy
	}
	defer d.ob.dispatching.Store(false)
	ctx, cancel := context.WithCancel(ctx)
	jobs := make(chan *item)
	// Buffered for every request in flight, so a worker never blocks on it.
	results := make(chan result, d.opts.Concurrency)
	var wg sync.WaitGroup
	for range d.opts.Concurrency {
		wg.Go(func() {
			for x := range jobs {
				results <- d.attempt(ctx, x)
			}
		})
	}
	defer func() {
		close(jobs)
		cancel()
		wg.Wait()
	}()

	var (
		next       uint64 // last outbox position loaded
		more       = true // the outbox may hold entries after next
		ready      []*item
		waiting    waitHeap
		inflight   int
		pauseUntil time.Time
	)
	// An outbox error after ctx is done is part of shutting down.
	fail := func(err error) error {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	prune := time.NewTicker(time.Minute)
	defer prune.Stop()
	for {
		now := time.Now()
		for inflight < d.opts.Concurrency && !now.Before(pauseUntil) {
			var x *item
			if len(waiting) > 0 && !waiting[0].due.After(now) {
				x = heap.Pop(&waiting).(*item)
			} else {
				if held := len(ready) + len(waiting) + inflight; len(ready) == 0 && more && held < window {
					xs, err := d.ob.load(next, min(64, window-held))
					if err != nil {
						return fail(err)
					}
					more = len(xs) > 0
					if more {
						next = xs[len(xs)-1].pos
					}
					ready = xs
				}
				if len(ready) == 0 {
					break
				}
				x, ready = ready[0], ready[1:]
			}
			inflight++
			jobs <- x
		}
		d.depth.Set(float64(d.ob.Depth()))

		// Sleep until the earliest retry, or the end of a pause (a spare
		// wake-up when nothing waits is harmless). With every worker busy,
		// a result wakes the loop; a timer for an overdue retry would spin.
		var wake time.Time
		if inflight < d.opts.Concurrency {
			if len(waiting) > 0 {
				wake = waiting[0].due
			}
			if pauseUntil.After(now) && pauseUntil.After(wake) {
				wake = pauseUntil
			}
		}
		timer.Stop()
		if !wake.IsZero() {
			timer.Reset(time.Until(wake))
		}

		select {
		case <-ctx.Done():
			return nil
		case <-d.ob.notify:
			more = true
		case <-timer.C:
		case <-prune.C:
			if _, err := d.ob.prune(10_000); err != nil {
				return fail(err)
			}
		case r := <-results:
			inflight--
			p, err := d.settle(r)
			if err != nil {
				return fail(err)
			}
			if p.After(pauseUntil) {
				pauseUntil = p
			}
			if !r.x.due.IsZero() {
				heap.Push(&waiting, r.x)
			}
		}
	}
}

// settle acts on one attempt's result. A retry sets r.x.due; a Retry-After
// returns the time until which every attempt pauses.
func (d *Dispatcher) settle(r result) (pause time.Time, err error) {
	x, k := r.x, r.x.e.Key()
	x.due = time.Time{}
	x.attempts++
	switch {
	case r.err == nil && r.status >= 200 && r.status < 300:
		d.deliveries.WithLabelValues("delivered").Inc()
		return pause, d.ob.ack(x)
	case r.err == nil && r.status >= 400 && r.status < 500 && r.status != http.StatusRequestTimeout && r.status != http.StatusTooManyRequests:
		d.deliveries.WithLabelValues("dead").Inc()
		d.opts.Logger.Warn("push: webhook refused entry; moved to dead letters", "key", k, "status", r.status, "attempts", x.attempts)
		return pause, d.ob.bury(x, r.status, fmt.Sprintf("webhook answered %d", r.status))
	case d.opts.MaxAttempts > 0 && x.attempts >= d.opts.MaxAttempts:
		d.deliveries.WithLabelValues("dead").Inc()
		reason := fmt.Sprintf("gave up after %d attempts; last: %s", x.attempts, describe(r))
		d.opts.Logger.Warn("push: "+reason+"; moved to dead letters", "key", k)
		return pause, d.ob.bury(x, r.status, reason)
	}
	d.deliveries.WithLabelValues("retry").Inc()
	wait := d.backoff(x.attempts)
	if r.retryAfter > 0 {
		wait = min(r.retryAfter, d.opts.MaxRetryAfter)
		pause = time.Now().Add(wait)
	}
	x.due = time.Now().Add(wait)
	d.opts.Logger.Debug("push: webhook attempt failed; will retry", "key", k, "result", describe(r), "attempts", x.attempts, "wait", wait)
	return pause, nil
}

func describe(r result) string {
	if err := r.err; err != nil {
		// Leave out the URL: it may carry a token.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return err.Error()
	}
	return "status " + strconv.Itoa(r.status)
}

// backoff returns the wait after the n-th failed attempt: InitialBackoff
// doubled per attempt up to MaxBackoff, then a random point in its upper
// half, so retries of a burst spread out without ever retrying at once.
func (d *Dispatcher) backoff(n int) time.Duration {
	b := d.opts.InitialBackoff
	for i := 1; i < n && b < d.opts.MaxBackoff; i++ {
		b *= 2
	}
	b = min(b, d.opts.MaxBackoff)
	return b/2 + rand.N(b/2+1)
}

// attempt sends one request for x.
func (d *Dispatcher) attempt(ctx context.Context, x *item) result {
	if x.body == nil {
		b, err := json.Marshal(struct {
			Key string `json:"key"`
			Entry
		}{x.e.Key(), x.e})
		if err != nil {
			return result{x: x, err: err}
		}
		x.body = b
	}
	ctx, cancel := context.WithTimeout(ctx, d.opts.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.opts.URL, bytes.NewReader(x.body))
	if err != nil {
		return result{x: x, err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "mdsync-push/1")
	req.Header.Set(HeaderIdempotencyKey, x.e.Key())
	if len(d.opts.Secret) > 0 {
		req.Header.Set(HeaderSignature, Sign(d.opts.Secret, x.body))
	}
	resp, err := d.opts.Client.Do(req)
	if err != nil {
		return result{x: x, err: err}
	}
	// Read a little of the body so the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	r := result{x: x, status: resp.StatusCode}
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		r.retryAfter = retryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	return r
}

// Sign returns the HeaderSignature value of body under secret, for
// receivers to compare with hmac.Equal.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// retryAfter parses a Retry-After value (seconds or an HTTP date); 0 when
// absent, malformed or in the past.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s <= 0 {
			return 0
		}
		return time.Duration(min(s, int64(24*time.Hour/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// waitHeap orders waiting items by their next attempt.
type waitHeap []*item

func (h waitHeap) Len() int           { return len(h) }
func (h waitHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h waitHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *waitHeap) Push(x any)        { *h = append(*h, x.(*item)) }
func (h *waitHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

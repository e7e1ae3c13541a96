package auth

import (
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// limiters is a bounded map of token buckets. An entry idle long enough to
// have refilled completely is equivalent to a fresh one, so it can be
// forgotten without giving anyone extra attempts; only such entries are
// evicted.
type limiters struct {
	mu    sync.Mutex
	rl    RateLimit
	max   int
	full  time.Duration // time for an empty bucket to refill
	m     map[string]*limiter
	swept time.Time
}

type limiter struct {
	lim  *rate.Limiter
	last time.Time
}

func newLimiters(rl RateLimit, max int) *limiters {
	return &limiters{rl: rl, max: max, full: time.Duration(rl.Burst) * rl.Every, m: map[string]*limiter{}}
}

// blocked tells whether key has no attempt left at now. It spends nothing:
// only failures spend (fail), so users who type their password right are
// never limited, however many share an address. A key not in the map is
// blocked only while the map is full of entries still refilling (fail
// closed: its failures could not be counted).
func (l *limiters) blocked(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.m[key]; ok {
		return e.lim.TokensAt(now) < 1
	}
	if len(l.m) >= l.max {
		l.sweep(now)
	}
	return len(l.m) >= l.max
}

// fail spends one attempt of key at now.
func (l *limiters) fail(key string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.m[key]
	if !ok {
		if len(l.m) >= l.max {
			l.sweep(now)
			if len(l.m) >= l.max {
				return // blocked() refuses this key until there is room
			}
		}
		e = &limiter{lim: rate.NewLimiter(rate.Every(l.rl.Every), l.rl.Burst)}
		l.m[key] = e
	}
	e.last = now
	e.lim.AllowN(now, 1)
}

// sweep drops entries idle for a full refill. While the map stays full it
// scans at most once a second, so a flood of new keys costs one scan per
// second, not one per call.
func (l *limiters) sweep(now time.Time) {
	if !l.swept.IsZero() && now.Sub(l.swept) < time.Second {
		return
	}
	l.swept = now
	for k, e := range l.m {
		if now.Sub(e.last) >= l.full {
			delete(l.m, k)
		}
	}
}

func (l *limiters) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

// remoteIP is the limiter key of a remote address: the host without the
// port, so reconnecting from new ports shares one budget.
func remoteIP(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}

package restapi

import (
	"fmt"
	"net/http"
	"time"

	"github.com/mdsync/mdsync/engine"
)

// Feed is the port to the admin live feed (adapters/feed.Hub implements
// it): logins, evictions and kicks of one app as they are applied.
type Feed interface {
	// Subscribe returns the app's items, each one JSON object, from now on,
	// until cancel is called; then the channel is closed. A subscriber
	// that does not keep up loses items (the feed is for watching, not a
	// record: the audit route and the log are).
	Subscribe(app string) (items <-chan []byte, cancel func())
}

// feedHeartbeat keeps idle streams (and proxies) alive.
const feedHeartbeat = 15 * time.Second

// feed streams the app's live feed as server-sent events (admin).
func (a *api) feed(w http.ResponseWriter, r *http.Request, _ principal) {
	if !validPath(w, r, "app") {
		return
	}
	if a.opts.Feed == nil {
		writeError(w, http.StatusServiceUnavailable, engine.CodeUnavailable, "no live feed is configured")
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, engine.CodeInternal, "streaming unsupported")
		return
	}
	items, cancel := a.opts.Feed.Subscribe(r.PathValue("app"))
	defer cancel()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 2000\n\n")
	fl.Flush()
	hb := time.NewTicker(feedHeartbeat)
	defer hb.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-hb.C:
			fmt.Fprint(w, ": heartbeat\n\n")
		case b, ok := <-items:
			if !ok {
				return
			}
			fmt.Fprintf(w, "event: item\ndata: %s\n\n", b)
		}
		fl.Flush()
	}
}

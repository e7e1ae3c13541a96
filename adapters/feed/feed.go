// Package feed is the admin live feed: logins, evictions and kicks of an
// app, as this process applies them, for watchers (the console's live view
// over GET /v1/apps/{app}/feed). It is a view, not a record: a watcher that
// does not keep up loses items and is told so; the audit route and the log
// have everything.
package feed

import (
	"encoding/json"
	"sync"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// Buffer is the items queued per subscriber before newer ones are dropped.
const Buffer = 256

// Item is one feed entry (JSON on the wire).
type Item struct {
	// Type is "login", "login_refused", "ended" or "dropped" (this
	// subscriber lost Dropped items).
	Type          string `json:"type"`
	App           string `json:"app"`
	User          string `json:"user"`
	LoginID       string `json:"login_id"`
	Code          int32  `json:"code"`
	Reason        string `json:"reason,omitempty"`
	Message       string `json:"message,omitempty"`
	Reconnect     bool   `json:"reconnect,omitempty"`
	Platform      int32  `json:"platform,omitempty"`
	DeviceName    string `json:"device_name,omitempty"`
	ByLoginID     string `json:"by_login_id,omitempty"`
	ByDeviceName  string `json:"by_device_name,omitempty"`
	ByExtension   string `json:"by_extension,omitempty"`
	ByUser        string `json:"by_user,omitempty"`
	ByAdmin       bool   `json:"by_admin,omitempty"`
	PolicyVersion uint64 `json:"policy_version"`
	Partition     int32  `json:"partition"`
	Offset        int64  `json:"offset"`
	TimeUnixMs    int64  `json:"time_unix_ms,omitempty"`
	Dropped       int    `json:"dropped,omitempty"`
}

// ItemsOf turns one applied batch into feed items, in decision order: a
// login (or its refusal) first, then the sessions it ended.
func ItemsOf(a projections.Applied) []Item {
	var out []Item
	for _, d := range a.Decisions {
		if d.GetKind() == pb.Kind_KIND_LOGIN {
			it := Item{Type: "login", App: d.GetApp(), User: d.GetUser(), LoginID: d.GetLoginId(), Code: d.GetCode(),
				Reconnect: d.GetReconnect(), PolicyVersion: d.GetPolicyVersion(), Partition: d.GetPartition(), Offset: d.GetOffset()}
			if d.GetCode() != 0 {
				it.Type, it.Message = "login_refused", d.GetMessage()
			}
			out = append(out, it)
		}
		for _, e := range d.GetEnded() {
			user := e.GetUser()
			if user == "" {
				user = d.GetUser()
			}
			s := e.GetSession()
			out = append(out, Item{Type: "ended", App: d.GetApp(), User: user, LoginID: s.GetLoginId(), Code: e.GetCode(),
				Reason: e.GetReason().String(), Platform: s.GetPlatform(), DeviceName: s.GetDeviceName(),
				ByLoginID: engine.EndedByLoginID(e), ByDeviceName: e.GetByDeviceName(), ByExtension: e.GetByExtension(),
				ByUser: e.GetByActor().GetUser(), ByAdmin: e.GetByActor().GetAdmin(), PolicyVersion: e.GetPolicyVersion(),
				Partition: e.GetPartition(), Offset: e.GetOffset(), TimeUnixMs: e.GetTimeUnixMs()})
		}
	}
	return out
}

type sub struct {
	ch      chan []byte
	dropped int
}

// Hub fans items out to subscribers by app. Safe for concurrent use; the
// zero value is not usable, use New.
type Hub struct {
	mu   sync.Mutex
	subs map[string]map[*sub]struct{}
}

func New() *Hub { return &Hub{subs: map[string]map[*sub]struct{}{}} }

// Publish sends the batch's items to the subscribers of their apps. It
// never blocks: a full subscriber loses the item (counted, then reported
// with a "dropped" item when it has room again).
func (h *Hub) Publish(a projections.Applied) {
	items := ItemsOf(a)
	if len(items) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, it := range items {
		subs := h.subs[it.App]
		if len(subs) == 0 {
			continue
		}
		b, _ := json.Marshal(it)
		for s := range subs {
			if s.dropped > 0 {
				n, _ := json.Marshal(Item{Type: "dropped", App: it.App, Dropped: s.dropped})
				select {
				case s.ch <- n:
					s.dropped = 0
				default:
				}
			}
			select {
			case s.ch <- b:
			default:
				s.dropped++
			}
		}
	}
}

// Subscribe implements restapi.Feed.
func (h *Hub) Subscribe(app string) (<-chan []byte, func()) {
	s := &sub{ch: make(chan []byte, Buffer)}
	h.mu.Lock()
	if h.subs[app] == nil {
		h.subs[app] = map[*sub]struct{}{}
	}
	h.subs[app][s] = struct{}{}
	h.mu.Unlock()
	var once sync.Once
	return s.ch, func() {
		once.Do(func() {
			h.mu.Lock()
			delete(h.subs[app], s)
			if len(h.subs[app]) == 0 {
				delete(h.subs, app)
			}
			h.mu.Unlock()
			close(s.ch)
		})
	}
}

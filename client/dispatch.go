package client

import (
	"sync"
	"time"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// item is one thing for the handlers, in arrival order.
type item struct {
	frame        *inFrame // event or snapshot
	kicked       *Kicked
	disconnected bool
	err          error
	reconnected  bool
	end          bool
}

// queue carries items from the reader to the dispatcher. Frames wait when
// max items are queued (the reader stops reading: flow control reaches the
// server); control items never wait, so stopping cannot deadlock.
type queue struct {
	mu    sync.Mutex
	items []item
	max   int
	ready chan struct{} // signalled when items were added
	space chan struct{} // signalled when items were taken
}

func newQueue(max int) *queue {
	return &queue{max: max, ready: make(chan struct{}, 1), space: make(chan struct{}, 1)}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (q *queue) push(it item, stopped <-chan struct{}) {
	for {
		q.mu.Lock()
		if len(q.items) < q.max {
			q.items = append(q.items, it)
			q.mu.Unlock()
			signal(q.ready)
			return
		}
		q.mu.Unlock()
		select {
		case <-q.space:
		case <-stopped:
			return
		}
	}
}

func (q *queue) pushControl(it item) {
	q.mu.Lock()
	q.items = append(q.items, it)
	q.mu.Unlock()
	signal(q.ready)
}

func (q *queue) take() []item {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			out := q.items
			q.items = nil
			q.mu.Unlock()
			signal(q.space)
			return out
		}
		q.mu.Unlock()
		<-q.ready
	}
}

// dispatch runs the handlers, one item at a time, until the end item.
// After Close nothing more is delivered; after any other stop (a kick) the
// queue is drained first, so the kick handler runs.
func (c *Client) dispatch() {
	for {
		for _, it := range c.q.take() {
			if it.end {
				return
			}
			if c.stopReason() == ErrClosed {
				continue
			}
			c.busy.Lock()
			c.handle(it)
			c.busy.Unlock()
		}
	}
}

func (c *Client) handle(it item) {
	h := &c.cfg.Handlers
	switch {
	case it.kicked != nil:
		k := *it.kicked
		var fn func(Kicked)
		switch k.Code {
		case CodeLoginOtherDevice:
			fn = h.OnUserDidLoginFromOtherDevice
		case CodeKickedByOtherDevice:
			fn = h.OnUserKickedByOtherDevice
		case CodeUserRemoved:
			fn = h.OnUserRemoved
		case CodePasswordChanged:
			fn = h.OnPasswordChanged
		}
		if fn != nil {
			fn(k)
		}
	case it.disconnected:
		c.snap = nil // the parts of a snapshot whose connection ended never complete
		if h.OnDisconnected != nil {
			h.OnDisconnected(it.err)
		}
	case it.reconnected:
		if h.OnReconnected != nil {
			h.OnReconnected()
		}
	case it.frame != nil && it.frame.Type == "snapshot":
		s, ok := c.snapshotPart(it.frame)
		if !ok {
			return
		}
		c.epoch, c.lastSeq = s.Epoch, s.Seq
		if h.OnSnapshot != nil {
			h.OnSnapshot(s)
		}
		if c.cfg.AckInterval > 0 {
			c.Ack(s.Epoch, s.Seq)
		}
	case it.frame != nil:
		c.handleEvent(it.frame)
	}
}

// snapshotPart takes one part of a snapshot (docs/protocol.md: parts
// numbered from 0, more on every one but the last, each a slice of the
// lists) and returns the whole snapshot at its last part. A part 0 starts a
// new snapshot; a part out of order drops what was held (the server never
// sends one: the next connection gets a new snapshot).
func (c *Client) snapshotPart(f *inFrame) (Snapshot, bool) {
	s, err := f.snapshot()
	if err != nil {
		c.log.Warn("bad snapshot", "part", f.Part, "err", err)
		c.snap = nil
		return s, false
	}
	switch {
	case f.Part == 0:
		c.snap = &s
	case c.snap == nil || f.Part != c.snapNext || s.Epoch != c.snap.Epoch || s.Seq != c.snap.Seq:
		c.log.Warn("snapshot part out of order", "part", f.Part, "want", c.snapNext)
		c.snap = nil
		return s, false
	default:
		proto.Merge(c.snap.Contacts, s.Contacts) // repeated fields concatenate
		proto.Merge(c.snap.Groups, s.Groups)
		c.snap.Conversations = append(c.snap.Conversations, s.Conversations...)
	}
	c.snapNext = f.Part + 1
	if f.More {
		return s, false
	}
	out := *c.snap
	c.snap = nil
	return out, true
}

// handleEvent drops an event already seen in this epoch (a resend after a
// reconnect), then routes it.
func (c *Client) handleEvent(f *inFrame) {
	if f.Epoch == c.epoch && f.Seq <= c.lastSeq {
		c.dups.Add(1)
		return
	}
	entry := &pb.TimelineEntry{}
	if err := unmarshalPart(f.Entry, entry); err != nil {
		c.log.Warn("bad event entry", "seq", f.Seq, "err", err)
		return
	}
	c.epoch, c.lastSeq = f.Epoch, f.Seq
	ev := Event{Epoch: f.Epoch, Seq: f.Seq, Name: f.Name, Entry: entry, Received: time.Now()}
	h := &c.cfg.Handlers
	if h.OnEvent != nil {
		h.OnEvent(ev)
	}
	kind := entry.GetSource().GetKind()
	ki, _ := engine.LookupKind(kind)
	switch {
	case kind == pb.Kind_KIND_MESSAGE_SEND:
		if h.OnMessage != nil {
			h.OnMessage(ev)
		}
	case ki.Category == engine.CatMessage:
		if h.OnReceipt != nil {
			h.OnReceipt(ev)
		}
	case entry.MultiDevice:
		c.multiDevice(ev, kind, ki.Category)
	}
	if c.cfg.AckInterval > 0 {
		c.Ack(f.Epoch, f.Seq)
	}
}

func (c *Client) multiDevice(ev Event, kind pb.Kind, cat engine.Category) {
	h := &c.cfg.Handlers
	src := ev.Entry.GetSource()
	md := MultiDeviceEvent{Event: ev}
	var fn func(MultiDeviceEvent)
	switch cat {
	case engine.CatContact:
		fn, md.Target = h.OnContactEvent, src.GetContact().GetUser()
	case engine.CatGroup:
		fn, md.Target = h.OnGroupEvent, src.GetGroup().GetGroupId()
	case engine.CatThread:
		fn, md.Target = h.OnChatThreadEvent, src.GetThread().GetThreadId()
	case engine.CatConversation:
		fn, md.Target = h.OnConversationEvent, src.GetConversation().GetConversationId()
		if kind == pb.Kind_KIND_REMOTE_MESSAGES_REMOVE {
			fn = h.OnRemoteMessagesRemoved
		}
	}
	if fn != nil {
		fn(md)
	}
}

package gateway

import (
	"sync"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// The live path. A delivery effect carries the timeline entry it appended,
// so a follower that has sent everything up to the entry's predecessor
// sends it without reading it back from the store, and every device of the
// user that receives it is sent the same bytes, encoded once. Anything
// else reads the store from the last sequence sent, as before:
//
//   - a gap (the entry is not the next sequence: a hint was lost, or the
//     follower is still catching up), the live queue overflowed, or the
//     follower has no epoch yet;
//   - the session sweep's wake (notify), which re-reads in case a hint was
//     lost after the last entry.
//
// Why the epoch is right: a timeline's epoch is set once, when it opens
// (engine/timeline.go), and never changes; a follower with an epoch got it
// from the store's meta of this timeline, so an entry of the same timeline
// with the next sequence is in that epoch. Why nothing is skipped or
// repeated: the follower still only sends seq = last sent + 1 (or reads
// the store from last sent), exactly the store path's rule.

// maxLive bounds the live entries queued for one follower; past it they
// are dropped and the follower reads the store instead. An idle
// connection holds none (the slice grows on the first delivery).
const maxLive = 64

// liveEvent is one delivered entry, shared by every connection of its
// user; its frame is encoded at most once per epoch seen (one, in
// practice).
type liveEvent struct {
	entry *pb.TimelineEntry

	mu    sync.Mutex
	epoch string
	b     []byte
}

// frame returns the event frame of the entry at epoch.
func (ev *liveEvent) frame(epoch string) ([]byte, error) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if ev.b != nil && ev.epoch == epoch {
		return ev.b, nil
	}
	b, err := encodeEvent(epoch, ev.entry)
	if err != nil {
		return nil, err
	}
	ev.epoch, ev.b = epoch, b
	return b, nil
}

// deliver queues a live entry for the follower and starts one if none
// runs, unless the entry was already sent.
func (c *conn) deliver(ev *liveEvent) {
	seq := ev.entry.GetSeq()
	c.mu.Lock()
	if c.attached && c.lastEpoch != "" && seq <= c.lastSeq {
		c.mu.Unlock()
		return
	}
	if len(c.live) < maxLive {
		c.live = append(c.live, ev)
	} else {
		c.reread = true
	}
	start := c.startFollowerLocked()
	c.mu.Unlock()
	if start {
		go c.resumeFollow()
	}
}

// startFollowerLocked reports whether the caller must start a follower
// (go c.resumeFollow()): the first one was started and none runs now. It
// marks one running and counts it in wg. c.mu held.
func (c *conn) startFollowerLocked() bool {
	if !c.fattached || c.following || c.fstopped || c.ctx.Err() != nil {
		return false
	}
	c.following = true
	c.wg.Add(1)
	return true
}

// takeLive returns the queued live entries and whether the store must be
// read (an overflow, or a notify); idle when there is neither, and then
// the follower is marked not running: it must return.
func (c *conn) takeLive() (live []*liveEvent, reread, idle bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	live, reread = c.live, c.reread
	c.live, c.reread = nil, false
	if len(live) == 0 && !reread {
		c.following = false
		return nil, false, true
	}
	return live, reread, false
}

// sendLive sends the live entries that continue (epoch, *seq) in order,
// advancing *seq; it returns read=true when the store must be read (a gap,
// or no epoch yet), ok=false when the connection is closing.
func (c *conn) sendLive(epoch string, seq *uint64, live []*liveEvent) (read, ok bool) {
	for _, ev := range live {
		e := ev.entry
		if e.Seq <= *seq {
			continue
		}
		if epoch == "" || e.Seq != *seq+1 {
			return true, true
		}
		if engine.Visible(e, c.loginID) {
			b, err := ev.frame(epoch)
			if err != nil {
				c.terminate(engine.CodeInternal, statusEnded, errorJSON("", engine.CodeInternal, wireMessage(err)))
				return false, false
			}
			c.setSent(epoch, e.Seq)
			if !c.push(outFrame{b: b, typ: "event"}) {
				return false, false
			}
			c.g.m.live.Inc()
		} else {
			c.setSent(epoch, e.Seq)
		}
		*seq = e.Seq
	}
	return false, true
}

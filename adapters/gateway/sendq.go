package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"time"

	"github.com/coder/websocket"
	"github.com/mdsync/mdsync/engine"
)

// A connection's send queue costs nothing while it is empty: no buffer
// (the slice grows with what is queued, up to Options.SendQueue, and is
// dropped when the writer takes it) and no goroutine (a writer starts with
// the first queued frame and returns when the queue is empty). Frames are
// written in the order they were queued, one writer at a time.

// push queues a frame, waiting while SendQueue frames are queued or being
// written (events are read from the store only as the queue drains);
// false when the connection is closing.
func (c *conn) push(f outFrame) bool { return c.pushWithin(f, c.g.o.SendQueue) }

// pushWithin is push, waiting while limit (at most SendQueue) frames are
// queued or being written.
func (c *conn) pushWithin(f outFrame, limit int) bool {
	for {
		c.qmu.Lock()
		if c.qclosed || c.ctx.Err() != nil {
			c.qmu.Unlock()
			return false
		}
		if c.qn < limit {
			c.enqueueLocked(f)
			c.qmu.Unlock()
			return true
		}
		if c.qspace == nil {
			c.qspace = make(chan struct{})
		}
		space := c.qspace
		c.qmu.Unlock()
		select {
		case <-space:
		case <-c.ctx.Done():
			return false
		}
	}
}

// reply queues an answer without waiting: a device whose answers overflow
// the queue is not reading them (1016). False when the connection is closing.
func (c *conn) reply(v any, typ string) bool {
	var (
		b   []byte
		err error
	)
	if r, ok := v.(resultFrame); ok {
		b = r.appendJSON(make([]byte, 0, 128))
	} else {
		b, err = json.Marshal(v)
	}
	if err != nil {
		c.terminate(engine.CodeInternal, statusEnded, errorJSON("", engine.CodeInternal, wireMessage(err)))
		return false
	}
	c.qmu.Lock()
	if c.qclosed || c.ctx.Err() != nil {
		c.qmu.Unlock()
		return false
	}
	if c.qn >= c.g.o.SendQueue {
		c.qmu.Unlock()
		c.terminate(engine.CodeSlowConsumer, statusEnded, errorJSON("", engine.CodeSlowConsumer, "send queue full"))
		return false
	}
	c.enqueueLocked(outFrame{b: b, typ: typ})
	c.qmu.Unlock()
	return true
}

// closeAfterQueued closes the connection once the frames queued before
// are written.
func (c *conn) closeAfterQueued(code engine.Code, status websocket.StatusCode) {
	c.push(outFrame{close: true, code: code, status: status})
}

// enqueueLocked appends f and starts a writer when none runs. c.qmu held.
func (c *conn) enqueueLocked(f outFrame) {
	c.q = append(c.q, f)
	c.qn++
	if !c.writing {
		c.writing = true
		c.writerDone = make(chan struct{})
		c.wg.Add(1)
		go c.writer(c.writerDone)
	}
}

// coalesceBytes bounds the frames the writer sends in one write: a group
// ends with the frame that reaches it, and what is queued behind goes in
// the next write. Past a few tens of KiB one write per frame costs little
// next to copying the bytes, and the socket's buffer takes no more at once.
const coalesceBytes = 32 << 10

// writer writes queued frames in order until the queue is empty or the
// connection closes: what it finds queued at each wake-up in groups
// (groupLen) that each leave in one write (writeGroup).
func (c *conn) writer(done chan struct{}) {
	defer c.wg.Done()
	defer close(done)
	for {
		c.qmu.Lock()
		batch := c.q
		c.q = nil
		if len(batch) == 0 || c.ctx.Err() != nil {
			// Closing: writing stays true, so no writer starts again.
			c.writing = c.ctx.Err() != nil
			c.qmu.Unlock()
			return
		}
		c.qmu.Unlock()
		for len(batch) > 0 {
			if c.ctx.Err() != nil {
				return
			}
			if f := batch[0]; f.close {
				c.terminate(f.code, f.status, f.b)
				return
			}
			n := groupLen(batch)
			if !c.writeGroup(batch[:n]) {
				return
			}
			clear(batch[:n]) // the frames' bytes are the socket's now
			batch = batch[n:]
		}
	}
}

// groupLen returns how many frames at the start of batch go in one write:
// up to the first close order (not included) or the frame that brings
// their bytes to coalesceBytes (included). batch[0] is not a close order.
func groupLen(batch []outFrame) int {
	size := 0
	for i, f := range batch {
		if f.close {
			return i
		}
		if size += len(f.b); size >= coalesceBytes {
			return i + 1
		}
	}
	return len(batch)
}

// writeGroup writes fs in order within WriteTimeout, in one write when the
// socket is a leanConn (corked until the last frame), then gives their
// queue slots back. False when the connection ends: the write failed or
// timed out, and the teardown is started.
//
// On a leanConn the bound is the socket's write deadline, cleared after
// the group, and the library is given a context that never ends: with a
// context that can end it arms and disarms a context.AfterFunc for every
// frame, which was a timer, a context and an AfterFunc allocated per frame
// (3% of the server's allocations in the throughput scenario).
func (c *conn) writeGroup(fs []outFrame) bool {
	ctx := context.Background()
	if c.sock != nil {
		c.sock.SetWriteDeadline(time.Now().Add(c.g.o.WriteTimeout))
	} else {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.g.o.WriteTimeout)
		defer cancel()
	}
	cork := c.sock != nil && len(fs) > 1
	if cork {
		c.sock.cork()
		defer c.sock.uncork() // a failed write leaves it corked otherwise
	}
	for i, f := range fs {
		if cork && i == len(fs)-1 {
			c.sock.uncork() // this frame's write sends the group
		}
		if err := c.ws.Write(ctx, websocket.MessageText, f.b); err != nil {
			if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
				// The socket took nothing for WriteTimeout: the device
				// does not read. (On a context, the library closed the
				// socket; past the deadline, the teardown's final frame
				// fails at once and the socket is closed.)
				c.terminate(engine.CodeSlowConsumer, statusEnded, errorJSON("", engine.CodeSlowConsumer, "send queue full"))
			} else {
				c.terminate(0, websocket.StatusNormalClosure, nil)
			}
			return false
		}
	}
	if c.sock != nil {
		// Cleared once the group is written: the library's own control
		// frames (a pong, the close handshake) and the teardown's final
		// frame are written outside it. A failed group leaves it passed,
		// so the teardown's final frame fails at once on a stuck socket.
		c.sock.SetWriteDeadline(time.Time{})
	}
	c.g.m.writeGroup.Observe(float64(len(fs)))
	for i := 0; i < len(fs); {
		j := i + 1
		for j < len(fs) && fs[j].typ == fs[i].typ {
			j++
		}
		c.g.m.frames.WithLabelValues("out", fs[i].typ).Add(float64(j - i))
		i = j
	}
	c.qmu.Lock()
	c.qn -= len(fs)
	if c.qspace != nil {
		close(c.qspace)
		c.qspace = nil
	}
	c.qmu.Unlock()
	return true
}

// stopWriter closes the queue for good and waits for the writer, if one
// runs, to return (the teardown writes the final frame after it).
func (c *conn) stopWriter() {
	c.qmu.Lock()
	c.qclosed = true
	done := c.writerDone
	c.qmu.Unlock()
	if done != nil {
		<-done
	}
}

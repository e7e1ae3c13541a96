package gateway

import (
	"context"
	"errors"
	"time"

	"github.com/coder/websocket"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// A connection's operations (docs/protocol.md, "Order and admission"):
//
//   - The reader admits an op frame, or refuses it at once: 1008 for what
//     a device may never do, 1019 (CodeBusy) when the connection or the
//     gateway is at its bound of ops in flight. An admitted op joins the
//     connection's queue in receive order. The engine may still refuse it
//     with 1019 when the node's ops awaiting decisions are at their bound
//     (engine.Options.MaxPending, MaxPendingAge), before appending
//     anything; its retry_after_ms is then the engine's.
//   - One drainer goroutine per connection, started when the queue gets
//     its first op and gone when it is empty, hands everything queued to
//     Engine.Begin as one batch, and the next batch only after Begin
//     returned (the batch is durable): ops are decided in receive order.
//   - One answerer per batch waits for the batch's decisions and writes
//     the results; results of different batches may interleave (answers
//     may come back out of order, decisions may not).
//
// An idle connection has neither goroutine.

// opReq is one admitted op.
type opReq struct {
	id     string
	ev     *pb.Event
	logout bool
	at     time.Time // admitted by the reader (mdsync_gateway_op_stage_seconds)
}

// maxOpBatch bounds the ops of one Begin.
const maxOpBatch = 256

// forbidden are the kinds a device may not submit over its connection.
var forbidden = map[pb.Kind]string{
	pb.Kind_KIND_LOGIN:           "log in with a login frame",
	pb.Kind_KIND_POLICY_SET:      "policy changes are made through the admin API",
	pb.Kind_KIND_PASSWORD_CHANGE: "password changes are made through the REST API",
	pb.Kind_KIND_USER_REMOVE:     "user removal is made through the REST API",
	pb.Kind_KIND_USER_REGISTER:   "registration is made through the REST API",
	pb.Kind_KIND_TOKENS_REVOKE:   "token revocation is made through the REST API",
	pb.Kind_KIND_DELIVER:         "deliveries are derived by mdsync",
	// The gateway records a device's connections itself.
	pb.Kind_KIND_DEVICE_CONNECTED:    "presence is recorded by the gateway",
	pb.Kind_KIND_DEVICE_DISCONNECTED: "presence is recorded by the gateway",
}

// admitOp queues an op frame or answers it at once; false ends reading.
func (c *conn) admitOp(f *frame) bool {
	ev := f.Event
	res := resultFrame{Type: "result", ID: f.ID}
	if why, no := forbidden[ev.Kind]; no {
		res.Code, res.Message = int32(engine.CodeForbidden), engine.KindName(ev.Kind)+" is not allowed on a device connection: "+why
		return c.reply(res, "result")
	}
	if a := ev.Actor; (ev.App != "" && ev.App != c.app) || a.GetAdmin() ||
		(a.GetUser() != "" && a.GetUser() != c.user) || (a.GetLoginId() != "" && a.GetLoginId() != c.loginID) {
		res.Code, res.Message = int32(engine.CodeForbidden), "a device acts only as its own app, user and login ID"
		return c.reply(res, "result")
	}
	// Envelope fields are the engine's to assign; the actor is the connection.
	ev.SchemaVersion, ev.StreamKey, ev.EventId, ev.TimeUnixMs = 0, "", "", 0
	ev.App = c.app
	ev.Actor = &pb.Actor{User: c.user, LoginId: c.loginID}

	r := &opReq{id: f.ID, ev: ev, logout: ev.Kind == pb.Kind_KIND_LOGOUT, at: time.Now()}
	c.mu.Lock()
	if c.inflight >= c.g.o.MaxOpsInFlight {
		c.mu.Unlock()
		return c.busy(f.ID, "connection")
	}
	if !c.g.admit() {
		c.mu.Unlock()
		return c.busy(f.ID, "gateway")
	}
	c.inflight++
	c.queue = append(c.queue, r)
	if r.logout {
		c.logoutPending++
	}
	start := !c.draining
	c.draining = true
	c.mu.Unlock()
	if start {
		c.wg.Add(1)
		go c.drain()
	}
	return true
}

// busy refuses an op with CodeBusy; bound names the bound that was full.
func (c *conn) busy(id, bound string) bool {
	return c.busyReply(id, bound, "too many operations in flight on this "+bound+"; retry after retry_after_ms", 0)
}

// busyReply answers an op with CodeBusy and retry_after_ms: after when the
// refusal came with its own (the engine's, derived from its drain), else
// Options.BusyRetryAfter.
func (c *conn) busyReply(id, bound, msg string, after time.Duration) bool {
	c.g.m.busy.WithLabelValues(bound).Inc()
	ms := after.Milliseconds()
	if ms <= 0 {
		ms = c.g.retryAfter(CodeBusy, "")
	}
	return c.reply(resultFrame{
		Type: "result", ID: id, Code: int32(CodeBusy), Message: msg,
		RetryAfterMs: ms,
	}, "result")
}

// drain submits the queue batch by batch until it is empty.
func (c *conn) drain() {
	defer c.wg.Done()
	for {
		c.mu.Lock()
		n := min(len(c.queue), maxOpBatch)
		batch := c.queue[:n:n]
		c.queue = c.queue[n:]
		if len(c.queue) == 0 {
			c.queue = nil
		}
		closing := c.ctx.Err() != nil
		if n == 0 || closing {
			// Ops not handed to Begin when the connection closes are not
			// decided (the device gets no result and retries them).
			dropped := append(batch, c.queue...)
			c.queue = nil
			c.draining = false
			c.mu.Unlock()
			for _, r := range dropped {
				c.done(r)
			}
			return
		}
		c.mu.Unlock()
		evs := make([]*pb.Event, n)
		t0 := time.Now()
		for i, r := range batch {
			evs[i] = r.ev
			c.g.m.stageQueue.Observe(t0.Sub(r.at).Seconds())
		}
		c.g.m.opBatch.Observe(float64(n))
		ctx, cancel := context.WithTimeout(c.ctx, c.g.o.SubmitTimeout)
		ps := c.g.o.Engine.Begin(ctx, evs)
		t1 := time.Now()
		c.g.m.stageBegin.Observe(t1.Sub(t0).Seconds())
		c.wg.Add(1)
		go c.answer(ctx, cancel, batch, ps, t1)
	}
}

// answer waits for a batch's decisions in order and answers each.
func (c *conn) answer(ctx context.Context, cancel context.CancelFunc, batch []*opReq, ps []*engine.Pending, begun time.Time) {
	defer c.wg.Done()
	defer cancel()
	for i, r := range batch {
		var (
			d   *pb.Decision
			err error
		)
		if i < len(ps) && ps[i] != nil {
			d, err = ps[i].Wait(ctx)
			if err == nil {
				c.g.m.stageDecide.Observe(time.Since(begun).Seconds())
			}
		} else {
			err = engine.Errorf(engine.CodeInternal, "gateway: the engine returned %d pendings for %d ops", len(ps), len(batch))
		}
		c.result(r, d, err)
	}
}

// result answers one decided op, then gives its slot back.
func (c *conn) result(r *opReq, d *pb.Decision, err error) {
	defer c.done(r)
	res := resultFrame{Type: "result", ID: r.id}
	switch {
	case err != nil:
		code := engine.CodeOf(err)
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			code = engine.CodeUnavailable
		}
		res.Code, res.Message = int32(code), wireMessage(err)
	default:
		res.Code, res.Message = d.Code, d.Message
		res.EventID, res.MessageID, res.Partition, res.Offset = d.EventId, d.MessageId, d.Partition, d.Offset
	}
	if res.Code == int32(CodeBusy) {
		// The node's bound (engine.Options.MaxPending, MaxPendingAge): not
		// decided, like the gateway's own bounds, and answered the same way.
		var after time.Duration
		if ee := (*engine.Error)(nil); errors.As(err, &ee) {
			after = ee.RetryAfter
		}
		c.busyReply(r.id, "node", res.Message+"; retry after retry_after_ms", after)
		c.g.m.stageBusy.Observe(time.Since(r.at).Seconds())
	} else {
		res.RetryAfterMs = c.g.retryAfter(engine.Code(res.Code), "")
		c.reply(res, "result")
		c.g.m.stageTotal.Observe(time.Since(r.at).Seconds())
	}
	if r.logout {
		c.mu.Lock()
		c.logoutPending--
		if res.Code == 0 {
			c.over = true
		}
		c.mu.Unlock()
		if res.Code == 0 {
			c.closeAfterQueued(engine.CodeOK, websocket.StatusNormalClosure)
		}
		return
	}
	if sessionEndedCode(engine.Code(res.Code)) {
		c.checkSession()
	}
}

// done gives back the slots an admitted op held.
func (c *conn) done(r *opReq) {
	c.mu.Lock()
	c.inflight--
	c.mu.Unlock()
	c.g.release(1)
}

// sessionEndedCode reports the codes an op is refused with when its
// actor's session has ended (or, 1005, is unknown).
func sessionEndedCode(code engine.Code) bool {
	switch code {
	case engine.CodeLoginOtherDevice, engine.CodeUserRemoved, engine.CodePasswordChanged,
		engine.CodeKickedByOtherDevice, engine.CodeNotFound:
		return true
	}
	return false
}

// checkSession closes the connection when its login ID is no longer an
// active session. An op refused with a session-ended code is the hint; the
// store is the truth (1005 is also the answer to kicking a device that is
// not logged in, which must not close the kicker).
func (c *conn) checkSession() {
	if !c.isAttached() {
		return
	}
	ss, err := c.g.o.Store.Devices(c.app, c.user)
	if err != nil || hasSession(ss, c.loginID) {
		return
	}
	c.sessionGone(true) // after the op's result
}

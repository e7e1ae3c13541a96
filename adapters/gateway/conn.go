package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// timelinePage is how many entries one timeline read returns at most.
const timelinePage = 128

// maxPendingEnds bounds the session ends kept for a connection that is
// still logging in.
const maxPendingEnds = 8

// statusEnded is the close status after a kick or a connection-level error.
const statusEnded websocket.StatusCode = 4000

// outFrame is one queued server frame, or (close) the order to close once
// every frame before it is written, after writing b when set.
type outFrame struct {
	b      []byte
	typ    string
	close  bool
	code   engine.Code
	status websocket.StatusCode
}

// conn is one device connection. Its goroutines: serve, for the whole
// connection (it waits for the socket; what arrives is read and handled
// on a short-lived goroutine, readAside); the others only while they have
// work: the writer (while frames are queued, sendq.go), the follower
// (while the timeline has something to send, live.go), the op drainer and
// one answerer per submitted batch (while ops are in flight, pipeline.go),
// and the closer. An idle connection has serve's only. Teardown starts
// with terminate.
type conn struct {
	g      *Gateway
	ws     *websocket.Conn
	lean   *leanConn // ws's socket when it can wait for readability (leanconn.go), else nil
	sock   *leanConn // ws's socket when it is a leanConn (the writer corks it), else nil
	remote string
	number uint64 // within the gateway's incarnation, for presence ops

	// Set by register, before any other goroutine sees the conn.
	app, user, loginID string
	platform           int32
	batch              bool // the device takes events frames (batch.go)

	ctx    context.Context // done when the connection is being torn down
	cancel context.CancelFunc

	wg        sync.WaitGroup // writer, follower, drainer, answerers, closer
	closeOnce sync.Once
	closeCode atomic.Int32

	lastSeen atomic.Int64 // unix nanoseconds of the last frame received
	gotFirst atomic.Bool
	watchdog *time.Timer

	mu            sync.Mutex
	registered    bool
	attached      bool
	over          bool  // the session ended (kicked, evicted, logged out)
	sessionOffset int64 // log offset of the login that opened the session
	pendingEnds   []*pb.Ended
	logoutPending int
	lastEpoch     string // the last position sent (lastSent)
	lastSeq       uint64

	// The follower (follow, run; live.go). following: a follower goroutine
	// runs; it is set by whoever starts one (attach, deliver, notify)
	// and cleared by the follower itself, under mu, when it finds nothing
	// to send, so one runs at a time and none is missed.
	live      []*liveEvent // delivered entries not yet taken by the follower
	reread    bool         // the follower must read the store
	following bool
	fattached bool // the first follower was started (by attach)
	fstopped  bool // serve is waiting for the goroutines: start none
	// The follower's own state, touched only by the running follower.
	fepoch     string
	fseq       uint64
	freadStore bool
	fcaughtUp  bool
	fsent      int
	fstart     time.Time

	// The send queue (sendq.go).
	qmu        sync.Mutex
	q          []outFrame    // queued, not yet taken by the writer; nil when empty
	qn         int           // queued or taken and not yet written
	qspace     chan struct{} // closed when a frame was written (a push waits on it)
	writing    bool          // a writer goroutine runs (or the queue is closed for good)
	writerDone chan struct{} // closed when the current writer returns
	qclosed    bool          // teardown: no writer starts again

	cursor cursorState // the acknowledged position (cursor.go)

	// The op pipeline (pipeline.go).
	queue    []*opReq // admitted, not yet handed to Begin, in receive order
	draining bool     // the drainer goroutine runs
	inflight int      // admitted and not yet answered
}

func newConn(g *Gateway, ws *websocket.Conn, lean *leanConn, remote string) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	sock := lean
	if lean != nil && lean.raw == nil {
		lean = nil
	}
	c := &conn{
		g: g, ws: ws, lean: lean, sock: sock, remote: remote, number: g.connSeq.Add(1),
		ctx: ctx, cancel: cancel,
	}
	c.lastSeen.Store(g.o.Now().UnixNano())
	return c
}

func (c *conn) seen() time.Time { return time.Unix(0, c.lastSeen.Load()) }

func (c *conn) isAttached() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.attached && !c.over
}

func (c *conn) sessionOver() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.over
}

// serve runs the reader until the connection ends, then waits for the
// connection's other goroutines.
//
// While the device sends nothing, serve's goroutine only waits for the
// socket to be readable (leanConn.waitRead: a few frames deep, no buffer
// until bytes arrive), and what arrives is read and handled on a
// short-lived goroutine (readAside). Reading and handling frames goes deep (the library's
// reader, JSON, a login's decision and store reads); a goroutine that did
// it and then parks for the connection's life keeps that stack, 8-32 KiB
// per idle device, where the waiting one needs 2 KiB.
func (c *conn) serve() {
	c.ws.SetReadLimit(int64(c.g.o.MaxFrameBytes) + 1)
	c.watchdog = time.AfterFunc(c.g.o.LoginTimeout, c.checkIdle)
	end := readIdle
	for end == readIdle {
		if c.lean != nil && c.lean.waitRead() != nil {
			end = readFailed
			break
		}
		end = c.readAside()
	}
	c.endCursor() // no ack comes after the reader
	if end == readFailed {
		// The peer went away or the socket was closed: stop the rest.
		c.terminate(0, websocket.StatusNormalClosure, nil)
	}
	c.watchdog.Stop()
	c.mu.Lock()
	c.fstopped = true // no follower starts after this: every wg.Add is before the Wait
	c.mu.Unlock()
	c.wg.Wait()
	c.mu.Lock()
	registered, attached := c.registered, c.attached
	c.mu.Unlock()
	if attached {
		c.g.m.connected.WithLabelValues(strconv.Itoa(int(c.platform))).Dec()
		if !c.sessionOver() {
			// After wg.Wait: the connect of this connection was appended
			// (or given up) first. Graceful shutdown waits for it too.
			c.recordPresence(context.Background(), pb.Kind_KIND_DEVICE_DISCONNECTED)
		}
	}
	if registered {
		c.g.unregister(c, attached)
	}
	c.g.m.disconnects.WithLabelValues(codeLabel(c.closeCode.Load())).Inc()
}

// readEnd says why read returned.
type readEnd int

const (
	readIdle   readEnd = iota // nothing read from the socket is left: wait for it
	readFailed                // the socket failed or was closed
	readEnded                 // a frame ended the connection (the teardown started, or the close is queued)
)

// readAside runs read on a goroutine of its own and waits for it (serve).
func (c *conn) readAside() readEnd {
	if c.lean == nil {
		return c.read() // never idle: the one goroutine reads
	}
	end := make(chan readEnd, 1)
	go func() { end <- c.read() }()
	return <-end
}

// read reads frames until the socket fails, a frame ends the connection,
// or (with a leanConn) every byte read from the socket has been handled.
func (c *conn) read() readEnd {
	for n := 0; ; n++ {
		if n > 0 && c.lean != nil && !c.lean.buffered() {
			return readIdle
		}
		typ, r, err := c.ws.Reader(context.Background())
		if err != nil {
			return readFailed
		}
		b, err := io.ReadAll(io.LimitReader(r, int64(c.g.o.MaxFrameBytes)+1))
		if err != nil {
			return readFailed
		}
		c.lastSeen.Store(c.g.o.Now().UnixNano())
		if len(b) > c.g.o.MaxFrameBytes {
			c.g.m.frames.WithLabelValues("in", "too_large").Inc()
			c.terminate(engine.CodeTooLarge, websocket.StatusMessageTooBig,
				errorJSON("", engine.CodeTooLarge, "message exceeds "+strconv.Itoa(c.g.o.MaxFrameBytes)+" bytes"))
			return readEnded
		}
		if typ != websocket.MessageText {
			c.g.m.frames.WithLabelValues("in", "binary").Inc()
			if !c.reply(errorFrame{Type: "error", Code: int32(engine.CodeInvalidArgument), Message: "messages are JSON text"}, "error") {
				return readEnded
			}
			continue
		}
		first := !c.gotFirst.Swap(true)
		f, id, err := decodeFrame(b)
		if f != nil {
			c.g.m.frames.WithLabelValues("in", f.Type).Inc()
		} else {
			c.g.m.frames.WithLabelValues("in", "invalid").Inc()
		}
		if first {
			// The first frame decides the connection: login or resume.
			if f == nil || (f.Type != typeLogin && f.Type != typeResume) {
				if f != nil || err == nil || !looksLikeLogin(b) {
					c.terminate(engine.CodeUnauthenticated, statusEnded, errorJSON(id, engine.CodeUnauthenticated, "the first message must be login or resume"))
					return readEnded
				}
				// A malformed login: answer it as a login.
				c.refuse(id, engine.CodeOf(err), wireMessage(err))
				return readEnded
			}
			c.watchdog.Reset(c.g.o.HeartbeatTimeout)
			if !c.start(f) {
				return readEnded
			}
			continue
		}
		if err != nil {
			if !c.reply(errorFrame{Type: "error", ID: id, Code: int32(engine.CodeOf(err)), Message: wireMessage(err)}, "error") {
				return readEnded
			}
			continue
		}
		if !c.handle(f) {
			return readEnded
		}
	}
}

// looksLikeLogin reports whether a frame that failed to decode is a login
// or resume (it had a type field naming one).
func looksLikeLogin(b []byte) bool {
	var t struct {
		Type string `json:"type"`
	}
	return json.Unmarshal(b, &t) == nil && (t.Type == typeLogin || t.Type == typeResume)
}

// checkIdle runs on the watchdog timer: before the first frame the login
// timeout applies, after it the heartbeat timeout.
func (c *conn) checkIdle() {
	limit, code := c.g.o.LoginTimeout, engine.CodeUnauthenticated
	if c.gotFirst.Load() {
		limit, code = c.g.o.HeartbeatTimeout, engine.CodeIdleTimeout
	}
	idle := c.g.o.Now().Sub(c.seen())
	if idle < limit {
		c.watchdog.Reset(limit - idle)
		return
	}
	msg := "no frame within " + limit.String()
	if code == engine.CodeUnauthenticated {
		msg = "no login within " + limit.String()
	}
	c.terminate(code, statusEnded, errorJSON("", code, msg))
}

// handle serves one request of an attached connection; false ends reading.
func (c *conn) handle(f *frame) bool {
	switch f.Type {
	case typeLogin, typeResume:
		return c.reply(errorFrame{Type: "error", ID: f.ID, Code: int32(engine.CodeConflict), Message: "already logged in on this connection"}, "error")
	case typePing:
		return c.reply(pongFrame{Type: "pong", ID: f.ID}, "pong")
	case typeAck:
		c.mu.Lock()
		ok := f.Epoch == c.lastEpoch && f.Seq <= c.lastSeq
		c.mu.Unlock()
		if !ok {
			return c.reply(errorFrame{Type: "error", ID: f.ID, Code: int32(engine.CodeInvalidArgument), Message: "ack beyond the last event sent"}, "error")
		}
		if err := c.ack(f.Epoch, f.Seq); err != nil {
			return c.reply(errorFrame{Type: "error", ID: f.ID, Code: int32(engine.CodeUnavailable), Message: wireMessage(err)}, "error")
		}
		return true
	case typeSelfIDs:
		ids, err := c.g.o.Store.SelfIDs(c.app, c.user, c.loginID)
		if err != nil {
			return c.reply(errorFrame{Type: "self_ids_result", ID: f.ID, Code: int32(engine.CodeUnavailable), Message: wireMessage(err)}, "self_ids_result")
		}
		if ids == nil {
			ids = []string{}
		}
		return c.reply(selfIDsFrame{Type: "self_ids_result", ID: f.ID, LoginIDs: ids}, "self_ids_result")
	case typeHistory:
		es, err := c.g.o.Store.History(c.app, c.user, f.ChatType, f.ConversationID, f.Before, f.Limit)
		var raw []json.RawMessage
		if err == nil {
			raw, err = encodeEntries(es)
		}
		if err != nil {
			return c.reply(errorFrame{Type: "history_result", ID: f.ID, Code: int32(engine.CodeUnavailable), Message: wireMessage(err)}, "history_result")
		}
		return c.reply(historyFrame{Type: "history_result", ID: f.ID, Entries: raw}, "history_result")
	case typeOp:
		return c.admitOp(f)
	}
	return true
}

// start handles the first frame; false when the connection is closing.
func (c *conn) start(f *frame) bool {
	if err := c.g.o.Auth.Authenticate(f.App, f.User, f.Password, f.Token, c.remote); err != nil {
		code := engine.CodeOf(err)
		if code != engine.CodeRateLimited {
			code = engine.CodeUnauthenticated
		}
		c.refuse(f.ID, code, "authentication failed")
		return false
	}
	if c.g.o.Owner != nil {
		if addr, local := c.g.o.Owner.Owner(f.App, f.User); !local {
			msg := "the user's partition is served by " + addr
			if addr == "" {
				msg = "the user's partition is not served here and its owner is not known yet; retry"
			}
			c.g.m.logins.WithLabelValues(codeLabel(int32(engine.CodeNotOwner))).Inc()
			b, _ := json.Marshal(errorFrame{Type: "error", ID: f.ID, Code: int32(engine.CodeNotOwner), Message: msg, Addr: addr,
				RetryAfterMs: c.g.retryAfter(engine.CodeNotOwner, addr)})
			c.terminate(engine.CodeNotOwner, statusEnded, b)
			return false
		}
	}
	c.app, c.user, c.batch = f.App, f.User, f.Batch
	if f.Type == typeResume {
		return c.resume(f)
	}
	c.loginID, c.platform = f.LoginID, f.Platform
	if c.loginID == "" {
		c.loginID = randomID()
	}
	// Register before the decision, so that a session end applied between
	// the decision and the attach still reaches this connection.
	if !c.register() {
		return false
	}
	ev := &pb.Event{
		App: c.app, ClientOpId: "gw-" + randomID(), Kind: pb.Kind_KIND_LOGIN,
		Actor: &pb.Actor{User: c.user, LoginId: c.loginID},
		Payload: &pb.Event_Login{Login: &pb.Login{
			Platform: f.Platform, LoginId: c.loginID, DeviceName: f.DeviceName, Extension: f.Extension, AutoLogin: f.AutoLogin,
		}},
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.g.o.SubmitTimeout)
	d, err := c.g.o.Engine.Begin(ctx, []*pb.Event{ev})[0].Wait(ctx)
	cancel()
	if err != nil {
		code := engine.CodeOf(err)
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			code = engine.CodeUnavailable
		}
		c.refuse(f.ID, code, wireMessage(err))
		return false
	}
	if d.Code != 0 {
		c.refuse(f.ID, engine.Code(d.Code), d.Message)
		return false
	}
	epoch, seq, ok, err := c.g.o.Store.Cursor(c.app, c.user, c.loginID)
	if err != nil {
		c.refuse(f.ID, engine.CodeUnavailable, wireMessage(err))
		return false
	}
	return c.attach(d.Offset, loginResultFrame{
		Type: "login_result", ID: f.ID, LoginID: d.LoginId, Reconnect: d.Reconnect, PolicyVersion: d.PolicyVersion,
	}, position{epoch, seq, ok})
}

// resume attaches to an active session without a new decision.
func (c *conn) resume(f *frame) bool {
	c.loginID = f.LoginID
	if !c.register() {
		return false
	}
	ss, err := c.g.o.Store.Devices(c.app, c.user)
	if err != nil {
		c.refuse(f.ID, engine.CodeUnavailable, wireMessage(err))
		return false
	}
	var s *pb.Session
	for _, x := range ss {
		if x.LoginId == c.loginID {
			s = x
		}
	}
	if s == nil {
		code, msg := c.endedCode()
		c.refuse(f.ID, code, msg)
		return false
	}
	c.platform = s.Platform
	pos := position{f.Epoch, f.Seq, f.Epoch != "" || f.Seq != 0}
	if !pos.ok {
		pos.epoch, pos.seq, pos.ok, err = c.g.o.Store.Cursor(c.app, c.user, c.loginID)
		if err != nil {
			c.refuse(f.ID, engine.CodeUnavailable, wireMessage(err))
			return false
		}
	}
	return c.attach(s.LoginOffset, loginResultFrame{Type: "login_result", ID: f.ID, LoginID: c.loginID, Resumed: true}, pos)
}

// endedCode is the answer to a resume of a session that is not active: the
// code that ended it when the audit trail has it, else 1005.
func (c *conn) endedCode() (engine.Code, string) {
	if e := c.lastEnd(); e != nil && e.Code != 0 {
		return engine.Code(e.Code), "the session ended: " + e.Reason.String()
	}
	return engine.CodeNotFound, "no active session with login ID " + c.loginID
}

// lastEnd returns the newest end of this login ID's sessions in the audit
// trail, or nil.
func (c *conn) lastEnd() *pb.Ended {
	ended, err := c.g.o.Store.Audit(c.app, c.user)
	if err != nil {
		return nil
	}
	for i := len(ended) - 1; i >= 0; i-- {
		if e := ended[i]; e.GetSession().GetLoginId() == c.loginID {
			return e
		}
	}
	return nil
}

// sessionGone closes an attached connection whose login ID the store no
// longer lists as active, when no effect did: with the kicked frame of the
// end the audit trail records (as the effect would have), or error 1005
// when the trail has no end of this session. afterQueued: the close comes
// after the frames already queued (an op's result), else at once.
func (c *conn) sessionGone(afterQueued bool) {
	c.mu.Lock()
	off := c.sessionOffset
	c.mu.Unlock()
	if e := c.lastEnd(); e != nil && e.Offset > off {
		c.end(e, afterQueued)
		return
	}
	c.mu.Lock()
	c.over = true
	c.mu.Unlock()
	c.close(afterQueued, engine.CodeNotFound, statusEnded, errorJSON("", engine.CodeNotFound, "no active session with login ID "+c.loginID))
}

// moved closes an attached connection whose user's partition another
// process (addr) now serves, with error 1018 naming it: the device logs in
// there. Without addr (the partition is still moving) the error carries
// retry_after_ms instead. Its disconnect is recorded (serve), through the
// owner.
func (c *conn) moved(addr string) {
	msg := "the user's partition is now served by " + addr
	if addr == "" {
		msg = "the user's partition is moving to another process; retry after retry_after_ms"
	}
	b, _ := json.Marshal(errorFrame{Type: "error", Code: int32(engine.CodeNotOwner), Message: msg, Addr: addr,
		RetryAfterMs: c.g.retryAfter(engine.CodeNotOwner, addr)})
	c.terminate(engine.CodeNotOwner, statusEnded, b)
}

// close is terminate, or (afterQueued) the same once the frames queued
// before it are written.
func (c *conn) close(afterQueued bool, code engine.Code, status websocket.StatusCode, final []byte) {
	if afterQueued {
		c.push(outFrame{b: final, close: true, code: code, status: status})
		return
	}
	c.terminate(code, status, final)
}

func (c *conn) register() bool {
	if !c.g.register(c) {
		c.terminate(0, websocket.StatusGoingAway, nil)
		return false
	}
	c.mu.Lock()
	c.registered = true
	c.mu.Unlock()
	return true
}

// refuse answers a login or resume with a non-zero code and closes.
func (c *conn) refuse(id string, code engine.Code, msg string) {
	c.g.m.logins.WithLabelValues(codeLabel(int32(code))).Inc()
	c.reply(loginResultFrame{Type: "login_result", ID: id, Code: int32(code), Message: msg, RetryAfterMs: c.g.retryAfter(code, "")}, "login_result")
	c.closeAfterQueued(code, statusEnded)
}

type position struct {
	epoch string
	seq   uint64
	ok    bool
}

// attach makes the connection the device's: answers the login, closes
// connections this one replaces, then starts following the timeline.
func (c *conn) attach(sessionOffset int64, res loginResultFrame, pos position) bool {
	c.g.m.logins.WithLabelValues("0").Inc()
	if !c.reply(res, "login_result") {
		return false
	}
	c.mu.Lock()
	c.attached, c.sessionOffset = true, sessionOffset
	pending := c.pendingEnds
	c.pendingEnds = nil
	c.mu.Unlock()
	c.g.m.connected.WithLabelValues(strconv.Itoa(int(c.platform))).Inc()
	if c.g.o.Process != "" {
		c.wg.Add(1) // the reader's own goroutine: before serve's Wait
		go func() {
			defer c.wg.Done()
			c.recordPresence(c.ctx, pb.Kind_KIND_DEVICE_CONNECTED)
		}()
	}
	for _, x := range c.g.others(c) {
		x.terminate(0, statusEnded, nil) // replaced by this connection
	}
	for _, e := range pending {
		c.ended(e)
	}
	c.mu.Lock()
	start := !c.fstopped
	c.fattached, c.following = start, start
	if start {
		c.wg.Add(1) // under c.mu: before serve's Wait (fstopped)
	}
	c.mu.Unlock()
	if start {
		go c.follow(pos)
	}
	return true
}

// recordPresence appends a presence op of this connection, with its last
// frame's time, when the gateway has a Process.
// Best effort: a failure is logged and costs only the freshness of the
// device list (the owner's gateway says who is connected now).
func (c *conn) recordPresence(ctx context.Context, kind pb.Kind) {
	if c.g.o.Process == "" {
		return
	}
	p := &pb.DevicePresence{RemoteAddr: c.remote, Process: c.g.o.Process, Incarnation: c.g.o.Incarnation, Connection: c.number,
		LastSeenUnixMs: c.seen().UnixMilli()}
	if len(p.RemoteAddr) > engine.MaxRemoteAddrBytes {
		p.RemoteAddr = p.RemoteAddr[:engine.MaxRemoteAddrBytes]
	}
	suffix := ".c"
	if kind == pb.Kind_KIND_DEVICE_DISCONNECTED {
		suffix = ".d"
	}
	ev := &pb.Event{
		App: c.app, ClientOpId: "pr." + c.g.o.Incarnation + "." + strconv.FormatUint(c.number, 36) + suffix, Kind: kind,
		Actor: &pb.Actor{User: c.user, LoginId: c.loginID}, Payload: &pb.Event_Presence{Presence: p},
	}
	ctx, cancel := context.WithTimeout(ctx, c.g.o.SubmitTimeout)
	defer cancel()
	d, err := c.g.o.Engine.Begin(ctx, []*pb.Event{ev})[0].Wait(ctx)
	if err == nil && d.Code != 0 {
		err = engine.Errorf(engine.Code(d.Code), "%s", d.Message)
	}
	if err != nil {
		c.g.o.Logger.Debug("gateway: presence not recorded", "kind", engine.KindName(kind), "app", c.app, "user", c.user, "login_id", c.loginID, "err", err)
	}
}

// ended is told that the session of this connection's login ID ended.
func (c *conn) ended(e *pb.Ended) { c.end(e, false) }

// end is ended; afterQueued as in sessionGone.
func (c *conn) end(e *pb.Ended, afterQueued bool) {
	c.mu.Lock()
	if !c.attached {
		if len(c.pendingEnds) < maxPendingEnds {
			c.pendingEnds = append(c.pendingEnds, e)
		}
		c.mu.Unlock()
		return
	}
	// An end applied before this session's login belongs to an earlier
	// session of the same login ID.
	if e.Offset <= c.sessionOffset {
		c.mu.Unlock()
		return
	}
	c.over = true
	logout := c.logoutPending > 0
	c.mu.Unlock()
	if e.Code == 0 {
		if !logout { // the device's own LOGOUT closes after its result
			c.close(afterQueued, 0, websocket.StatusNormalClosure, nil)
		}
		return
	}
	b, _ := json.Marshal(kickedFrame{
		Type: "kicked", Code: e.Code, Reason: e.Reason.String(),
		ByLoginID: engine.EndedByLoginID(e), ByDeviceName: e.ByDeviceName, ByExtension: e.ByExtension,
	})
	c.close(afterQueued, engine.Code(e.Code), statusEnded, b)
}

// notify has the follower read the store, unless it already sent seq.
func (c *conn) notify(seq uint64) {
	c.mu.Lock()
	if c.attached && c.lastEpoch != "" && seq <= c.lastSeq {
		c.mu.Unlock()
		return
	}
	c.reread = true
	start := c.startFollowerLocked()
	c.mu.Unlock()
	if start {
		go c.resumeFollow()
	}
}

// follow starts following the timeline: the snapshot when the device has
// no position, then the catch-up and live events (run). It is the only
// sender of events; see conn.following for when it runs.
func (c *conn) follow(pos position) {
	defer c.wg.Done()
	c.fstart = time.Now()
	c.fepoch, c.fseq = pos.epoch, pos.seq
	if !pos.ok {
		var ok bool
		if c.fepoch, c.fseq, ok = c.snapshot(false); !ok {
			return
		}
	}
	c.freadStore = true
	c.run()
}

// resumeFollow runs the follower again after it went idle.
func (c *conn) resumeFollow() {
	defer c.wg.Done()
	c.run()
}

// run sends what the timeline has after (fepoch, fseq): reads of the store
// until caught up, then the live entries queued for it (live.go), and
// returns when nothing is left to send (following is then false) or the
// connection is closing. A connected idle device has no follower
// goroutine: deliver and notify start one.
func (c *conn) run() {
	resyncs := 0
	pg := page{batch: c.batch}
	for {
		if !c.freadStore {
			live, reread, idle := c.takeLive()
			if idle {
				return
			}
			read, ok := c.sendLive(c.fepoch, &c.fseq, live)
			if !ok {
				return
			}
			if c.freadStore = read || reread; !c.freadStore {
				continue
			}
			c.g.m.storeReads.Inc()
		}
		if c.g.o.Owner != nil {
			// The user's partition moved to another process (a rebalance)
			// since this device connected: this store no longer follows it,
			// and reading it would send the device back to a stale position
			// (a false resync, then entries again). Send the device to the
			// owner, as at connect.
			if addr, local := c.g.o.Owner.Owner(c.app, c.user); !local {
				c.moved(addr)
				return
			}
		}
		epoch, seq := c.fepoch, c.fseq
		// The page's frames are built from the store's bytes during the
		// scan (one copy, into the frame) and queued after it: a push may
		// wait for the device, and the scan must not.
		pg.reset()
		next, meta, err := c.g.o.Store.TimelineEach(c.app, c.user, c.loginID, epoch, seq, timelinePage,
			func(tlEpoch string, eseq uint64, kind pb.Kind, j []byte) error {
				if tlEpoch == "" {
					return errNotOpen
				}
				if eseq <= seq {
					return nil // never again at or below what was sent
				}
				return pg.add(tlEpoch, eseq, engine.EventName(kind), j)
			})
		pg.flush()
		if errors.Is(err, errNotOpen) {
			continue // the timeline opened between reading its meta and its entries
		}
		if errors.Is(err, projections.ErrResync) || engine.CodeOf(err) == engine.CodeResync {
			if resyncs++; resyncs > 2 {
				c.terminate(engine.CodeInternal, statusEnded, errorJSON("", engine.CodeInternal, "timeline cannot be continued after a snapshot"))
				return
			}
			var ok bool
			if c.fepoch, c.fseq, ok = c.snapshot(true); !ok {
				return
			}
			continue
		}
		if err != nil {
			if c.ctx.Err() == nil {
				c.g.o.Logger.Warn("gateway: read timeline", "app", c.app, "user", c.user, "err", err)
				c.terminate(engine.CodeUnavailable, statusEnded, errorJSON("", engine.CodeUnavailable, "timeline unavailable"))
			}
			return
		}
		resyncs = 0
		if epoch == "" {
			epoch = meta.GetEpoch()
			c.fepoch = epoch
		}
		progressed := next > seq
		for _, f := range pg.frames {
			// Recorded before queueing: the device may ack it as soon as
			// it is written.
			c.setSent(epoch, f.seq)
			if !c.pushPage(f) {
				return
			}
			seq = f.seq
			c.fseq = seq
			c.fsent += f.n
		}
		if next > seq {
			seq = next // entries hidden from this device
			c.fseq = seq
			c.setSent(epoch, seq)
		}
		if progressed {
			continue // there may be more
		}
		if !c.fcaughtUp {
			c.fcaughtUp = true
			c.g.m.catchup.Observe(float64(c.fsent))
			c.g.m.catchupTime.Observe(time.Since(c.fstart).Seconds())
		}
		c.freadStore = false
	}
}

// errNotOpen: the timeline had no epoch when its meta was read, yet has
// entries (it opened in between): read again.
var errNotOpen = errors.New("gateway: timeline opened during the read")

// snapshot queues a snapshot's frames (snapshot.go); it returns the
// position it is current at.
func (c *conn) snapshot(resync bool) (string, uint64, bool) {
	s, err := c.g.o.Store.Snapshot(c.app, c.user)
	var parts [][]byte
	if err == nil {
		parts, err = snapshotParts(s, resync, c.g.o.SnapshotPartBytes)
	}
	if err != nil {
		if c.ctx.Err() == nil {
			c.terminate(engine.CodeUnavailable, statusEnded, errorJSON("", engine.CodeUnavailable, "snapshot unavailable"))
		}
		return "", 0, false
	}
	c.setSent(s.Meta.Epoch, s.Meta.LastSeq)
	for _, b := range parts {
		if !c.push(outFrame{b: b, typ: "snapshot"}) {
			return "", 0, false
		}
	}
	return s.Meta.Epoch, s.Meta.LastSeq, true
}

func (c *conn) setSent(epoch string, seq uint64) {
	c.mu.Lock()
	c.lastEpoch, c.lastSeq = epoch, seq
	c.mu.Unlock()
}

// terminate starts the connection's teardown once: it stops the writer and
// the follower, then (in its own goroutine, so callers never block) writes
// final, if any, and closes the socket with status. code is what the
// disconnect is counted as.
func (c *conn) terminate(code engine.Code, status websocket.StatusCode, final []byte) {
	// The first non-zero cause is what the disconnect counts as, even when
	// a plain close won the race (a write timeout closes the socket under
	// the reader before the writer reports it).
	if code != 0 {
		c.closeCode.CompareAndSwap(0, int32(code))
	}
	c.closeOnce.Do(func() {
		c.cancel()
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.stopWriter()
			if final != nil {
				ctx, cancel := context.WithTimeout(context.Background(), min(c.g.o.WriteTimeout, 2*time.Second))
				err := c.ws.Write(ctx, websocket.MessageText, final)
				cancel()
				if err != nil {
					c.ws.CloseNow()
					return
				}
				typ := "error"
				if code > 0 && code < 1000 {
					typ = "kicked"
				}
				c.g.m.frames.WithLabelValues("out", typ).Inc()
			}
			c.closeSocket(status, closeReason(code))
		}()
	})
}

// closeSocket closes the WebSocket with the close handshake, which reads
// the socket on this goroutine: under leanConn.mu, so that serve's
// goroutine does not look at the read buffers meanwhile.
func (c *conn) closeSocket(status websocket.StatusCode, reason string) {
	if c.lean != nil {
		c.lean.mu.Lock()
		defer c.lean.mu.Unlock()
	}
	c.ws.Close(status, reason)
}

func closeReason(code engine.Code) string {
	if code == 0 {
		return ""
	}
	return "mdsync " + strconv.Itoa(int(code))
}

func errorJSON(id string, code engine.Code, msg string) []byte {
	b, _ := json.Marshal(errorFrame{Type: "error", ID: id, Code: int32(code), Message: msg})
	return b
}

// Package client is the Go SDK of mdsync's device protocol
// (docs/protocol.md): one WebSocket per device, pipelined requests,
// deduplicated events, catch-up in batches (events frames, dispatched as
// single events), batched acks, and reconnection that resumes the
// session or, with auto-login, logs in again, never after a kick.
//
// Handlers run on one goroutine per client, in timeline order; they may
// call the client (Send, Op...). A handler that blocks stops event delivery
// (and, once the bounded queue fills, reading), so the server may close a
// connection that does not keep up (1016); the client then catches up.
package client

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// Config configures one device.
type Config struct {
	// URL of the gateway, e.g. ws://127.0.0.1:8080/v1/ws.
	URL string
	// App and User name the account; Password or Token authenticates it.
	App, User, Password, Token string
	// LoginID of this device; "" lets the server generate one. The client
	// keeps it for reconnects (LoginID()).
	LoginID string
	// Platform is the device's platform (osType), 1-100.
	Platform   int32
	DeviceName string
	Extension  string
	// AutoLogin: after a dropped connection, reconnect with backoff and
	// resume the session, or log in again with auto_login=true when it is
	// gone (the seeds' auto-login; 214 under keep-current stops it). Dial
	// with AutoLogin and a LoginID is an auto-login too. A kicked device
	// never logs itself back in.
	AutoLogin bool
	// Dialer, optional, opens the TCP connection (e.g. to bind a source
	// address).
	Dialer   func(ctx context.Context, network, addr string) (net.Conn, error)
	Handlers Handlers
	// Logger; default discards.
	Logger *slog.Logger
	// HeartbeatInterval between pings; default 20s.
	HeartbeatInterval time.Duration
	// AckInterval batches automatic acks (default 200ms). Negative: no
	// automatic acks; the application calls Ack after processing.
	AckInterval time.Duration
	// ReconnectMin and ReconnectMax bound the reconnect backoff (defaults
	// 200ms and 10s); each wait is jittered.
	ReconnectMin, ReconnectMax time.Duration
	// LoginTimeout bounds one connect-and-login; default 15s.
	LoginTimeout time.Duration
	// ReturnBusy makes Op (and Send, Receipt...) return an op the server
	// refused as busy (1019: not decided) at once, as an *Error with its
	// RetryAfter, for a caller that schedules its own retry or counts
	// refusals (a load generator). Default false: the op is sent again
	// after RetryAfter inside the call, until ctx is done.
	ReturnBusy bool
}

// Handlers receive what the server pushes. All are optional.
type Handlers struct {
	// OnEvent gets every event, after dedup by (epoch, seq), before the
	// more specific handler below.
	OnEvent    func(Event)
	OnMessage  func(Event) // message_send entries
	OnReceipt  func(Event) // delivery/read receipts, conversation read
	OnSnapshot func(Snapshot)

	OnUserDidLoginFromOtherDevice func(Kicked) // 206
	OnUserKickedByOtherDevice     func(Kicked) // 217
	OnUserRemoved                 func(Kicked) // 207
	OnPasswordChanged             func(Kicked) // 216

	// Multi-device events: the user's own operations on other devices.
	OnContactEvent          func(MultiDeviceEvent)
	OnGroupEvent            func(MultiDeviceEvent)
	OnChatThreadEvent       func(MultiDeviceEvent)
	OnConversationEvent     func(MultiDeviceEvent)
	OnRemoteMessagesRemoved func(MultiDeviceEvent)

	// OnDisconnected: a connection ended (not after Close). err is an
	// *Error for coded ends (kicks, 1016, 1017...). OnReconnected follows a
	// successful reconnect.
	OnDisconnected func(err error)
	OnReconnected  func()
}

// Client is one logged-in device. Safe for concurrent use.
type Client struct {
	cfg Config
	log *slog.Logger
	hc  *http.Client

	reqID atomic.Uint64
	q     *queue
	wg    sync.WaitGroup // supervisor, readers, writers

	mu       sync.Mutex
	cur      *conn // nil while reconnecting
	calls    map[string]*call
	loginID  string
	url      string // the owner a 1018 redirected to; "" = Config.URL
	ackEpoch string // the acknowledged position: resume starts after it
	ackSeq   uint64
	kicked   *Kicked
	logout   bool
	stopErr  error
	stopped  chan struct{}

	// busy is held while a handler runs: Close lets it finish, so its
	// event is acknowledged.
	busy sync.Mutex
	// dispatcher goroutine only
	epoch    string
	lastSeq  uint64
	snap     *Snapshot // the parts of a snapshot received so far
	snapNext int       // the part expected next
	dups     atomic.Uint64
}

type call struct {
	frame []byte
	done  chan *inFrame
}

// conn is one WebSocket connection's lifetime.
type conn struct {
	ws   *websocket.Conn
	out  chan []byte
	done chan struct{} // closed when the reader exits
	err  error         // why it ended; set before done closes
	mu   sync.Mutex
	// writer goroutine only
	sentEpoch string
	sentSeq   uint64
}

func (cn *conn) fail(err error) {
	cn.mu.Lock()
	if cn.err == nil {
		cn.err = err
	}
	cn.mu.Unlock()
}

func (cn *conn) reason() error {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.err
}

// send queues b for the writer; false when the connection is gone.
func (cn *conn) send(ctx context.Context, b []byte) bool {
	select {
	case cn.out <- b:
		return true
	case <-cn.done:
	case <-ctx.Done():
	}
	return false
}

// Dial connects and logs in. A refused login is an *Error (214, 1013,
// 1014...); no reconnect is attempted for it.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.URL == "" || cfg.App == "" || cfg.User == "" {
		return nil, &Error{Code: CodeInvalidArgument, Message: "client: URL, App and User are required"}
	}
	if cfg.Password == "" && cfg.Token == "" {
		return nil, &Error{Code: CodeInvalidArgument, Message: "client: Password or Token is required"}
	}
	if cfg.Platform < 1 || cfg.Platform > 100 {
		return nil, &Error{Code: CodeInvalidArgument, Message: fmt.Sprintf("client: platform %d is outside 1-100", cfg.Platform)}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 20 * time.Second
	}
	if cfg.AckInterval == 0 {
		cfg.AckInterval = 200 * time.Millisecond
	}
	if cfg.ReconnectMin <= 0 {
		cfg.ReconnectMin = 200 * time.Millisecond
	}
	if cfg.ReconnectMax < cfg.ReconnectMin {
		cfg.ReconnectMax = max(10*time.Second, cfg.ReconnectMin)
	}
	if cfg.LoginTimeout <= 0 {
		cfg.LoginTimeout = 15 * time.Second
	}
	c := &Client{
		cfg:     cfg,
		log:     cfg.Logger.With("app", cfg.App, "user", cfg.User),
		calls:   map[string]*call{},
		loginID: cfg.LoginID,
		stopped: make(chan struct{}),
		q:       newQueue(4096),
	}
	c.hc = http.DefaultClient
	if cfg.Dialer != nil {
		c.hc = &http.Client{Transport: &http.Transport{DialContext: cfg.Dialer}}
	}
	cn, _, err := c.connect(ctx, false, cfg.AutoLogin && cfg.LoginID != "")
	if err != nil {
		return nil, err
	}
	go c.dispatch()
	c.install(cn)
	c.wg.Add(1)
	go c.supervise(cn)
	return c, nil
}

// LoginID is this device's login ID (generated by the server if Config had
// none); reconnects keep it.
func (c *Client) LoginID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.loginID
}

// Duplicates counts events dropped because their seq was already seen.
func (c *Client) Duplicates() uint64 { return c.dups.Load() }

// connect dials and logs in (or resumes). The login answer is read here,
// before the reader starts, so no frame that follows it is lost.
func (c *Client) connect(ctx context.Context, resume, autoLogin bool) (*conn, LoginResult, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.LoginTimeout)
	defer cancel()
	cn, lr, err := c.connectTo(ctx, c.target(), resume, autoLogin)
	for attempt := 1; err != nil && CodeOf(err) != CodeBusy; attempt++ {
		// Refused for now (1009, or 1018 while the user's owner is not
		// known): log in again after the wait the gateway asked for.
		wait, again := retryWait(err, attempt)
		if !again {
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, LoginResult{}, err
		}
		cn, lr, err = c.connectTo(ctx, c.target(), resume, autoLogin)
	}
	var e *Error
	if errors.As(err, &e) && e.Code == CodeNotOwner && e.Addr != "" {
		// Another process serves this user: go there, once per connect, and
		// keep going there on reconnects until it sends us elsewhere.
		u, uerr := redirect(c.cfg.URL, e.Addr)
		if uerr != nil {
			return nil, LoginResult{}, err
		}
		c.mu.Lock()
		c.url = u
		c.mu.Unlock()
		c.log.Info("redirected to the user's owner", "addr", e.Addr)
		return c.connectTo(ctx, u, resume, autoLogin)
	}
	return cn, lr, err
}

// target is the gateway URL to dial: the owner a 1018 named, else Config.URL.
func (c *Client) target() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.url != "" {
		return c.url
	}
	return c.cfg.URL
}

// redirect is base with its host replaced by addr (a 1018's owner).
func redirect(base, addr string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	u.Host = addr
	return u.String(), nil
}

func (c *Client) connectTo(ctx context.Context, target string, resume, autoLogin bool) (*conn, LoginResult, error) {
	ws, _, err := websocket.Dial(ctx, target, &websocket.DialOptions{HTTPClient: c.hc, Subprotocols: []string{Subprotocol}})
	if err != nil {
		return nil, LoginResult{}, fmt.Errorf("client: dial %s: %w", target, err)
	}
	ws.SetReadLimit(maxReadBytes)
	c.mu.Lock()
	lf := loginFrame{Type: "login", ID: "login", App: c.cfg.App, User: c.cfg.User, Password: c.cfg.Password, Token: c.cfg.Token,
		LoginID: c.loginID, Platform: c.cfg.Platform, DeviceName: c.cfg.DeviceName, Extension: c.cfg.Extension, AutoLogin: autoLogin, Batch: true}
	if resume {
		lf = loginFrame{Type: "resume", ID: "resume", App: c.cfg.App, User: c.cfg.User, Password: c.cfg.Password, Token: c.cfg.Token,
			LoginID: c.loginID, Epoch: c.ackEpoch, Seq: c.ackSeq, Batch: true}
	}
	c.mu.Unlock()
	b, _ := json.Marshal(lf)
	if err := ws.Write(ctx, websocket.MessageText, b); err != nil {
		ws.CloseNow()
		return nil, LoginResult{}, fmt.Errorf("client: send %s: %w", lf.Type, err)
	}
	for {
		_, data, err := ws.Read(ctx)
		if err != nil {
			ws.CloseNow()
			return nil, LoginResult{}, fmt.Errorf("client: %s: %w", lf.Type, err)
		}
		f, err := decodeFrame(data)
		if err != nil {
			ws.CloseNow()
			return nil, LoginResult{}, err
		}
		switch f.Type {
		case "login_result", "error":
		default:
			c.log.Warn("frame before login_result ignored", "type", f.Type)
			continue
		}
		if err := f.err(); err != nil {
			ws.CloseNow()
			return nil, LoginResult{}, err
		}
		if f.Type == "error" {
			ws.CloseNow()
			return nil, LoginResult{}, &Error{Code: codeInternal, Message: "client: error frame with code 0"}
		}
		lr := LoginResult{LoginID: f.LoginID, Reconnect: f.Reconnect, Resumed: f.Resumed, PolicyVersion: f.PolicyVersion}
		if lr.LoginID != "" {
			c.mu.Lock()
			c.loginID = lr.LoginID
			c.mu.Unlock()
		}
		return &conn{ws: ws, out: make(chan []byte, 256), done: make(chan struct{})}, lr, nil
	}
}

// install makes cn the current connection, starts its reader and writer,
// and resends every request still waiting for an answer (operations are
// idempotent by client_op_id, reads are harmless).
func (c *Client) install(cn *conn) {
	c.mu.Lock()
	c.cur = cn
	// The position is known to the server (resume) or behind it (a login
	// catches up from the stored ack): only newer acks are worth sending.
	cn.sentEpoch, cn.sentSeq = c.ackEpoch, c.ackSeq
	pending := make([][]byte, 0, len(c.calls))
	for _, cl := range c.calls {
		pending = append(pending, cl.frame)
	}
	c.mu.Unlock()
	c.wg.Add(2)
	go c.read(cn)
	go c.write(cn)
	for _, b := range pending {
		if !cn.send(context.Background(), b) {
			return
		}
	}
}

func (c *Client) read(cn *conn) {
	defer c.wg.Done()
	defer close(cn.done)
	for {
		_, b, err := cn.ws.Read(context.Background())
		if err != nil {
			cn.fail(err)
			cn.ws.CloseNow()
			return
		}
		f, err := decodeFrame(b)
		if err != nil {
			c.log.Warn("bad frame", "err", err)
			continue
		}
		switch f.Type {
		case "event", "snapshot":
			c.q.push(item{frame: f}, c.stopped)
		case "events":
			// A batch is its event frames, in order: each is queued as if it
			// had come alone (the handlers, the dedup and acks see no
			// difference).
			for _, ev := range f.Events {
				if ev == nil || ev.Type != "event" {
					c.log.Warn("not an event frame in an events frame")
					continue
				}
				c.q.push(item{frame: ev}, c.stopped)
			}
		case "kicked":
			k := &Kicked{Code: f.Code, Reason: f.Reason, ByLoginID: f.ByLoginID, ByDeviceName: f.ByDeviceName, ByExtension: f.ByExtension}
			c.mu.Lock()
			c.kicked = k
			c.mu.Unlock()
			cn.fail(&Error{Code: f.Code, Message: f.Reason})
			c.q.pushControl(item{kicked: k})
		case "error":
			if f.ID != "" && c.deliver(f) {
				continue
			}
			if connectionError(f.Code) {
				// The server closes next; this is why.
				cn.fail(&Error{Code: f.Code, Message: f.Message})
			} else {
				c.log.Warn("server refused a frame", "code", f.Code, "message", f.Message)
			}
		default:
			if f.ID == "" || !c.deliver(f) {
				if f.Type != "pong" {
					c.log.Debug("unmatched frame", "type", f.Type, "id", f.ID)
				}
			}
		}
	}
}

// connectionError reports whether an error frame without an id ends the
// connection (docs/protocol.md, errors); others (1001 for a stale ack)
// leave it open.
func connectionError(code int32) bool {
	switch code {
	case CodeTooLarge, 1009, CodeUnauthenticated, 1016, 1017, 1018:
		return true
	}
	return false
}

func (c *Client) deliver(f *inFrame) bool {
	c.mu.Lock()
	cl := c.calls[f.ID]
	c.mu.Unlock()
	if cl == nil {
		return false
	}
	select {
	case cl.done <- f:
	default:
	}
	return true
}

func (c *Client) write(cn *conn) {
	defer c.wg.Done()
	hb := time.NewTicker(c.cfg.HeartbeatInterval)
	defer hb.Stop()
	flush := c.cfg.AckInterval
	if flush < 0 {
		flush = 200 * time.Millisecond
	}
	ackT := time.NewTicker(flush)
	defer ackT.Stop()
	ping, _ := json.Marshal(idFrame{Type: "ping"})
	for {
		var b []byte
		select {
		case b = <-cn.out:
		case <-hb.C:
			b = ping
		case <-ackT.C:
			if b = c.pendingAck(cn); b == nil {
				continue
			}
		case <-cn.done:
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := cn.ws.Write(ctx, websocket.MessageText, b)
		cancel()
		if err != nil {
			cn.fail(err)
			cn.ws.CloseNow()
			return
		}
	}
}

// pendingAck returns an ack frame when the acknowledged position moved
// since the last one sent on cn.
func (c *Client) pendingAck(cn *conn) []byte {
	c.mu.Lock()
	e, s := c.ackEpoch, c.ackSeq
	c.mu.Unlock()
	if e == "" || (e == cn.sentEpoch && s == cn.sentSeq) {
		return nil
	}
	cn.sentEpoch, cn.sentSeq = e, s
	b, _ := json.Marshal(ackFrame{Type: "ack", Epoch: e, Seq: s})
	return b
}

// Ack records that every event up to seq of timeline epoch is processed.
// Acks are sent in batches; the next connection continues after the last.
// With automatic acks (the default) the client calls it after handlers.
func (c *Client) Ack(epoch string, seq uint64) {
	c.mu.Lock()
	if epoch != c.ackEpoch || seq > c.ackSeq {
		c.ackEpoch, c.ackSeq = epoch, seq
	}
	c.mu.Unlock()
}

// supervise follows the connections: after a drop it reconnects (with
// AutoLogin) or stops the client.
func (c *Client) supervise(cn *conn) {
	defer c.wg.Done()
	for {
		select {
		case <-cn.done:
		case <-c.stopped:
			cn.ws.CloseNow()
			<-cn.done
			return
		}
		reason := cn.reason()
		c.mu.Lock()
		if c.cur == cn {
			c.cur = nil
		}
		stopped, kicked, logout := c.stopErr != nil, c.kicked, c.logout
		c.mu.Unlock()
		if stopped {
			return
		}
		c.log.Info("disconnected", "err", reason)
		c.q.pushControl(item{disconnected: true, err: reason})
		switch {
		case kicked != nil:
			c.stop(&Error{Code: kicked.Code, Message: kicked.Reason})
			return
		case logout:
			c.stop(ErrLoggedOut)
			return
		case !c.cfg.AutoLogin:
			if reason == nil {
				reason = errors.New("client: connection closed")
			}
			c.stop(reason)
			return
		}
		if cn = c.reconnect(); cn == nil {
			return
		}
		c.q.pushControl(item{reconnected: true})
	}
}

// reconnect retries with jittered exponential backoff until a connection
// is up (it is installed and returned) or the client stops (nil).
func (c *Client) reconnect() *conn {
	wait := c.cfg.ReconnectMin
	for attempt := 0; ; attempt++ {
		// Jitter in [wait/2, wait): reconnecting devices spread out.
		d := wait/2 + rand.N(wait/2+1)
		select {
		case <-time.After(d):
		case <-c.stopped:
			return nil
		}
		wait = min(wait*2, c.cfg.ReconnectMax)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-c.stopped:
			case <-ctx.Done():
			}
			cancel()
		}()
		cn, err := c.reconnectOnce(ctx)
		cancel()
		if err == nil {
			c.install(cn)
			c.log.Info("reconnected", "attempt", attempt+1)
			return cn
		}
		c.log.Info("reconnect failed", "attempt", attempt+1, "err", err)
		var e *Error
		if !errors.As(err, &e) {
			continue // network: try again
		}
		switch {
		case kickCode(e.Code):
			// The session ended while the device was away: it learns why
			// now, and does not log itself back in.
			k := &Kicked{Code: e.Code, Reason: e.Message}
			c.mu.Lock()
			c.kicked = k
			c.mu.Unlock()
			c.q.pushControl(item{kicked: k})
			c.stop(e)
			return nil
		case e.Code == CodeRateLimited || e.Code >= 1009 && e.Code != CodeUnauthenticated:
			continue // unavailable, rate limited, not the owner...: later
		default:
			// 214, 1013 and other refusals will not change by retrying.
			c.q.pushControl(item{disconnected: true, err: e})
			c.stop(e)
			return nil
		}
	}
}

// reconnectOnce resumes the session, or logs in again (auto-login) when
// the server no longer knows it.
func (c *Client) reconnectOnce(ctx context.Context) (*conn, error) {
	cn, _, err := c.connect(ctx, true, false)
	if CodeOf(err) == CodeNotFound {
		cn, _, err = c.connect(ctx, false, true)
	}
	return cn, err
}

// stop ends the client once, with err as the reason calls fail with.
func (c *Client) stop(err error) {
	c.mu.Lock()
	if c.stopErr != nil {
		c.mu.Unlock()
		return
	}
	c.stopErr = err
	close(c.stopped)
	cn := c.cur
	c.mu.Unlock()
	if cn != nil {
		cn.ws.CloseNow()
	}
	c.q.pushControl(item{end: true})
}

func (c *Client) stopReason() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopErr
}

// Close waits for a running handler (up to a second: from within a
// handler, prefer go c.Close()), sends the last acknowledgement, closes the
// connection and stops reconnecting. Once it returns no handler starts.
func (c *Client) Close() error {
	c.mu.Lock()
	cn := c.cur
	already := c.stopErr != nil
	c.mu.Unlock()
	if already {
		c.wg.Wait()
		return nil
	}
	// Let a running handler return (bounded: Close may be called from
	// within one), so the final ack covers the event it was given.
	idle := make(chan struct{})
	go func() {
		c.busy.Lock()
		c.busy.Unlock()
		close(idle)
	}()
	select {
	case <-idle:
	case <-time.After(time.Second):
	}
	if cn != nil {
		if b := c.finalAck(cn); b != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			cn.ws.Write(ctx, websocket.MessageText, b)
			cancel()
		}
		// A normal closure lets the gateway read the ack first; a peer that
		// does not answer the close handshake gets a second.
		closed := make(chan struct{})
		go func() {
			cn.ws.Close(websocket.StatusNormalClosure, "")
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(time.Second):
			cn.ws.CloseNow()
		}
	}
	c.stop(ErrClosed)
	c.wg.Wait()
	return nil
}

// finalAck is the current acknowledged position, unconditionally: the
// writer's record of what it sent may race with Close.
func (c *Client) finalAck(cn *conn) []byte {
	c.mu.Lock()
	e, s := c.ackEpoch, c.ackSeq
	c.mu.Unlock()
	if e == "" {
		return nil
	}
	b, _ := json.Marshal(ackFrame{Type: "ack", Epoch: e, Seq: s})
	return b
}

// roundTrip sends one request and waits for its answer, across reconnects
// when AutoLogin is set.
func (c *Client) roundTrip(ctx context.Context, frame func(id string) any) (*inFrame, error) {
	id := strconv.FormatUint(c.reqID.Add(1), 10)
	b, err := json.Marshal(frame(id))
	if err != nil {
		return nil, &Error{Code: CodeInvalidArgument, Message: err.Error()}
	}
	if len(b) > MaxFrameBytes {
		return nil, &Error{Code: CodeTooLarge, Message: fmt.Sprintf("client: request of %d bytes exceeds %d", len(b), MaxFrameBytes)}
	}
	cl := &call{frame: b, done: make(chan *inFrame, 1)}
	c.mu.Lock()
	if c.stopErr != nil {
		err := c.stopErr
		c.mu.Unlock()
		return nil, err
	}
	c.calls[id] = cl
	cn := c.cur
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.calls, id)
		c.mu.Unlock()
	}()
	if cn != nil {
		cn.send(ctx, b)
	}
	select {
	case f := <-cl.done:
		return f, f.err()
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.stopped:
		return nil, c.stopReason()
	}
}

func newID() string {
	var b [12]byte
	crand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// maxBusyWait caps the wait before resending an op refused with a
// retry_after_ms.
const maxBusyWait = 5 * time.Second

// maxRetryAttempts bounds the sends of one op, or the logins of one
// connect, refused with 1009 or 1018 and a retry_after_ms (1019 is sent
// again until ctx is done: the op was not decided and the gateway asks
// for the wait).
const maxRetryAttempts = 5

// retryWait tells whether err is a refusal a retry may cure, and after
// how long: 1019 always, 1009 and 1018 (without an owner to go to) when
// the server said so with a retry_after_ms. attempt counts the sends so
// far.
func retryWait(err error, attempt int) (time.Duration, bool) {
	var e *Error
	if !errors.As(err, &e) {
		return 0, false
	}
	switch {
	case e.Code == CodeBusy:
	case (e.Code == 1009 || e.Code == CodeNotOwner && e.Addr == "") && e.RetryAfter > 0 && attempt < maxRetryAttempts:
	default:
		return 0, false
	}
	return min(max(e.RetryAfter, time.Millisecond), maxBusyWait), true
}

// Op performs any operation as this device (the gateway sets app and
// actor). client_op_id is generated when empty; a retry with the same one
// returns the first decision. A refusal is an *Error. An op the gateway
// refuses as busy (1019, not decided) is sent again after the wait the
// gateway asks for, until ctx is done (unless Config.ReturnBusy); one refused with 1009 or 1018 and a
// retry_after_ms, at most maxRetryAttempts times in all.
func (c *Client) Op(ctx context.Context, ev *pb.Event) (Result, error) {
	ev = proto.Clone(ev).(*pb.Event)
	if ev.ClientOpId == "" {
		ev.ClientOpId = newID()
	}
	raw, err := pjson.Marshal(ev)
	if err != nil {
		return Result{}, &Error{Code: CodeInvalidArgument, Message: err.Error()}
	}
	if ev.Kind == pb.Kind_KIND_LOGOUT {
		c.mu.Lock()
		c.logout = true
		c.mu.Unlock()
	}
	var f *inFrame
	for attempt := 1; ; attempt++ {
		f, err = c.roundTrip(ctx, func(id string) any { return opFrame{Type: "op", ID: id, Event: raw} })
		wait, again := retryWait(err, attempt)
		if !again || c.cfg.ReturnBusy && CodeOf(err) == CodeBusy {
			break
		}
		// Busy (not decided), or unavailable for now: send it again (same
		// client_op_id, so an op that was appended after all is answered
		// with its decision, not applied twice) after the time asked for.
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return Result{ClientOpID: ev.ClientOpId}, err
		}
	}
	if err != nil {
		return Result{ClientOpID: ev.ClientOpId}, err
	}
	return Result{ClientOpID: ev.ClientOpId, EventID: f.EventID, MessageID: f.MessageID, Partition: f.Partition, Offset: f.Offset}, nil
}

// Send sends a message. ClientMsgID is generated when empty and is also
// the operation's client_op_id, so a retry creates nothing new.
func (c *Client) Send(ctx context.Context, m Message) (Result, error) {
	if m.ClientMsgID == "" {
		m.ClientMsgID = newID()
	}
	return c.Op(ctx, &pb.Event{Kind: pb.Kind_KIND_MESSAGE_SEND, ClientOpId: m.ClientMsgID,
		Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: m.ChatType, To: m.To, GroupId: m.GroupID,
			ClientMsgId: m.ClientMsgID, ContentType: m.ContentType, Body: m.Body}}})
}

// Receipt sends a delivery or read receipt (kind KIND_DELIVERY_RECEIPT or
// KIND_READ_RECEIPT).
func (c *Client) Receipt(ctx context.Context, kind pb.Kind, ct pb.ChatType, conversationID, messageID string) (Result, error) {
	return c.Op(ctx, &pb.Event{Kind: kind, Payload: &pb.Event_Receipt{Receipt: &pb.Receipt{
		ChatType: ct, ConversationId: conversationID, MessageId: messageID}}})
}

// Logout ends this device's session; the client then stops.
func (c *Client) Logout(ctx context.Context) error {
	_, err := c.Op(ctx, &pb.Event{Kind: pb.Kind_KIND_LOGOUT, Payload: &pb.Event_Empty{Empty: &pb.Empty{}}})
	if errors.Is(err, ErrLoggedOut) {
		return nil
	}
	return err
}

// SelfIdsOnOtherPlatform lists the login IDs of the user's other logged-in
// devices; a message to one goes with CHAT_TYPE_SELF_DEVICE.
func (c *Client) SelfIdsOnOtherPlatform(ctx context.Context) ([]string, error) {
	f, err := c.roundTrip(ctx, func(id string) any { return idFrame{Type: "self_ids", ID: id} })
	if err != nil {
		return nil, err
	}
	return f.LoginIDs, nil
}

// History pages a conversation's messages newest first, before seq
// `before` (0 = newest), at most limit (1-100).
func (c *Client) History(ctx context.Context, ct pb.ChatType, conv string, before uint64, limit int) ([]*pb.TimelineEntry, error) {
	if limit < 1 || limit > 100 {
		return nil, &Error{Code: CodeInvalidArgument, Message: fmt.Sprintf("client: history limit %d is outside 1-100", limit)}
	}
	f, err := c.roundTrip(ctx, func(id string) any {
		return historyFrame{Type: "history", ID: id, ChatType: ct.String(), ConversationID: conv, Before: before, Limit: limit}
	})
	if err != nil {
		return nil, err
	}
	return f.entries()
}

// Ping round-trips a ping; it measures the connection.
func (c *Client) Ping(ctx context.Context) error {
	_, err := c.roundTrip(ctx, func(id string) any { return idFrame{Type: "ping", ID: id} })
	return err
}

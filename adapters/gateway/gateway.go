// Package gateway is mdsync's device gateway: one WebSocket per device,
// speaking docs/protocol.md. A device logs in (a LOGIN decision through the
// engine) or resumes an active session, then receives a snapshot or the
// catch-up from its last position and live events, and sends operations.
//
// Every connection follows its user's timeline itself, from the last
// sequence it sent: a delivered entry that continues it is sent as the
// effect carries it (encoded once for all the user's devices), anything
// else is read from the store, so a slow device never slows the projector
// or another device, and events cannot be skipped or repeated (live.go).
package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
	"github.com/prometheus/client_golang/prometheus"
)

// Subprotocol is the WebSocket subprotocol of protocol v1.
const Subprotocol = "mdsync.v1"

// Authenticator checks a device's credentials. Authenticate returns nil, or
// an *engine.Error with code 1013 (bad credentials) or 1014 (too many
// failed attempts; retry later); any other error is answered as 1013. It is
// called once per login or resume, concurrently, and may take a while (a
// password hash); remote is the peer's address, for rate limits.
type Authenticator interface {
	Authenticate(app, user, password, token, remote string) error
}

// Submitter decides operations (*engine.Engine and *forward.Submitter
// implement it). Begin validates ops and appends every one that needs
// appending in one log append, in slice order, and returns once they are
// durable: one *engine.Pending per op, in the same order. Ops of a later
// Begin call, made after this one returned, are ordered after these on
// every partition they share. Pending.Wait returns an op's decision once
// applied (Code 0 when accepted, or a refusal code), or the error that
// refused it (an *engine.Error for an invalid op). Safe for concurrent use.
//
// The gateway calls Begin from one goroutine per connection at a time, so
// a connection's ops are decided in the order they were received.
type Submitter interface {
	Begin(ctx context.Context, ops []*pb.Event) []*engine.Pending
}

// SessionReader is what the gateway reads of a user's sessions: to attach
// a device, to answer a refused resume, and for the session sweep. Every
// method is safe for concurrent use and reads committed state only; after
// the store closes they return an error.
type SessionReader interface {
	// Devices returns the user's active sessions in login order.
	Devices(app, user string) ([]*pb.Session, error)
	// SelfIDs returns the login IDs of the user's devices other than loginID.
	SelfIDs(app, user, loginID string) ([]string, error)
	// Audit returns the user's ended sessions in log order (to answer a
	// refused resume with the code that ended the session).
	Audit(app, user string) ([]*pb.Ended, error)
}

// TimelineReader is what a connection's follower reads: the user's
// timeline from a position, a snapshot when the position cannot be
// continued, history pages, and the device's acknowledged position. Every
// method is safe for concurrent use and reads committed state only; after
// the store closes they return an error. Returned messages are the
// caller's.
type TimelineReader interface {
	// TimelineEach calls fn in order for up to limit entries visible to
	// loginID after (epoch, after), with the timeline's epoch, the
	// entry's sequence, kind and stored wire JSON (engine.MarshalPart of
	// the entry, not decoded on the way; valid only during the call, and
	// fn must not block), and returns the sequence to continue from (the
	// last entry examined, visible or not) and the meta;
	// projections.ErrResync (code 1015) when the position cannot be
	// continued; fn's error stops the scan and is returned.
	TimelineEach(app, user, loginID, epoch string, after uint64, limit int,
		fn func(epoch string, seq uint64, kind pb.Kind, json []byte) error) (uint64, *pb.TimelineMeta, error)
	// Snapshot returns the user's state and the position it is current at.
	Snapshot(app, user string) (*projections.Snapshot, error)
	// History pages a conversation's messages newest first, below before.
	History(app, user string, ct pb.ChatType, conv string, before uint64, limit int) ([]*pb.TimelineEntry, error)
	// Cursor returns the device's acknowledged position; ok is false when
	// it never acknowledged.
	Cursor(app, user, loginID string) (epoch string, seq uint64, ok bool, err error)
}

// CursorWriter is the one write the gateway makes outside the log: a
// device's acknowledged position (soft state: a lost write only makes the
// device receive again what it already has, and it drops duplicates by
// seq). SetCursor never moves a cursor backwards within an epoch; it is
// written without fsync; safe for concurrent use; an error after the
// store closes.
type CursorWriter interface {
	SetCursor(app, user, loginID, epoch string, seq uint64) error
}

// Store is everything the gateway needs of the projections: the two read
// ports and the cursor write (*projections.Store implements it).
type Store interface {
	SessionReader
	TimelineReader
	CursorWriter
}

var _ Store = (*projections.Store)(nil)

// Owner tells where a user's partition is served when several processes
// share a log (*node.Node implements it): local true here, else the
// owner's address ("" while nobody is known). A device of a user served
// elsewhere is refused with 1018 and the address, before any decision.
type Owner interface {
	Owner(app, user string) (addr string, local bool)
}

// Options configure a Gateway. Auth, Engine, Store and Registerer are
// required; every other field has the default stated.
type Options struct {
	Auth       Authenticator
	Engine     Submitter
	Store      Store
	Registerer prometheus.Registerer
	// Owner; default nil: this process serves every partition.
	Owner Owner
	// Logger; default slog.Default().
	Logger *slog.Logger
	// MaxFrameBytes bounds one client message. Default 64 KiB.
	MaxFrameBytes int
	// SendQueue bounds the frames queued per connection (queued or being
	// written); the queue grows as frames come and holds nothing while
	// empty. Default 1024.
	SendQueue int
	// SnapshotPartBytes bounds one snapshot frame: a larger snapshot is
	// sent in parts (docs/protocol.md). Default 256 KiB; at least 4 KiB.
	SnapshotPartBytes int
	// HeartbeatTimeout closes a connection that sent nothing for this long
	// (error 1017). Default 60s.
	HeartbeatTimeout time.Duration
	// LoginTimeout bounds the wait for the first frame. Default 10s.
	LoginTimeout time.Duration
	// WriteTimeout bounds one socket write (the frames queued together, up
	// to 32 KiB of them); a device whose socket accepts nothing for this
	// long is a slow consumer (error 1016). Default 10s.
	WriteTimeout time.Duration
	// SubmitTimeout bounds one operation (login included). Default 10s.
	SubmitTimeout time.Duration
	// CursorInterval bounds how often a connection writes its device's
	// acknowledged position (Store.SetCursor): an ack within this of the
	// connection's last write is written when it has passed (the latest
	// one then), and at the end of the connection (cursor.go). Default 1s.
	CursorInterval time.Duration
	// MaxConnections refuses upgrades beyond it (HTTP 503). Default 100,000.
	MaxConnections int
	// MaxOpsInFlight bounds one connection's operations admitted and not
	// yet answered (queued, being appended, or waiting for their
	// decision). An op beyond it is refused at once with 1019 (CodeBusy)
	// and retry_after_ms; nothing admitted is dropped or reordered.
	// Default 256.
	MaxOpsInFlight int
	// MaxGatewayOpsInFlight bounds the operations admitted and not yet
	// answered over all of this gateway's connections (the node-wide
	// bound); beyond it ops are refused with 1019 like above. Default
	// 8,192.
	MaxGatewayOpsInFlight int
	// BusyRetryAfter is the retry_after_ms a 1019 refusal carries.
	// Default 100ms.
	BusyRetryAfter time.Duration
	// UnavailableRetryAfter is the retry_after_ms of a refusal a retry may
	// cure that is not 1019: 1009 (the log or the store did not answer in
	// time) and 1018 without an owner's address (the user's partition is
	// moving or being restored). Default 1s, like the REST API's
	// Retry-After.
	UnavailableRetryAfter time.Duration
	// SessionCheckInterval is the period of the check that closes every
	// connection whose session the log has ended, in case the effect that
	// should have closed it was lost: one ticker per gateway, jittered by
	// ±25%, reads the store's device list of each connected user. The same
	// sweep wakes each live connection's follower, so an event whose
	// deliver hint was lost still arrives within one interval. Default
	// 5s; negative disables the check (tests only).
	SessionCheckInterval time.Duration
	// OriginPatterns are the browser origins allowed besides the request's
	// host (websocket.AcceptOptions.OriginPatterns). Default none.
	OriginPatterns []string
	// Now is the clock of last-seen times and idle checks. Default time.Now.
	Now func() time.Time
	// Process names this process in the presence ops the gateway appends
	// (its advertised host:port): a DEVICE_CONNECTED when a device attaches,
	// a DEVICE_DISCONNECTED when that connection ends — never per heartbeat
	// (docs/design-notes.md, "Device presence"). Default "": nothing is
	// appended and DeviceInfo knows only what this gateway saw.
	Process string
	// Incarnation identifies this run of the process in presence ops: an
	// id (engine.ValidID) of at most 32 bytes. Default: random.
	Incarnation string
	// ClientAddr is a request's client address: the device's remote
	// address and the rate-limit key of its logins (adapters/clientaddr
	// picks it behind trusted proxies). Default: r.RemoteAddr.
	ClientAddr func(r *http.Request) string
}

func (o *Options) ensureDefaults() {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxFrameBytes == 0 {
		o.MaxFrameBytes = 64 << 10
	}
	if o.SendQueue == 0 {
		o.SendQueue = 1024
	}
	if o.SnapshotPartBytes == 0 {
		o.SnapshotPartBytes = 256 << 10
	}
	if o.HeartbeatTimeout == 0 {
		o.HeartbeatTimeout = 60 * time.Second
	}
	if o.LoginTimeout == 0 {
		o.LoginTimeout = 10 * time.Second
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.SubmitTimeout == 0 {
		o.SubmitTimeout = 10 * time.Second
	}
	if o.CursorInterval == 0 {
		o.CursorInterval = time.Second
	}
	if o.MaxConnections == 0 {
		o.MaxConnections = 100_000
	}
	if o.MaxOpsInFlight == 0 {
		o.MaxOpsInFlight = 256
	}
	if o.MaxGatewayOpsInFlight == 0 {
		o.MaxGatewayOpsInFlight = 8192
	}
	if o.BusyRetryAfter == 0 {
		o.BusyRetryAfter = 100 * time.Millisecond
	}
	if o.UnavailableRetryAfter == 0 {
		o.UnavailableRetryAfter = time.Second
	}
	if o.SessionCheckInterval == 0 {
		o.SessionCheckInterval = 5 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Incarnation == "" {
		o.Incarnation = randomID()
	}
	if o.ClientAddr == nil {
		o.ClientAddr = func(r *http.Request) string { return r.RemoteAddr }
	}
}

func (o *Options) validate() error {
	switch {
	case o.Auth == nil:
		return errors.New("gateway: Options.Auth is required")
	case o.Engine == nil:
		return errors.New("gateway: Options.Engine is required")
	case o.Store == nil:
		return errors.New("gateway: Options.Store is required")
	case o.Registerer == nil:
		return errors.New("gateway: Options.Registerer is required")
	case o.MaxFrameBytes < 1024 || o.MaxFrameBytes > 16<<20:
		return errors.New("gateway: Options.MaxFrameBytes must be in [1 KiB, 16 MiB]")
	case o.SnapshotPartBytes < 4<<10 || o.SnapshotPartBytes > 16<<20:
		return errors.New("gateway: Options.SnapshotPartBytes must be in [4 KiB, 16 MiB]")
	case o.SendQueue < 1 || o.SendQueue > 1<<20:
		return errors.New("gateway: Options.SendQueue must be in [1, 1Mi]")
	case o.HeartbeatTimeout < 0 || o.LoginTimeout < 0 || o.WriteTimeout < 0 || o.SubmitTimeout < 0:
		return errors.New("gateway: timeouts must be positive")
	case o.MaxConnections < 1 || o.MaxOpsInFlight < 1 || o.MaxGatewayOpsInFlight < 1:
		return errors.New("gateway: MaxConnections, MaxOpsInFlight and MaxGatewayOpsInFlight must be >= 1")
	case o.BusyRetryAfter < time.Millisecond || o.UnavailableRetryAfter < time.Millisecond:
		return errors.New("gateway: Options.BusyRetryAfter and UnavailableRetryAfter must be >= 1ms")
	case len(o.Process) > engine.MaxProcessBytes || !engine.ValidID(o.Incarnation) || len(o.Incarnation) > 32:
		return errors.New("gateway: Options.Process must be at most 256 bytes and Incarnation a valid id of at most 32 bytes")
	}
	return nil
}

type userKey struct{ app, user string }

type deviceKey struct{ app, user, loginID string }

// presence is what the gateway remembers of a device that disconnected.
type presence struct {
	lastSeen time.Time
	remote   string
}

// Gateway serves device connections. It is safe for concurrent use.
type Gateway struct {
	o Options
	m *metrics

	mu       sync.RWMutex
	users    map[userKey]map[*conn]struct{} // registered connections (attached or logging in)
	presence map[deviceKey]presence         // devices seen here that are not connected now
	all      map[*conn]struct{}             // every open connection
	n        int                            // open connections, counted before the upgrade
	closing  bool

	inflight atomic.Int64  // ops admitted and not yet answered, all connections
	connSeq  atomic.Uint64 // numbers connections within the incarnation (presence ops)

	wg        sync.WaitGroup // one per ServeHTTP call
	stop      chan struct{}  // closed by Shutdown: stops the session check
	checkDone chan struct{}  // closed when the session check returned
}

// New returns a Gateway; it registers its metrics on o.Registerer.
func New(o Options) (*Gateway, error) {
	o.ensureDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	g := &Gateway{o: o, m: m, users: map[userKey]map[*conn]struct{}{}, presence: map[deviceKey]presence{}, all: map[*conn]struct{}{},
		stop: make(chan struct{}), checkDone: make(chan struct{})}
	if o.SessionCheckInterval > 0 {
		go g.checkSessions()
	} else {
		close(g.checkDone)
	}
	return g, nil
}

// ServeHTTP upgrades a request to a device connection and serves it until
// it closes. Mount it at /v1/ws.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	if g.closing {
		g.mu.Unlock()
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	if g.n >= g.o.MaxConnections {
		g.mu.Unlock()
		g.m.disconnects.WithLabelValues("503").Inc()
		http.Error(w, "too many connections", http.StatusServiceUnavailable)
		return
	}
	g.n++
	g.wg.Add(1)
	g.mu.Unlock()
	done := func() {
		g.mu.Lock()
		g.n--
		g.mu.Unlock()
		g.wg.Done()
	}
	// leanWriter: the connection keeps no buffer while idle (leanconn.go).
	lw := &leanWriter{ResponseWriter: w}
	ws, err := websocket.Accept(lw, r, &websocket.AcceptOptions{
		Subprotocols: []string{Subprotocol}, OriginPatterns: g.o.OriginPatterns,
	})
	if err != nil {
		done()
		return // Accept has answered the request
	}
	if ws.Subprotocol() != Subprotocol {
		ws.Close(websocket.StatusPolicyViolation, "subprotocol "+Subprotocol+" required")
		done()
		return
	}
	c := newConn(g, ws, lw.conn, g.o.ClientAddr(r))
	g.mu.Lock()
	if g.closing {
		g.mu.Unlock()
		ws.Close(websocket.StatusGoingAway, "shutting down")
		done()
		return
	}
	g.all[c] = struct{}{}
	g.mu.Unlock()
	// The reader gets a goroutine of its own and ServeHTTP returns, so
	// that what net/http keeps for a request (the request and its headers
	// and context, the response, a stack grown by the handler chain) is
	// not kept for the connection's life. The hijacked socket is ours.
	go func() {
		defer done()
		c.serve()
		g.mu.Lock()
		delete(g.all, c)
		g.mu.Unlock()
	}()
}

// Deliver is told that entry was appended to user's timeline (committed).
// It hands the entry to the user's connections here and never blocks: a
// connection that has sent everything before it sends it as it is, the
// frame encoded once for all of them; any other reads the timeline from
// the last sequence it sent (live.go).
func (g *Gateway) Deliver(app, user string, entry *pb.TimelineEntry) {
	if entry == nil {
		return
	}
	ev := &liveEvent{entry: entry}
	g.mu.RLock()
	defer g.mu.RUnlock()
	for c := range g.users[userKey{app, user}] {
		c.deliver(ev)
	}
}

// End is told that a session ended (a projections.Applied decision's
// Ended, with the decision's app): the connection of that login ID gets a
// kicked frame (code != 0) and is closed; a logout (code 0) just closes.
// It never blocks.
func (g *Gateway) End(app string, e *pb.Ended) {
	if e.GetSession() == nil {
		return
	}
	id := e.Session.LoginId
	g.mu.Lock()
	var hit []*conn
	for c := range g.users[userKey{app, e.User}] {
		if c.loginID == id {
			hit = append(hit, c)
		}
	}
	// The session is over: forget what was seen of the device.
	delete(g.presence, deviceKey{app, e.User, id})
	g.mu.Unlock()
	for _, c := range hit {
		c.ended(e)
	}
}

// Connected reports whether any device of the user is attached here.
func (g *Gateway) Connected(app, user string) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	for c := range g.users[userKey{app, user}] {
		if c.isAttached() {
			return true
		}
	}
	return false
}

// DeviceInfo returns when the device was last heard from and its remote
// address, and whether it is connected here now. Disconnected devices are
// remembered in memory until their session ends; after a restart nothing
// is known (zero time, "") until the device connects again.
func (g *Gateway) DeviceInfo(app, user, loginID string) (lastSeen time.Time, remoteAddr string, connected bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	for c := range g.users[userKey{app, user}] {
		if c.loginID == loginID && c.isAttached() {
			return c.seen(), c.remote, true
		}
	}
	p := g.presence[deviceKey{app, user, loginID}]
	return p.lastSeen, p.remote, false
}

// Shutdown closes every connection with status 1001 (going away), refuses
// new ones, stops the session check, and waits until every connection's
// goroutines have returned or ctx is done.
func (g *Gateway) Shutdown(ctx context.Context) error {
	g.mu.Lock()
	if !g.closing {
		close(g.stop)
	}
	g.closing = true
	all := make([]*conn, 0, len(g.all))
	for c := range g.all {
		all = append(all, c)
	}
	g.mu.Unlock()
	for _, c := range all {
		c.terminate(0, websocket.StatusGoingAway, nil)
	}
	done := make(chan struct{})
	go func() {
		g.wg.Wait()
		<-g.checkDone
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sessionCheckBatch is how many users the session check reads between
// two looks at the connected set (the gateway's lock is not held while the
// store is read).
const sessionCheckBatch = 256

// checkSessions is the one goroutine that closes connections whose session
// the log has ended when no effect told them (a kick is never lost): every
// SessionCheckInterval, jittered, it walks the connected users.
func (g *Gateway) checkSessions() {
	defer close(g.checkDone)
	t := time.NewTimer(jitter(g.o.SessionCheckInterval))
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
		}
		g.sweepSessions()
		t.Reset(jitter(g.o.SessionCheckInterval))
	}
}

// jitter returns d ±25%, so gateways started together do not read the
// store in step.
func jitter(d time.Duration) time.Duration {
	return d*3/4 + time.Duration(mrand.Int64N(int64(d)/2+1))
}

// sweepSessions checks every connected user once, sessionCheckBatch users
// at a time: connections of a user another process now serves are sent
// there, ended sessions are closed, and followers are woken.
func (g *Gateway) sweepSessions() {
	g.mu.RLock()
	keys := make([]userKey, 0, len(g.users))
	for k := range g.users {
		keys = append(keys, k)
	}
	g.mu.RUnlock()
	for len(keys) > 0 {
		n := min(len(keys), sessionCheckBatch)
		batch := keys[:n]
		keys = keys[n:]
		// The attached connections are listed before the store is read:
		// each one's login was applied before it attached, so a login ID
		// missing from the read has ended.
		conns := make([][]*conn, n)
		g.mu.RLock()
		for i, k := range batch {
			for c := range g.users[k] {
				if c.isAttached() {
					conns[i] = append(conns[i], c)
				}
			}
		}
		g.mu.RUnlock()
		for i, k := range batch {
			select {
			case <-g.stop:
				return
			default:
			}
			if len(conns[i]) == 0 {
				continue
			}
			if g.o.Owner != nil {
				// The user's partition moved to another process: this
				// store no longer follows it, so the device would see
				// nothing new here. Send it to the owner (1018 with the
				// address), as a new login would be.
				if addr, local := g.o.Owner.Owner(k.app, k.user); !local && addr != "" {
					for _, c := range conns[i] {
						g.m.sessionChecks.Inc()
						c.moved(addr)
					}
					continue
				}
			}
			ss, err := g.o.Store.Devices(k.app, k.user)
			if err != nil {
				g.o.Logger.Debug("gateway: session check", "app", k.app, "user", k.user, "err", err)
				continue
			}
			for _, c := range conns[i] {
				if !hasSession(ss, c.loginID) {
					g.m.sessionChecks.Inc()
					c.sessionGone(false)
					continue
				}
				// A deliver hint the bus dropped must not strand an event:
				// the follower re-reads the timeline from the last sequence
				// it sent (a no-op read when nothing is new), so an event
				// reaches a connected device within one interval.
				c.notify(^uint64(0))
			}
		}
	}
}

func hasSession(ss []*pb.Session, loginID string) bool {
	for _, s := range ss {
		if s.LoginId == loginID {
			return true
		}
	}
	return false
}

// admit takes one of the gateway's operation slots; false when all are
// taken.
func (g *Gateway) admit() bool {
	if g.inflight.Add(1) > int64(g.o.MaxGatewayOpsInFlight) {
		g.inflight.Add(-1)
		return false
	}
	return true
}

// release returns n slots taken by admit.
func (g *Gateway) release(n int) { g.inflight.Add(-int64(n)) }

// register adds c under its user; false when the gateway is closing.
func (g *Gateway) register(c *conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closing {
		return false
	}
	k := userKey{c.app, c.user}
	if g.users[k] == nil {
		g.users[k] = map[*conn]struct{}{}
	}
	g.users[k][c] = struct{}{}
	return true
}

// unregister removes c and, when it was attached, remembers its presence.
func (g *Gateway) unregister(c *conn, attached bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	k := userKey{c.app, c.user}
	if _, ok := g.users[k][c]; !ok {
		return
	}
	delete(g.users[k], c)
	if len(g.users[k]) == 0 {
		delete(g.users, k)
	}
	if attached && !c.sessionOver() {
		g.presence[deviceKey{c.app, c.user, c.loginID}] = presence{lastSeen: c.seen(), remote: c.remote}
	}
}

// others returns the other connections of c's login ID.
func (g *Gateway) others(c *conn) []*conn {
	g.mu.RLock()
	defer g.mu.RUnlock()
	var out []*conn
	for x := range g.users[userKey{c.app, c.user}] {
		if x != c && x.loginID == c.loginID {
			out = append(out, x)
		}
	}
	return out
}

func randomID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

type metrics struct {
	connected   *prometheus.GaugeVec
	logins      *prometheus.CounterVec
	frames      *prometheus.CounterVec
	catchup     prometheus.Histogram
	catchupTime prometheus.Histogram
	disconnects *prometheus.CounterVec
	busy        *prometheus.CounterVec
	opBatch     prometheus.Histogram
	// opStage is where an op's time in the gateway went, by stage: queue
	// (admitted → handed to Begin), begin (Begin: checks and the durable
	// append), decide (Begin returned → its decision), total (admitted →
	// its result queued), the last also for 1019s (stage busy).
	opStage *prometheus.HistogramVec
	// the stages' observers, resolved once (not a label lookup per op)
	stageQueue, stageBegin, stageDecide, stageBusy, stageTotal prometheus.Observer
	writeGroup                                                 prometheus.Histogram // frames per socket write (sendq.go)
	// live counts events sent from a delivery effect without a store
	// read; storeReads the timeline reads a woken follower made instead.
	live, storeReads prometheus.Counter
	// sessionChecks counts connections closed by the session check: each
	// one is an end whose effect did not reach this gateway in time.
	sessionChecks prometheus.Counter
}

func newMetrics(r prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mdsync_connected_devices",
			Help: "Devices attached to this gateway, by platform.",
		}, []string{"platform"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdsync_gateway_logins_total",
			Help: "Logins and resumes answered, by code (0 = attached).",
		}, []string{"code"}),
		frames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdsync_gateway_frames_total",
			Help: "WebSocket frames, by direction (in, out) and type.",
		}, []string{"direction", "type"}),
		catchup: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mdsync_catchup_events",
			Help:    "Events sent to a device between attaching and being caught up.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10),
		}),
		catchupTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mdsync_catchup_duration_seconds",
			Help:    "Time from attaching to being caught up (snapshot and catch-up queued).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mdsync_gateway_disconnects_total",
			Help: "Connections closed, by the code that closed them (0 = closed by the device or normally).",
		}, []string{"code"}),
	}
	m.busy = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mdsync_gateway_ops_busy_total",
		Help: "Operations refused with 1019 (busy), by the bound that was full (connection, gateway, node: the engine's ops awaiting decisions).",
	}, []string{"bound"})
	m.opBatch = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "mdsync_gateway_op_batch_size",
		Help:    "Operations of one connection submitted in one Begin.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 10),
	})
	m.opStage = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "mdsync_gateway_op_stage_seconds",
		Help:    "Where an op's time in the gateway went: queue (admitted to Begin), begin (Begin's checks and durable append), decide (to its decision), total (admitted to result queued; busy: the same for a 1019).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 1.4142, 28), // 0.5 ms to 8 s, √2 apart: a p99 read to ±20%
	}, []string{"stage"})
	m.writeGroup = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "mdsync_gateway_write_frames",
		Help:    "Frames of one connection that left in one socket write (the frames its writer found queued together).",
		Buckets: prometheus.ExponentialBuckets(1, 2, 10),
	})
	m.sessionChecks = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mdsync_gateway_session_check_closes_total",
		Help: "Connections closed by the periodic session check (their session had ended and no effect closed them, or their user's partition moved to another process).",
	})
	m.live = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mdsync_gateway_live_events_total",
		Help: "Events sent to a device from the delivery effect, without reading the timeline back.",
	})
	m.storeReads = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mdsync_gateway_live_store_reads_total",
		Help: "Timeline reads of a caught-up connection woken by a delivery: a gap, an overflow of its live queue, or the session sweep.",
	})
	m.stageQueue, m.stageBegin, m.stageDecide = m.opStage.WithLabelValues("queue"), m.opStage.WithLabelValues("begin"), m.opStage.WithLabelValues("decide")
	m.stageBusy, m.stageTotal = m.opStage.WithLabelValues("busy"), m.opStage.WithLabelValues("total")
	for _, c := range []prometheus.Collector{m.connected, m.logins, m.frames, m.catchup, m.catchupTime, m.disconnects, m.busy, m.opBatch, m.opStage, m.writeGroup, m.sessionChecks, m.live, m.storeReads} {
		if err := r.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func codeLabel(c int32) string { return strconv.Itoa(int(c)) }

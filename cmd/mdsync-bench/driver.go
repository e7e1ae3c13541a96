package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdsync/mdsync/client"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/encoding/protojson"
)

// bench is one run's state: the population, the current phase's
// recorders, and the errors seen.
type bench struct {
	sc      Scenario
	log     *slog.Logger
	wsURL   string
	httpURL string
	token   string // admin token
	hc      *http.Client
	src     *SourceAddrs
	runID   string // makes ids unique per run, so a reused server is fine
	users   []*user
	devs    []*device
	groups  []group
	open    atomic.Int64 // connections open now
	seq     atomic.Uint64
	cur     atomic.Pointer[phaseRec]
	quiet   bool

	errMu    sync.Mutex
	errs     map[string]int
	errFirst map[string]string
}

type user struct {
	name, password string
	token          string // issued by the admin; logins use it when set
	devs           []*device
}

type group struct {
	id      string
	members []int // user indexes
}

// phaseRec collects one phase's figures; events arriving on devices are
// counted in whatever phase is current when they arrive.
type phaseRec struct {
	op, delivery, login, catchup                                 *Recorder
	ok, refused, failed, missed, delivered, evictions, snapshots atomic.Int64
	kmu                                                          sync.Mutex
	byKind                                                       map[string]int64
}

func newPhaseRec() *phaseRec {
	return &phaseRec{op: NewRecorder(), delivery: NewRecorder(), login: NewRecorder(), catchup: NewRecorder(), byKind: map[string]int64{}}
}

func (p *phaseRec) kind(k string) {
	p.kmu.Lock()
	p.byKind[k]++
	p.kmu.Unlock()
}

func (b *bench) rec() *phaseRec { return b.cur.Load() }

func (b *bench) nextID(prefix string) string {
	return prefix + "-" + b.runID + "-" + strconv.FormatUint(b.seq.Add(1), 36)
}

// noteErr counts an error by a short class and keeps the first text.
func (b *bench) noteErr(class string, err error) {
	b.errMu.Lock()
	defer b.errMu.Unlock()
	b.errs[class]++
	if _, ok := b.errFirst[class]; !ok && err != nil {
		b.errFirst[class] = err.Error()
	}
}

// --- message bodies ---

// A benchmark message body starts with a stamp: magic, the send time and
// a marker id (0: none), then padding to body_bytes. The receiving device
// (same process, same clock) takes the latency from it.
var stampMagic = []byte("mdsb")

const stampLen = 4 + 8 + 8

func stamp(size int, at time.Time, marker uint64) []byte {
	b := make([]byte, max(size, stampLen))
	copy(b, stampMagic)
	binary.BigEndian.PutUint64(b[4:], uint64(at.UnixNano()))
	binary.BigEndian.PutUint64(b[12:], marker)
	for i := stampLen; i < len(b); i++ {
		b[i] = 'a' + byte(i%26)
	}
	return b
}

func readStamp(b []byte) (at time.Time, marker uint64, ok bool) {
	if len(b) < stampLen || !bytes.Equal(b[:4], stampMagic) {
		return time.Time{}, 0, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(b[4:]))), binary.BigEndian.Uint64(b[12:]), true
}

// --- devices ---

// device is one simulated device. Its client is replaced on a reconnect
// or a re-login; handlers of an old client see a stale generation and
// change nothing.
type device struct {
	b        *bench
	u        *user
	ui, di   int
	platform int32
	name     string
	// use is held shared by each request on the device's connection and
	// exclusively by a reconnect or an eviction, so the benchmark never
	// closes a connection under its own request.
	use sync.RWMutex

	mu      sync.Mutex
	conn    *conn
	gen     uint64
	loginID string
	epoch   string
	lastSeq uint64
	recv    receiptTarget // the last message from someone else
	// since is when the current connection's dial began: a message sent
	// before it reached this device by catch-up, not live delivery.
	since time.Time

	// Catch-up: the marker this device waits for, and what it received
	// meanwhile.
	marker     atomic.Uint64
	markerCh   chan struct{}
	catching   atomic.Bool
	caught     atomic.Int64
	bySnapshot atomic.Bool // the catch-up ended with a snapshot, not the marker
}

// startCatchUp arms the device to wait for marker; the caller then sends
// the marker and reconnects the device, and waits on markerCh.
func (d *device) startCatchUp(marker uint64) uint64 {
	d.markerCh = make(chan struct{})
	d.caught.Store(0)
	d.bySnapshot.Store(false)
	d.marker.Store(marker)
	d.catching.Store(true)
	return marker
}

// endCatchUp closes markerCh once: on the marker, or on a snapshot (the
// server sent state instead of events; the marker is part of it).
func (d *device) endCatchUp(marker uint64, bySnapshot bool) {
	if marker != 0 && d.marker.CompareAndSwap(marker, 0) {
		d.bySnapshot.Store(bySnapshot)
		close(d.markerCh)
	}
}

type receiptTarget struct {
	chatType  pb.ChatType
	conv, msg string
}

// conn is one client connection; closed makes its accounting idempotent.
type conn struct {
	d      *device
	c      *client.Client
	gen    uint64
	closed atomic.Bool
}

func (b *bench) connClosed(c *conn) {
	if c != nil && c.closed.CompareAndSwap(false, true) {
		b.open.Add(-1)
	}
}

func (d *device) isGen(gen uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.gen == gen
}

func (d *device) current() *conn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conn
}

// dial connects the device: a login with loginID (empty: a new login, the
// server names it; the device's own: a reconnect that catches up).
func (d *device) dial(ctx context.Context, loginID string) (*conn, time.Duration, error) {
	d.mu.Lock()
	d.gen++
	gen := d.gen
	if loginID == "" {
		// A new login starts a new stream position.
		d.epoch, d.lastSeq = "", 0
	}
	d.since = time.Now()
	since := d.since
	d.mu.Unlock()
	c := &conn{d: d, gen: gen}
	cfg := d.b.clientConfig(d.u, d.platform, d.name, loginID)
	cfg.Handlers = client.Handlers{
		OnEvent: func(ev client.Event) { d.onEvent(gen, since, ev) },
		OnSnapshot: func(s client.Snapshot) {
			// A device with a position gets events; a snapshot here means
			// its position could not be continued.
			if d.catching.Load() && d.isGen(gen) {
				d.endCatchUp(d.marker.Load(), true)
			}
		},
		OnUserDidLoginFromOtherDevice: func(client.Kicked) {
			d.b.rec().evictions.Add(1)
			d.b.connClosed(c)
		},
		OnUserKickedByOtherDevice: func(client.Kicked) { d.b.connClosed(c) },
		OnDisconnected:            func(error) { d.b.connClosed(c) },
	}
	start := time.Now()
	cl, err := client.Dial(ctx, cfg)
	took := time.Since(start)
	if err != nil {
		return nil, took, err
	}
	c.c = cl
	d.b.open.Add(1)
	d.mu.Lock()
	if d.gen == gen {
		d.conn = c
		d.loginID = cl.LoginID()
	}
	d.mu.Unlock()
	return c, took, nil
}

// drop closes the device's connection without logging out: the session
// stays, as when a phone loses its network.
func (d *device) drop() {
	d.mu.Lock()
	c := d.conn
	d.conn = nil
	d.gen++ // the old client's late events are stale
	d.mu.Unlock()
	if c != nil {
		c.c.Close()
		d.b.connClosed(c)
	}
}

func (d *device) onEvent(gen uint64, since time.Time, ev client.Event) {
	d.mu.Lock()
	if gen != d.gen {
		d.mu.Unlock()
		return
	}
	// The SDK drops duplicates within one client; across a reconnect (a
	// new client) a seq this device already saw is dropped here.
	if ev.Epoch == d.epoch && ev.Seq <= d.lastSeq {
		d.mu.Unlock()
		return
	}
	d.epoch, d.lastSeq = ev.Epoch, ev.Seq
	src := ev.Entry.GetSource()
	m := src.GetMessage()
	if src.GetKind() == pb.Kind_KIND_MESSAGE_SEND && src.GetActor().GetUser() != d.u.name {
		conv := src.GetActor().GetUser()
		if m.GetChatType() == pb.ChatType_CHAT_TYPE_GROUP {
			conv = m.GetTo()
		}
		d.recv = receiptTarget{chatType: m.GetChatType(), conv: conv, msg: src.GetEventId()}
	}
	d.mu.Unlock()

	if src.GetKind() != pb.Kind_KIND_MESSAGE_SEND {
		if d.catching.Load() {
			d.caught.Add(1)
		}
		return
	}
	at, marker, ok := readStamp(m.GetBody())
	if d.catching.Load() {
		d.caught.Add(1)
		if marker != 0 {
			d.endCatchUp(marker, false)
		}
		return
	}
	if ok && at.After(since) {
		recvd := ev.Received
		if recvd.IsZero() {
			recvd = time.Now()
		}
		r := d.b.rec()
		r.delivery.Record(recvd.Sub(at))
		r.delivered.Add(1)
	}
}

func (b *bench) clientConfig(u *user, platform int32, name, loginID string) client.Config {
	pw := u.password
	if u.token != "" {
		pw = "" // the token authenticates: an HMAC check, not a password hash
	}
	return client.Config{
		URL: b.wsURL, App: b.sc.App, User: u.name, Password: pw, Token: u.token,
		LoginID: loginID, Platform: platform, DeviceName: name,
		Dialer:            b.src.Dialer(),
		Logger:            slog.New(slog.DiscardHandler),
		HeartbeatInterval: secs(b.sc.HeartbeatSeconds),
	}
}

// --- REST setup ---

func (b *bench) post(ctx context.Context, path string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.httpURL+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+b.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return out, fmt.Errorf("POST %s: %s: %s", path, resp.Status, bytes.TrimSpace(out))
	}
	return out, nil
}

// setPolicy makes the scenario's platform limit the app's policy, with a
// timeline long enough that the catch-up phase is not trimmed.
func (b *bench) setPolicy(ctx context.Context) error {
	keep := int64(max(20_000, 2*b.sc.CatchUp.Missed+10_000))
	ev := &pb.Event{App: b.sc.App, ClientOpId: b.nextID("policy"), Kind: pb.Kind_KIND_POLICY_SET,
		Actor: &pb.Actor{User: "mdsync-bench", Admin: true},
		Payload: &pb.Event_PolicySet{PolicySet: &pb.PolicySet{Mode: pb.PlatformMode_PLATFORM_MODE_MULTI,
			DefaultLimit: int32(b.sc.PlatformLimit), AutoLogin: pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST,
			TimelineMaxEntries: keep}}}
	body, err := protojson.Marshal(ev)
	if err != nil {
		return err
	}
	out, err := b.post(ctx, "/v1/operations", body)
	if err != nil {
		return err
	}
	var d struct {
		Code int32 `json:"code"`
	}
	if err := json.Unmarshal(out, &d); err != nil || d.Code != 0 {
		return fmt.Errorf("policy refused: %s", out)
	}
	return nil
}

// register creates the users over REST, a few at a time (each is a
// password hash on the server), and, unless the scenario logs in with
// passwords, issues each a token: a password login is an argon2 hash and
// spends from per-user and per-IP rate limits, which would make the
// benchmark measure the hash and the limiter instead of the sync engine.
func (b *bench) register(ctx context.Context, bar progress) error {
	rest := client.NewREST(b.httpURL, b.hc)
	admin := client.Credential{Admin: b.token}
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, u := range b.users {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done(); bar.Add(1) }()
			err := rest.RegisterUser(ctx, b.sc.App, u.name, u.password, admin)
			if err == nil && !b.sc.PasswordLogins {
				var t client.Token
				t, err = rest.IssueToken(ctx, b.sc.App, u.name, 24*time.Hour, admin)
				u.token = t.Token
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("register %s: %w", u.name, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("%d of %d registrations failed; first: %w", len(errs), len(b.users), errs[0])
	}
	return nil
}

// --- operations ---

const (
	opTimeout  = 30 * time.Second
	phaseGrace = 10 * time.Second
)

// pick returns an online device and its connection, held shared (release
// with d.use.RUnlock), or nil when 16 tries found none free.
func (b *bench) pick() (*device, *conn) {
	for try := 0; try < 16; try++ {
		if c := b.devs[rand.IntN(len(b.devs))].take(false); c != nil {
			return c.d, c
		}
	}
	return nil, nil
}

// pickExclusive is pick holding the device exclusively (d.use.Unlock).
func (b *bench) pickExclusive() (*device, *conn) {
	for try := 0; try < 16; try++ {
		if c := b.devs[rand.IntN(len(b.devs))].take(true); c != nil {
			return c.d, c
		}
	}
	return nil, nil
}

// take locks the device (shared or exclusive) if it is free and online.
func (d *device) take(exclusive bool) *conn {
	lock, unlock := d.use.TryRLock, d.use.RUnlock
	if exclusive {
		lock, unlock = d.use.TryLock, d.use.Unlock
	}
	if !lock() {
		return nil
	}
	if c := d.current(); c != nil && !c.closed.Load() {
		return c
	}
	unlock()
	return nil
}

// onlineDeviceOf is pick among one user's devices (held shared).
func (b *bench) onlineDeviceOf(ui int) (*device, *conn) {
	u := b.users[ui]
	if len(u.devs) == 0 {
		return nil, nil // the baseline gives some users no device
	}
	off := rand.IntN(len(u.devs))
	for i := range u.devs {
		if c := u.devs[(off+i)%len(u.devs)].take(false); c != nil {
			return c.d, c
		}
	}
	return nil, nil
}

func (b *bench) otherUser(ui int) int {
	v := rand.IntN(len(b.users) - 1)
	if v >= ui {
		v++
	}
	return v
}

// opKind picks an operation by the mix's weights.
func (b *bench) opKind() string {
	m := b.sc.Mix
	n := rand.IntN(m.total())
	for _, k := range []struct {
		w    int
		name string
	}{{m.UserMessage, "user_message"}, {m.GroupMessage, "group_message"}, {m.Receipt, "receipt"},
		{m.Operation, "operation"}, {m.EvictionLogin, "eviction_login"}, {m.Reconnect, "reconnect"}} {
		if n < k.w {
			return k.name
		}
		n -= k.w
	}
	return "user_message"
}

// one performs one operation of the mix and records it in the current
// phase.
func (b *bench) one(ctx context.Context) {
	r := b.rec()
	kind := b.opKind()
	var err error
	switch kind {
	case "eviction_login":
		err = b.evictionLogin(ctx, r)
	case "reconnect":
		err = b.reconnect(ctx, r)
	default:
		kind, err = b.request(ctx, kind, r)
	}
	b.count(r, kind, err)
}

// count books an operation's outcome: ok, refused (the server answered
// with a code) or failed (no answer).
func (b *bench) count(r *phaseRec, kind string, err error) {
	r.kind(kind)
	var ce *client.Error
	switch {
	case err == nil:
		r.ok.Add(1)
	case errors.As(err, &ce):
		r.refused.Add(1)
		b.noteErr(kind+": code "+strconv.Itoa(int(ce.Code)), err)
	case errors.Is(err, errSkipped):
		r.missed.Add(1)
	default:
		r.failed.Add(1)
		b.noteErr(kind+": "+errClass(err), err)
	}
}

var errSkipped = errors.New("no idle online device to act")

func errClass(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	s := err.Error()
	if i := strings.IndexAny(s, ":("); i > 0 && i < 40 {
		s = s[:i]
	}
	if len(s) > 40 {
		s = s[:40]
	}
	return s
}

// request sends one request/answer operation (a message, a receipt, a
// pin) and records its latency: sent → decision received.
func (b *bench) request(ctx context.Context, kind string, r *phaseRec) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	var d *device
	var c *conn
	var send func() error
	switch kind {
	case "group_message":
		g := b.groups[rand.IntN(len(b.groups))]
		if d, c = b.onlineDeviceOf(g.members[rand.IntN(len(g.members))]); d == nil {
			return kind, errSkipped
		}
		send = func() error {
			_, err := c.c.Send(ctx, client.Message{ChatType: pb.ChatType_CHAT_TYPE_GROUP, To: g.id,
				ClientMsgID: b.nextID("g"), ContentType: "application/octet-stream", Body: stamp(b.sc.BodyBytes, time.Now(), 0)})
			return err
		}
	case "receipt":
		if d, c = b.pick(); d == nil {
			return kind, errSkipped
		}
		d.mu.Lock()
		t := d.recv
		d.mu.Unlock()
		if t.msg == "" {
			kind = "operation" // nothing received yet to acknowledge: d stays held
			break
		}
		send = func() error {
			_, err := c.c.Op(ctx, &pb.Event{Kind: pb.Kind_KIND_READ_RECEIPT, ClientOpId: b.nextID("r"),
				Payload: &pb.Event_Receipt{Receipt: &pb.Receipt{ChatType: t.chatType, ConversationId: t.conv, MessageId: t.msg}}})
			return err
		}
	case "user_message":
		if d, c = b.pick(); d == nil {
			return kind, errSkipped
		}
		to := b.users[b.otherUser(d.ui)].name
		send = func() error {
			_, err := c.c.Send(ctx, client.Message{ChatType: pb.ChatType_CHAT_TYPE_USER, To: to,
				ClientMsgID: b.nextID("m"), ContentType: "application/octet-stream", Body: stamp(b.sc.BodyBytes, time.Now(), 0)})
			return err
		}
	}
	if kind == "operation" {
		if d == nil {
			if d, c = b.pick(); d == nil {
				return kind, errSkipped
			}
		}
		k := pb.Kind_KIND_CONVERSATION_PIN
		if rand.IntN(2) == 0 {
			k = pb.Kind_KIND_CONVERSATION_UNPIN
		}
		conv := b.users[b.otherUser(d.ui)].name
		send = func() error {
			_, err := c.c.Op(ctx, &pb.Event{Kind: k, ClientOpId: b.nextID("p"),
				Payload: &pb.Event_Conversation{Conversation: &pb.ConversationRef{ChatType: pb.ChatType_CHAT_TYPE_USER, ConversationId: conv}}})
			return err
		}
	}
	start := time.Now()
	err := send()
	d.use.RUnlock()
	if err == nil {
		r.op.Record(time.Since(start))
	}
	return kind, err
}

// evictionLogin: a new device of a user logs in on the platform of one of
// its devices, which the platform limit evicts (206); then the evicted
// device logs in again and evicts the intruder in turn, so the population
// is whole again. Both logins are login decisions, timed from dial to
// login_result.
func (b *bench) evictionLogin(ctx context.Context, r *phaseRec) error {
	d, _ := b.pickExclusive()
	if d == nil {
		return errSkipped
	}
	defer d.use.Unlock()
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	intruder := &device{b: b, u: d.u, ui: d.ui, di: -1, platform: d.platform, name: "intruder"}
	ic, took, err := intruder.dial(ctx, "")
	if err != nil {
		return fmt.Errorf("intruder login: %w", err)
	}
	r.login.Record(took)
	defer func() { ic.c.Close(); b.connClosed(ic) }()
	d.drop() // its session was ended by the intruder's login
	_, took, err = d.dial(ctx, "")
	if err != nil {
		return fmt.Errorf("re-login: %w", err)
	}
	r.login.Record(took)
	return nil
}

// reconnect: a device drops its connection (the session stays), misses
// what arrives for reconnect_offline_ms and a marker message sent last,
// then logs in again with its login ID and catches up; the catch-up is
// timed from the dial to the marker's arrival.
func (b *bench) reconnect(ctx context.Context, r *phaseRec) error {
	d, _ := b.pickExclusive()
	if d == nil {
		return errSkipped
	}
	defer d.use.Unlock()
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	d.mu.Lock()
	lid := d.loginID
	d.mu.Unlock()
	d.drop()
	time.Sleep(time.Duration(b.sc.ReconnectOfflineMs) * time.Millisecond)
	from, fc := b.onlineDeviceOf(b.otherUser(d.ui))
	if from != nil {
		defer from.use.RUnlock()
	}
	if from == nil {
		_, _, err := d.dial(ctx, lid)
		if err == nil {
			return errSkipped
		}
		return err
	}
	marker := d.startCatchUp(b.seq.Add(1))
	defer d.catching.Store(false)
	if _, err := fc.c.Send(ctx, client.Message{ChatType: pb.ChatType_CHAT_TYPE_USER, To: d.u.name,
		ClientMsgID: b.nextID("mk"), ContentType: "application/octet-stream", Body: stamp(b.sc.BodyBytes, time.Now(), marker)}); err != nil {
		d.dial(ctx, lid)
		return fmt.Errorf("marker: %w", err)
	}
	start := time.Now()
	_, took, err := d.dial(ctx, lid)
	if err != nil {
		return fmt.Errorf("reconnect: %w", err)
	}
	r.login.Record(took)
	select {
	case <-d.markerCh:
		if d.bySnapshot.Load() {
			r.snapshots.Add(1) // state, not events: not a catch-up latency
		} else {
			r.catchup.Record(time.Since(start))
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("catch-up marker not received: %w", ctx.Err())
	}
}

// --- phases ---

// runPhase offers the mix at ph.Rate (open loop: a tick that finds every
// worker busy is missed, not queued) or, at rate 0, runs a closed loop of
// Concurrency workers.
func (b *bench) runPhase(ctx context.Context, ph Phase, total *phaseRec, bar progress) PhaseReport {
	r := newPhaseRec()
	b.cur.Store(r)
	start := time.Now()
	end := start.Add(ph.Duration)
	// Operations still in flight at the end get a grace period, then are
	// cancelled (and counted as failed), so a phase ends on time.
	pctx, cancel := context.WithDeadline(ctx, end.Add(phaseGrace))
	defer cancel()
	var wg sync.WaitGroup
	done := make(chan struct{})
	go func() { // progress, in seconds
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		last := 0
		for {
			select {
			case <-done:
				return
			case <-t.C:
				s := int(time.Since(start).Seconds())
				if s > last && s <= int(ph.Duration.Seconds()) {
					bar.Add(s - last)
					last = s
				}
			}
		}
	}()
	if ph.Rate == 0 {
		for w := 0; w < b.sc.Concurrency; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(end) && pctx.Err() == nil {
					b.one(pctx)
				}
			}()
		}
	} else {
		sem := make(chan struct{}, b.sc.Concurrency)
		t := time.NewTicker(time.Millisecond)
		issued := int64(0)
	loop:
		for {
			select {
			case <-pctx.Done():
				break loop
			case now := <-t.C:
				if !now.Before(end) {
					break loop
				}
				due := int64(now.Sub(start).Seconds()*ph.Rate) - issued
				for ; due > 0; due-- {
					issued++
					select {
					case sem <- struct{}{}:
						wg.Add(1)
						go func() {
							defer func() { <-sem; wg.Done() }()
							b.one(pctx)
						}()
					default:
						r.missed.Add(1)
					}
				}
			}
		}
		t.Stop()
	}
	wg.Wait()
	close(done)
	elapsed := time.Since(start)
	pr := PhaseReport{Name: ph.Name, OfferedRate: ph.Rate, Seconds: elapsed.Seconds(),
		Ops: r.ok.Load(), Refused: r.refused.Load(), Failed: r.failed.Load(), Missed: r.missed.Load(),
		Delivered: r.delivered.Load(), Evictions: r.evictions.Load(), CatchUpSnapshots: r.snapshots.Load(), ByKind: map[string]int64{}}
	pr.OpsPerSec = float64(pr.Ops+pr.Refused) / elapsed.Seconds()
	pr.DeliveredPerSec = float64(pr.Delivered) / elapsed.Seconds()
	r.kmu.Lock()
	for k, v := range r.byKind {
		pr.ByKind[k] = v
	}
	r.kmu.Unlock()
	pr.Op, pr.Delivery, pr.Login, pr.CatchUp = r.op.Snapshot(false), r.delivery.Snapshot(false), r.login.Snapshot(false), r.catchup.Snapshot(false)
	total.op.Merge(r.op)
	total.delivery.Merge(r.delivery)
	total.login.Merge(r.login)
	total.catchup.Merge(r.catchup)
	return pr
}

func sumPhases(phases []PhaseReport, total *phaseRec) PhaseReport {
	t := PhaseReport{Name: "total", ByKind: map[string]int64{}}
	for _, p := range phases {
		t.Seconds += p.Seconds
		t.Ops += p.Ops
		t.Refused += p.Refused
		t.Failed += p.Failed
		t.Missed += p.Missed
		t.Delivered += p.Delivered
		t.Evictions += p.Evictions
		t.CatchUpSnapshots += p.CatchUpSnapshots
		t.ServerCPUSeconds += p.ServerCPUSeconds
		for k, v := range p.ByKind {
			t.ByKind[k] += v
		}
	}
	if t.Seconds > 0 {
		t.OpsPerSec = float64(t.Ops+t.Refused) / t.Seconds
		t.DeliveredPerSec = float64(t.Delivered) / t.Seconds
	}
	if t.ServerCPUSeconds > 0 {
		t.setServerCPU(time.Duration(t.ServerCPUSeconds * float64(time.Second)))
	}
	t.Op, t.Delivery, t.Login, t.CatchUp = total.op.Snapshot(false), total.delivery.Snapshot(false), total.login.Snapshot(false), total.catchup.Snapshot(false)
	return t
}

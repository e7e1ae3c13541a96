package loadgen

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdsync/mdsync/client"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

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
		ReturnBusy:        b.sc.CountBusy,
	}
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

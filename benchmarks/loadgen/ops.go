package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/mdsync/mdsync/client"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

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
// phase. It returns the wait a busy refusal asked for (Scenario.CountBusy),
// else 0.
func (b *bench) one(ctx context.Context) time.Duration {
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
	return b.count(r, kind, err)
}

// count books an operation's outcome: ok, busy (refused with 1019, not
// decided), refused (the server decided it with another code) or failed
// (no answer); it returns a busy refusal's retry after.
func (b *bench) count(r *phaseRec, kind string, err error) time.Duration {
	r.kind(kind)
	var ce *client.Error
	switch {
	case err == nil:
		r.ok.Add(1)
	case errors.As(err, &ce) && ce.Code == client.CodeBusy && b.sc.CountBusy:
		r.busy.Add(1)
		return ce.RetryAfter
	case errors.As(err, &ce):
		r.refused.Add(1)
		b.noteErr(kind+": code "+strconv.Itoa(int(ce.Code)), err)
	case errors.Is(err, errSkipped):
		r.missed.Add(1)
	default:
		r.failed.Add(1)
		b.noteErr(kind+": "+errClass(err), err)
	}
	return 0
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
	d, ctx, done := b.exclusiveOp(ctx)
	if d == nil {
		return errSkipped
	}
	defer done()
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

// exclusiveOp picks an online device for an operation that takes its
// connection away (held exclusively), with the operation's timeout; done
// releases both. d is nil when no device was free.
func (b *bench) exclusiveOp(ctx context.Context) (d *device, opCtx context.Context, done func()) {
	if d, _ = b.pickExclusive(); d == nil {
		return nil, ctx, nil
	}
	opCtx, cancel := context.WithTimeout(ctx, opTimeout)
	return d, opCtx, func() { cancel(); d.use.Unlock() }
}

// reconnect: a device drops its connection (the session stays), misses
// what arrives for reconnect_offline_ms and a marker message sent last,
// then logs in again with its login ID and catches up; the catch-up is
// timed from the dial to the marker's arrival.
func (b *bench) reconnect(ctx context.Context, r *phaseRec) error {
	d, ctx, done := b.exclusiveOp(ctx)
	if d == nil {
		return errSkipped
	}
	defer done()
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

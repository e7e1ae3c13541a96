package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/mdsync/mdsync/adapters/gateway"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// The read path's acceptance tests (issue 13): a catch-up interrupted and
// resumed, and a large group's messages on every member's device. They use
// a lean device (rdev) that reads frames in the caller's goroutine, so what
// it counts is exactly what it read off the socket before it dropped it.

// rdev is one device's view of its stream: the position it holds and the
// message bodies it received, checked frame by frame for order and
// duplicates.
type rdev struct {
	user, login string
	batch       bool // asks for events frames at login and resume
	ws          *websocket.Conn
	epoch       string
	seq         uint64
	bodies      []string // bodies of message_send entries, in receive order
	events      int
	batches     int // events frames received
}

// rframe is the part of a server frame the read-path tests look at; the
// entry is decoded only as far as the message body.
type rframe struct {
	Type   string            `json:"type"`
	Code   int32             `json:"code"`
	Epoch  string            `json:"epoch"`
	Seq    uint64            `json:"seq"`
	Name   string            `json:"name"`
	Events []json.RawMessage `json:"events"`
	Entry  struct {
		Seq    uint64 `json:"seq"`
		Source struct {
			Message *struct {
				Body []byte `json:"body"`
			} `json:"message"`
		} `json:"source"`
	} `json:"entry"`
}

// connect opens a device with a login (no position yet) or, once it has a
// position, a resume from exactly that position.
func (d *rdev) connect(ctx context.Context, e *env) error {
	ws, _, err := websocket.Dial(ctx, e.url, &websocket.DialOptions{Subprotocols: []string{gateway.Subprotocol}})
	if err != nil {
		return err
	}
	ws.SetReadLimit(16 << 20)
	d.ws = ws
	f := loginFrame{Type: "login", ID: "l", App: "app", User: d.user, Password: "pw", LoginID: d.login, Platform: 1, Batch: d.batch}
	if d.epoch != "" {
		f = loginFrame{Type: "resume", ID: "r", App: "app", User: d.user, Password: "pw", LoginID: d.login, Epoch: d.epoch, Seq: d.seq, Batch: d.batch}
	}
	b, _ := json.Marshal(f)
	if err := ws.Write(ctx, websocket.MessageText, b); err != nil {
		return err
	}
	r, err := d.read(ctx)
	if err != nil {
		return err
	}
	if r.Type != "login_result" || r.Code != 0 {
		return fmt.Errorf("%s: %s: %+v", d.user, f.Type, r)
	}
	return nil
}

// read reads and checks the next frame: a snapshot only before any
// position, an event only at a higher sequence of the same epoch, an
// events frame (a batch of at least two event frames, each checked as one)
// only when the device asked for batches.
func (d *rdev) read(ctx context.Context) (rframe, error) {
	_, b, err := d.ws.Read(ctx)
	if err != nil {
		return rframe{}, err
	}
	var f rframe
	if err := json.Unmarshal(b, &f); err != nil {
		return f, fmt.Errorf("%s: bad frame %s: %w", d.user, b, err)
	}
	switch f.Type {
	case "snapshot":
		if d.epoch != "" {
			return f, fmt.Errorf("%s: a snapshot at %s/%d after position %s/%d", d.user, f.Epoch, f.Seq, d.epoch, d.seq)
		}
		d.epoch, d.seq = f.Epoch, f.Seq
	case "event":
		return f, d.event(f)
	case "events":
		if !d.batch || len(f.Events) < 2 {
			return f, fmt.Errorf("%s: an events frame of %d (batch asked: %v)", d.user, len(f.Events), d.batch)
		}
		d.batches++
		for _, raw := range f.Events {
			var ev rframe
			if err := json.Unmarshal(raw, &ev); err != nil || ev.Type != "event" {
				return f, fmt.Errorf("%s: bad element %s of an events frame: %v", d.user, raw, err)
			}
			if err := d.event(ev); err != nil {
				return f, err
			}
		}
	}
	return f, nil
}

// event checks and takes one event frame.
func (d *rdev) event(f rframe) error {
	if f.Epoch != d.epoch || f.Seq <= d.seq || f.Entry.Seq != f.Seq {
		return fmt.Errorf("%s: event %s/%d (entry %d) after %s/%d: duplicate, out of order or another epoch",
			d.user, f.Epoch, f.Seq, f.Entry.Seq, d.epoch, d.seq)
	}
	d.seq = f.Seq
	d.events++
	if m := f.Entry.Source.Message; m != nil && f.Name == "message_send" {
		d.bodies = append(d.bodies, string(m.Body))
	}
	return nil
}

// readUntil reads until cond holds.
func (d *rdev) readUntil(ctx context.Context, cond func() bool) error {
	for !cond() {
		if _, err := d.read(ctx); err != nil {
			return fmt.Errorf("%s at %d events, %d bodies: %w", d.user, d.events, len(d.bodies), err)
		}
	}
	return nil
}

// quiet checks that nothing more arrives within d.
func (d *rdev) quiet(t *testing.T, wait time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if f, err := d.read(ctx); err == nil {
		t.Fatalf("%s: extra frame %+v", d.user, f)
	}
}

// submitAll submits ops in batches through Begin and waits for each decision.
func submitAll(t *testing.T, e *env, ops []*pb.Event) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute) // a bound, not a timing: -race on a busy machine is slow
	defer cancel()
	for len(ops) > 0 {
		n := min(len(ops), 256)
		for i, p := range e.n.Engine.Begin(ctx, ops[:n]) {
			d, err := p.Wait(ctx)
			if err != nil || d.Code != 0 {
				t.Fatalf("%s %s: %v %v", engine.KindName(ops[i].Kind), ops[i].ClientOpId, err, d)
			}
		}
		ops = ops[n:]
	}
}

func userMsg(from, to, id string) *pb.Event {
	return &pb.Event{App: "app", ClientOpId: id, Kind: pb.Kind_KIND_MESSAGE_SEND, Actor: &pb.Actor{User: from},
		Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: to, ClientMsgId: id, Body: []byte(id)}}}
}

// A device that drops its socket in the middle of a 10,000-entry catch-up,
// twice, and resumes from the last event it read each time, ends with every
// entry exactly once and in order; messages sent while it catches up follow
// without a gap.
func TestCatchUpDroppedMidwayResumes(t *testing.T) {
	for _, batch := range []bool{false, true} {
		t.Run(fmt.Sprint("batch=", batch), func(t *testing.T) { catchUpDroppedMidway(t, batch) })
	}
}

func catchUpDroppedMidway(t *testing.T, batch bool) {
	const missed = 10_000 // the default retention: every entry is still there
	// Devices here send no pings: the heartbeat timeout must outlast the
	// test on a slow machine.
	e := newEnv(t, func(o *gateway.Options) { o.SessionCheckInterval = -1; o.HeartbeatTimeout = 10 * time.Minute })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	a := &rdev{user: "alice", login: "A1", batch: batch}
	if err := a.connect(ctx, e); err != nil {
		t.Fatal(err)
	}
	if err := a.readUntil(ctx, func() bool { return a.epoch != "" }); err != nil {
		t.Fatal(err)
	}
	a.ws.CloseNow()

	var want []string
	ops := make([]*pb.Event, 0, missed)
	for i := range missed {
		id := fmt.Sprintf("m%05d", i)
		ops = append(ops, userMsg("bob", "alice", id)) // one sender: one order to check
		want = append(want, id)
	}
	submitAll(t, e, ops)
	// Every copy is applied on alice's partition before the catch-up starts
	// (a copy relayed late would be live, not catch-up).
	for {
		_, next, _, err := e.n.Store.TimelineJSON("app", "alice", "A1", a.epoch, missed-1, 1)
		if err == nil && next == missed {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("alice's timeline never reached %d entries: %v", missed, err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	for _, drop := range []int{2_500, 6_000} {
		if err := a.connect(ctx, e); err != nil {
			t.Fatal(err)
		}
		if err := a.readUntil(ctx, func() bool { return len(a.bodies) >= drop }); err != nil {
			t.Fatal(err)
		}
		a.ws.CloseNow() // frames in flight are lost with the socket
	}
	if err := a.connect(ctx, e); err != nil {
		t.Fatal(err)
	}
	// Live messages while the rest of the catch-up streams.
	var live []*pb.Event
	for i := range 5 {
		id := fmt.Sprintf("live%d", i)
		live = append(live, userMsg("bob", "alice", id))
		want = append(want, id)
	}
	done := make(chan struct{})
	go func() { defer close(done); submitAll(t, e, live) }()
	if err := a.readUntil(ctx, func() bool { return len(a.bodies) >= len(want) }); err != nil {
		t.Fatal(err)
	}
	<-done
	a.quiet(t, 200*time.Millisecond)
	if len(a.bodies) != len(want) {
		t.Fatalf("received %d bodies, want %d", len(a.bodies), len(want))
	}
	for i := range want {
		if a.bodies[i] != want[i] {
			t.Fatalf("body %d is %q, want %q", i, a.bodies[i], want[i])
		}
	}
	if a.seq != uint64(len(want)) {
		t.Fatalf("last seq %d, want %d: a gap", a.seq, len(want))
	}
	// A catch-up of thousands comes in far fewer frames when asked for.
	if batch && a.batches > missed/10 || !batch && a.batches != 0 {
		t.Fatalf("%d events frames for %d events (batch asked: %v)", a.batches, a.events, batch)
	}
	a.ws.CloseNow()
}

// A group of 1,000 members whose users hash to every partition: each
// member's device receives each group message exactly once, in the group's
// order, while connected and, for messages sent while it was away, after
// it reconnects (resuming from its last event). Every other device asks
// for batches.
func TestLargeGroupEveryMemberOnceInOrder(t *testing.T) {
	const members, perRound = 1000, 5
	e := newEnv(t, func(o *gateway.Options) { o.SessionCheckInterval = -1; o.HeartbeatTimeout = 10 * time.Minute })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	devs := make([]*rdev, members)
	parts := map[int32]int{}
	for i := range devs {
		devs[i] = &rdev{user: fmt.Sprintf("m%04d", i), login: fmt.Sprintf("L%04d", i), batch: i%2 == 0}
		parts[engine.PartitionFor([]byte(engine.UserStream("app", devs[i].user)), e.n.Log.Partitions())]++
	}
	if len(parts) != int(e.n.Log.Partitions()) {
		t.Fatalf("members on %d of %d partitions", len(parts), e.n.Log.Partitions())
	}
	// each runs f for every device on 16 goroutines and fails on the first error.
	each := func(what string, f func(d *rdev) error) {
		t.Helper()
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			first error
			next  = make(chan *rdev)
		)
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for d := range next {
					if err := f(d); err != nil {
						mu.Lock()
						if first == nil {
							first = err
						}
						mu.Unlock()
					}
				}
			}()
		}
		for _, d := range devs {
			next <- d
		}
		close(next)
		wg.Wait()
		if first != nil {
			t.Fatalf("%s: %v", what, first)
		}
	}
	each("login", func(d *rdev) error {
		if err := d.connect(ctx, e); err != nil {
			return err
		}
		return d.readUntil(ctx, func() bool { return d.epoch != "" })
	})

	owner := devs[0].user
	var others []string
	for _, d := range devs[1:] {
		others = append(others, d.user)
	}
	ops := []*pb.Event{{App: "app", ClientOpId: "create", Kind: pb.Kind_KIND_GROUP_CREATE, Actor: &pb.Actor{User: owner},
		Payload: &pb.Event_Group{Group: &pb.GroupOp{GroupId: "big", Name: "big", Users: others[:engine.MaxUsersPerOp-1]}}}}
	for _, u := range others[engine.MaxUsersPerOp-1:] {
		ops = append(ops, &pb.Event{App: "app", ClientOpId: "join", Kind: pb.Kind_KIND_GROUP_JOIN, Actor: &pb.Actor{User: u},
			Payload: &pb.Event_Group{Group: &pb.GroupOp{GroupId: "big"}}})
	}
	submitAll(t, e, ops)

	var want []string
	send := func(round int) {
		t.Helper()
		var msgs []*pb.Event
		for i := range perRound {
			id := fmt.Sprintf("g%d-%d", round, i)
			sender := devs[(round*perRound+i)*97%members].user // senders on several partitions
			msgs = append(msgs, &pb.Event{App: "app", ClientOpId: id, Kind: pb.Kind_KIND_MESSAGE_SEND, Actor: &pb.Actor{User: sender},
				Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_GROUP, To: "big", ClientMsgId: id, Body: []byte(id)}}})
			want = append(want, id)
		}
		submitAll(t, e, msgs) // one batch: the group's stream orders them as given
	}
	check := func(d *rdev) error {
		if len(d.bodies) != len(want) {
			return fmt.Errorf("%s: %d bodies, want %d", d.user, len(d.bodies), len(want))
		}
		for i := range want {
			if d.bodies[i] != want[i] {
				return fmt.Errorf("%s: body %d is %q, want %q (got %v)", d.user, i, d.bodies[i], want[i], d.bodies)
			}
		}
		return nil
	}
	// Live: every device is connected.
	send(0)
	each("live", func(d *rdev) error {
		if err := d.readUntil(ctx, func() bool { return len(d.bodies) >= len(want) }); err != nil {
			return err
		}
		return check(d)
	})
	// Every member has it, so the relay is done: the fan-out traveled as
	// one partition copy per other partition, not one record per member.
	copies := map[int32]int{}
	for p := range e.n.Log.Partitions() {
		end, err := e.n.Log.End(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		for off := int64(0); off < end; {
			es, err := e.n.Log.Read(ctx, p, off, 1000)
			if err != nil {
				t.Fatal(err)
			}
			for _, en := range es {
				if ev, err := engine.Decode(en.Value); err == nil && ev.Kind == pb.Kind_KIND_DELIVER &&
					ev.GetDeliver().GetSource().GetClientOpId() == "g0-0" {
					copies[p]++
				}
			}
			off += int64(len(es))
		}
	}
	if len(copies) < int(e.n.Log.Partitions())-1 {
		t.Fatalf("copies of g0-0 by partition %v: not on every other partition", copies)
	}
	for p, n := range copies {
		if n > 2 { // the partition copy, and the sender's own copy when it lives there
			t.Fatalf("copies of g0-0 by partition %v: %d records on partition %d", copies, n, p)
		}
	}
	// Away: every device drops its socket, the group talks, the devices
	// resume from their last event.
	each("disconnect", func(d *rdev) error { return d.ws.CloseNow() })
	send(1)
	send(2)
	each("reconnect", func(d *rdev) error {
		if err := d.connect(ctx, e); err != nil {
			return err
		}
		if err := d.readUntil(ctx, func() bool { return len(d.bodies) >= len(want) }); err != nil {
			return err
		}
		return check(d)
	})
	// Live again after the reconnect, then nothing more.
	send(3)
	each("live after reconnect", func(d *rdev) error {
		if err := d.readUntil(ctx, func() bool { return len(d.bodies) >= len(want) }); err != nil {
			return err
		}
		if err := check(d); err != nil {
			return err
		}
		qctx, qcancel := context.WithTimeout(ctx, 20*time.Millisecond)
		defer qcancel()
		if f, err := d.read(qctx); err == nil {
			return fmt.Errorf("%s: extra frame %+v", d.user, f)
		}
		return nil
	})
	each("close", func(d *rdev) error { return d.ws.CloseNow() })
}

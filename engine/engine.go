package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// Projector is the port to the read side the engine waits on. The
// projections package implements it. Implementations are safe for
// concurrent use.
type Projector interface {
	// WaitApplied blocks until the event at pos has been applied and is
	// visible to Decision, or ctx is done.
	WaitApplied(ctx context.Context, pos Position) error
	// AwaitDecision calls done exactly once: with the decision recorded for
	// the operation (app, streamKey, user, clientOpID) whose event was
	// appended at pos, once that event is applied and visible to Decision
	// (ok false when none is recorded: the event was skipped), as Decision
	// would then return it; or with an error once it cannot be awaited (the
	// projector stopped, it was closed, or, with a Membership, pos's
	// partition stopped being served here). done runs on the caller's
	// goroutine before AwaitDecision returns, or on the projector's: it
	// must not block. The decision may be shared with the projector's other
	// readers: nobody may modify it.
	AwaitDecision(pos Position, app, streamKey, user, clientOpID string, done func(d *pb.Decision, ok bool, err error))
	// Decision returns the decision recorded for an operation, keyed by
	// its stream, acting user and client op id; ok is false when none.
	Decision(app, streamKey, user, clientOpID string) (d *pb.Decision, ok bool, err error)
	// Policy returns the newest policy of app applied on any partition.
	Policy(app string) (*pb.Policy, error)
	// ActorSession reports, from the committed state of the user's own
	// partition, whether loginID may act: nil while its session is active,
	// else the *Error CheckActor gives (the code that ended it, or 1005).
	ActorSession(app, user, loginID string) error
}

type actorCheckedKey struct{}

// ActorChecked marks ctx as carrying operations whose actor another process
// of the deployment already checked against the actor's own partition (a
// forwarded operation, see Begin): this process, which may not serve that
// partition, does not check again.
func ActorChecked(ctx context.Context) context.Context {
	return context.WithValue(ctx, actorCheckedKey{}, true)
}

// Membership is the port that tells the engine which partitions this
// process serves when several processes share one log, each serving a
// subset (adapters/kafkagroup implements it). Owns returns nil when this
// process serves partition p, else an *Error: CodeNotOwner (its message
// names the owner when known) or CodeUnavailable while p is being restored
// here. It is called before every append and must be cheap and safe for
// concurrent use. With a Membership, the Projector's WaitApplied must
// return such an error, not wait, once p stops being served here.
type Membership interface {
	Owns(p int32) error
}

// Options configure an Engine. The zero value is valid.
type Options struct {
	// Now is the clock that stamps events at append. Default: time.Now.
	// Projections never read a clock; they read Event.time_unix_ms.
	Now func() time.Time
	// Membership, when set, tells which partitions this process serves;
	// an op whose stream is on another partition is refused before the
	// append. Default nil: this process serves every partition.
	Membership Membership
	// MaxPending is the hard cap on the operations this engine has taken
	// for appending and not yet decided (appending, or appended and
	// waiting for the projection); MaxPendingAge is the bound that
	// normally acts first. Together they are the node-wide bound of
	// invariant 10: every gateway connection, REST call and forwarded op
	// of a process goes through its one Engine, and what waits here waits
	// behind the log and the projector, so a bound here caps the decision
	// latency instead of letting a backlog grow. The cap catches a burst
	// the age cannot see yet (many ops admitted within one MaxPendingAge).
	// An op that would pass a bound is refused before the append with
	// CodeBusy (nothing decided, send it again after the *Error's
	// RetryAfter), and so is every later op of the same Begin call, so a
	// caller's later op is never decided ahead of its refused earlier one.
	// Logins are counted but never refused: a device that cannot log in
	// can do nothing, and logins are bounded by the gateway's connections
	// and rate limits.
	// 0: DefaultMaxPending; negative: no cap.
	MaxPending int
	// MaxPendingAge bounds the age of the oldest operation this engine has
	// taken for appending and not yet decided, beyond the time an op
	// admitted with nothing ahead of it takes to be decided (a moving
	// average: the pipeline's own latency, which refusing cannot shorten):
	// while it is older, Begin refuses new operations (not logins) with
	// CodeBusy as above. An age, unlike a count, needs no sizing against
	// the machine's decision rate (docs/design-notes.md, "Overload").
	// 0: DefaultMaxPendingAge; negative: no age bound.
	MaxPendingAge time.Duration
	// AdmissionClock reads the time for MaxPendingAge and the drain rate
	// a refusal's RetryAfter is derived from. It is separate from Now,
	// which tools set to a logical clock (replay). Default: time.Now.
	AdmissionClock func() time.Time
}

// DefaultMaxPending is Options.MaxPending's default: a cap for bursts,
// about 250 ms of decisions at the ~1,000 decided ops/s a saturated
// 2-core node manages (benchmarks/RESULTS.md, issue 12); MaxPendingAge is
// the bound that adapts to the machine.
const DefaultMaxPending = 256

// ErrBusy is the refusal of an op past Options.MaxPending. Begin's
// refusals are *Errors with its code, a message naming the bound that
// refused (ErrBusy's for the count) and a RetryAfter.
var ErrBusy = Errorf(CodeBusy, "too many operations awaiting decisions on this node")

// Engine is the write side: it validates an operation, appends it to the
// log (the single commit point), waits until the projection has applied it,
// and returns the decision. It is safe for concurrent use.
type Engine struct {
	log    Log
	proj   Projector
	member Membership // nil: every partition is served here
	now    func() time.Time

	policyMu sync.Mutex // policy versions are assigned one at a time

	mu       sync.Mutex
	inflight map[string]*call

	adm *admission // Options.MaxPending and MaxPendingAge
}

type call struct {
	done chan struct{}
	d    *pb.Decision
	err  error
}

// New returns an Engine over log and proj.
func New(log Log, proj Projector, opts Options) *Engine {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxPending == 0 {
		opts.MaxPending = DefaultMaxPending
	}
	if opts.MaxPendingAge == 0 {
		opts.MaxPendingAge = DefaultMaxPendingAge
	}
	if opts.AdmissionClock == nil {
		opts.AdmissionClock = time.Now
	}
	return &Engine{log: log, proj: proj, member: opts.Membership, now: opts.Now, inflight: map[string]*call{},
		adm: newAdmission(opts.MaxPending, opts.MaxPendingAge, opts.AdmissionClock)}
}

// Pending is the number of operations taken for appending and not yet
// decided (see Options.MaxPending).
func (e *Engine) Pending() int { return int(e.adm.pending.Load()) }

// Submit performs one operation and returns its decision: Code 0 when it was
// accepted (with any sessions it ended), or a refusal code decided by the
// projection (214, 1005...). An invalid operation returns an *Error and
// appends nothing. The decision is returned only after the event is durable
// in the log and applied. A retry with the same app, user and client op id
// appends nothing new and returns the first decision.
//
// Submit is Begin with one operation, then Wait.
func (e *Engine) Submit(ctx context.Context, op *pb.Event) (*pb.Decision, error) {
	return e.Begin(ctx, []*pb.Event{op})[0].Wait(ctx)
}

// Pending is one operation handed to Begin: appended and durable, or refused
// before the append. Its decision is known once the projection applied it.
type Pending struct {
	c *call
}

// Wait returns the operation's decision once the projection has applied it,
// or the error that refused it; ctx bounds only this wait, not the decision.
func (p *Pending) Wait(ctx context.Context) (*pb.Decision, error) {
	select {
	case <-p.c.done:
		return p.c.d, p.c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Resolved returns a Pending that is already decided: for adapters that
// decide an operation elsewhere (a forwarder) but hand out Pendings.
func Resolved(d *pb.Decision, err error) *Pending {
	c := &call{done: make(chan struct{}), d: d, err: err}
	close(c.done)
	return &Pending{c: c}
}

// Begin validates ops and appends every one that needs appending in ONE log
// append, in slice order, and returns once they are durable: one Pending per
// op, in the same order. Ops of a later Begin call, made after this one
// returned, are ordered after these on every partition they share; this is
// how a connection keeps its operations in the order it received them
// (invariant 8) while pipelining: the projector hands each op its decision
// (Projector.AwaitDecision), and each Pending's Wait returns its own.
//
// An op refused before the append (invalid, not owned here, a duplicate
// already decided) resolves at once; a policy change (POLICY_SET), which
// appends one copy per partition in two steps, is decided inside Begin.
// A retry of an op still in flight anywhere in this process shares its
// decision instead of appending again.
func (e *Engine) Begin(ctx context.Context, ops []*pb.Event) []*Pending {
	out := make([]*Pending, len(ops))
	var batch []queued
	var adm verdict // read once, at this call's first op that needs a slot
	var busy *Error // an op of this call was refused as busy: so are the later ones
	for i, op := range ops {
		if err := Validate(op); err != nil {
			out[i] = Resolved(nil, err)
			continue
		}
		if op.Kind == pb.Kind_KIND_POLICY_SET {
			// Ordered after everything before it in this batch: flush first.
			e.flush(ctx, batch, adm.t)
			batch = nil
			d, err := e.setPolicy(ctx, op)
			out[i] = Resolved(d, err)
			continue
		}
		if m := op.GetMessage(); m != nil && op.ClientOpId != m.ClientMsgId {
			// A message's identity is its client message id: a retry that
			// carries the same client_msg_id under a new client_op_id must
			// not create a second message.
			op = proto.Clone(op).(*pb.Event)
			op.ClientOpId = m.ClientMsgId
		}
		stream := StreamKeyFor(op)
		checked, err := e.checkActor(ctx, op, stream)
		if err != nil {
			out[i] = Resolved(nil, err)
			continue
		}
		// Checked before the append: a non-owner would wait for ever for a
		// decision only the owner's projection makes.
		if err := e.owns(PartitionFor([]byte(stream), e.log.Partitions())); err != nil {
			var ce *Error
			if checked && errors.As(err, &ce) && ce.Code == CodeNotOwner {
				err = &Error{Code: ce.Code, Message: ce.Message, actorChecked: true}
			}
			out[i] = Resolved(nil, err)
			continue
		}
		key := stream + "\x00" + op.Actor.User + "\x00" + op.ClientOpId
		e.mu.Lock()
		if c, ok := e.inflight[key]; ok {
			e.mu.Unlock()
			out[i] = &Pending{c: c}
			continue
		}
		c := &call{done: make(chan struct{})}
		e.inflight[key] = c
		e.mu.Unlock()
		out[i] = &Pending{c: c}
		if d, ok, err := e.proj.Decision(op.App, stream, op.Actor.User, op.ClientOpId); err != nil {
			e.finish(key, c, nil, unavailable(err))
			continue
		} else if ok {
			d, err := sameOp(d, op)
			e.finish(key, c, d, err)
			continue
		}
		if busy != nil || !e.adm.admit(op, &adm) {
			if op.Kind != pb.Kind_KIND_LOGIN {
				if busy == nil {
					busy = e.adm.busy(&adm)
				}
				e.finish(key, c, nil, busy)
				continue
			}
			e.adm.pending.Add(1) // a login after a refusal: counted, never refused
		}
		batch = append(batch, queued{op: op, stream: stream, key: key, c: c})
	}
	e.flush(ctx, batch, adm.t)
	return out
}

// checkActor enforces invariant 9 for an operation decided on a stream
// that does not hold its actor's sessions (a group's, a thread's, a
// chatroom's): the actor's login ID must have an active session in the
// committed state of the actor's own partition when the operation is
// appended. Operations on the actor's own stream are checked by the
// projection itself, in log order (projections.checkActor).
//
// Why this is enough (docs/design-notes.md, "An ended session can do
// nothing"): a session's end is acknowledged to anyone only after it is
// applied, so an operation that starts after the end was acknowledged
// reads it here and is refused; one that overlaps the end may go either
// way, which is a valid order of two concurrent operations. Nothing is
// appended for a refusal, so a rebuild replays the same log.
// It reports checked=true when it read the actor's session here.
func (e *Engine) checkActor(ctx context.Context, op *pb.Event, stream string) (checked bool, err error) {
	login := op.GetActor().GetLoginId()
	if login == "" || op.Kind == pb.Kind_KIND_LOGIN || stream == UserStream(op.App, op.Actor.User) {
		return false, nil
	}
	if done, _ := ctx.Value(actorCheckedKey{}).(bool); done {
		return false, nil
	}
	if err := e.owns(PartitionFor([]byte(UserStream(op.App, op.Actor.User)), e.log.Partitions())); err != nil {
		return false, err // the actor's own process checks it; this one cannot
	}
	if err := e.proj.ActorSession(op.App, op.Actor.User, login); err != nil {
		return false, unavailable(err)
	}
	return true, nil
}

// queued is an op of a Begin batch that needs appending.
type queued struct {
	op          *pb.Event
	stream, key string
	c           *call
}

// flush appends batch, admitted at t, in one log append and registers
// for its decisions, which the projector hands over as it applies them; it
// returns once the append is durable (or failed).
func (e *Engine) flush(ctx context.Context, batch []queued, t time.Time) {
	if len(batch) == 0 {
		return
	}
	// In the admission FIFO before the append: an op being appended is
	// awaiting its decision as much as one appended.
	ab := e.adm.enqueue(t, len(batch))
	evs := make([]*pb.Event, len(batch))
	for i, q := range batch {
		evs[i] = e.envelope(q.op, q.stream)
	}
	pos, err := e.append(ctx, evs, nil)
	if err != nil {
		e.adm.decided(ab, len(batch), false)
		for _, q := range batch {
			e.finish(q.key, q.c, nil, err)
		}
		return
	}
	// The decisions outlive the caller's context: they are the log's, and
	// other submitters of the same op may be waiting on them. No goroutine
	// waits for them: the projector's, which makes each, wakes its waiters.
	for i, q := range batch {
		e.proj.AwaitDecision(pos[i], q.op.App, q.stream, q.op.Actor.User, q.op.ClientOpId, func(d *pb.Decision, ok bool, err error) {
			d, err = decided(q.op, pos[i], d, ok, err)
			e.adm.decided(ab, 1, true)
			e.finish(q.key, q.c, d, err)
		})
	}
}

// finish records an in-flight op's outcome and wakes its waiters.
func (e *Engine) finish(key string, c *call, d *pb.Decision, err error) {
	c.d, c.err = d, err
	e.mu.Lock()
	delete(e.inflight, key)
	e.mu.Unlock()
	close(c.done)
}

// envelope returns op with the envelope fields the engine assigns. It is
// op's fields in a new Event, sharing op's actor and payload, not a
// proto.Clone (a deep, reflective copy was 1.5% of the server's CPU in the
// throughput scenario): the result is encoded inside flush and dropped,
// so op's messages are only read while shared. TestEnvelopeCopiesEveryField fails
// when Event gains a field this does not copy.
func (e *Engine) envelope(op *pb.Event, stream string) *pb.Event {
	ev := &pb.Event{
		SchemaVersion: SchemaVersion,
		App:           op.App,
		StreamKey:     stream,
		EventId:       EventID(stream, op.Actor.User, op.ClientOpId),
		ClientOpId:    op.ClientOpId,
		Kind:          op.Kind,
		Actor:         op.Actor,
		TimeUnixMs:    e.now().UnixMilli(),
		Payload:       op.Payload,
	}
	if u := op.ProtoReflect().GetUnknown(); len(u) > 0 {
		ev.ProtoReflect().SetUnknown(u)
	}
	return ev
}

// append encodes evs and appends them; parts, when set, pins each event's
// partition (policy copies), otherwise the stream key picks it.
func (e *Engine) append(ctx context.Context, evs []*pb.Event, parts []int32) ([]Position, error) {
	n := e.log.Partitions()
	recs := make([]Record, len(evs))
	for i, ev := range evs {
		b, err := Encode(ev)
		if err != nil {
			return nil, Errorf(CodeInternal, "encode: %v", err)
		}
		p := PartitionFor([]byte(ev.StreamKey), n)
		if parts != nil {
			p = parts[i]
		}
		recs[i] = Record{Partition: p, Key: []byte(ev.StreamKey), Value: b}
	}
	pos, err := e.log.Append(ctx, recs)
	if err != nil {
		return nil, unavailable(err)
	}
	return pos, nil
}

// AwaitTimeout bounds how long AwaitByWaiting waits for a decision: the
// projector answers or fails long before (WaitApplied returns an error
// once a partition is not served).
const AwaitTimeout = 2 * time.Minute

// AwaitByWaiting is AwaitDecision for a Projector that cannot hand its
// decisions over: a goroutine of its own waits with p.WaitApplied (for at
// most AwaitTimeout) and reads the decision with p.Decision.
func AwaitByWaiting(p Projector, pos Position, app, streamKey, user, clientOpID string, done func(d *pb.Decision, ok bool, err error)) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), AwaitTimeout)
		defer cancel()
		if err := p.WaitApplied(ctx, pos); err != nil {
			done(nil, false, err)
			return
		}
		done(p.Decision(app, streamKey, user, clientOpID))
	}()
}

// decided is the outcome of op, appended at pos, from what AwaitDecision
// handed over.
func decided(op *pb.Event, pos Position, d *pb.Decision, ok bool, err error) (*pb.Decision, error) {
	if err != nil {
		return nil, unavailable(err)
	}
	if !ok {
		return nil, Errorf(CodeInternal, "operation applied at %d/%d but no decision recorded", pos.Partition, pos.Offset)
	}
	return sameOp(d, op)
}

// sameOp returns d when it was recorded for the same kind of operation: a
// client op id re-used for another operation is a conflict, not a retry.
func sameOp(d *pb.Decision, op *pb.Event) (*pb.Decision, error) {
	if d.Kind != op.Kind {
		return nil, Errorf(CodeConflict, "client_op_id %s was already used for %s", op.ClientOpId, KindName(d.Kind))
	}
	return d, nil
}

// owns reports whether this process serves partition p (see Membership).
func (e *Engine) owns(p int32) error {
	if e.member == nil {
		return nil
	}
	return e.member.Owns(p)
}

// notOwned reports a partition another process applies: its policy copy
// is waited for and reported by its owner, not here.
func (e *Engine) notOwned(p int32) bool {
	return CodeOf(e.owns(p)) == CodeNotOwner
}

// setPolicy appends one POLICY_SET copy to every partition, so that every
// partition applies the change at a fixed position of its own order.
//
// Partition 0 decides versions: the version is the newest applied plus one
// (under a lock in this process), the copy for partition 0 is appended
// first, and the other copies only once partition 0's projection accepted
// it. Partition 0 applies in log order, so of two deciders racing for one
// version (two processes during a rebalance) exactly one is accepted, and
// every copy of a version carries the same policy: each partition keeps the
// highest version it has seen, whatever order copies arrive in. Only the
// owner of partition 0 may decide (Membership).
func (e *Engine) setPolicy(ctx context.Context, op *pb.Event) (*pb.Decision, error) {
	if err := e.owns(0); err != nil {
		return nil, err
	}
	e.policyMu.Lock()
	defer e.policyMu.Unlock()
	n := e.log.Partitions()
	first := PolicyStream(op.App, 0)
	if d, ok, err := e.proj.Decision(op.App, first, op.Actor.User, op.ClientOpId); err != nil {
		return nil, unavailable(err)
	} else if ok {
		if _, err := sameOp(d, op); err != nil {
			return nil, err
		}
		if d.Code != int32(CodeOK) {
			return d, nil // refused on partition 0: no copies were appended
		}
		return e.policyDecision(op)
	}
	cur, err := e.proj.Policy(op.App)
	if err != nil {
		return nil, unavailable(err)
	}
	version := cur.GetVersion() + 1
	evs := make([]*pb.Event, n)
	parts := make([]int32, n)
	now := e.now().UnixMilli()
	for p := int32(0); p < n; p++ {
		stream := PolicyStream(op.App, p)
		ev := proto.Clone(op).(*pb.Event)
		ev.SchemaVersion = SchemaVersion
		ev.StreamKey = stream
		ev.EventId = EventID(first, op.Actor.User, op.ClientOpId)
		ev.TimeUnixMs = now
		ps := ev.GetPolicySet()
		ps.Version, ps.Partition, ps.Partitions = version, p, n
		evs[p], parts[p] = ev, p
	}
	pos, err := e.append(ctx, evs[:1], parts[:1])
	if err != nil {
		return nil, err
	}
	if err := e.proj.WaitApplied(ctx, pos[0]); err != nil {
		return nil, unavailable(err)
	}
	d, ok, err := e.proj.Decision(op.App, first, op.Actor.User, op.ClientOpId)
	if err != nil {
		return nil, unavailable(err)
	}
	if !ok {
		return nil, Errorf(CodeInternal, "policy change applied at 0/%d but no decision recorded", pos[0].Offset)
	}
	if d.Code != int32(CodeOK) || n == 1 {
		// Another decider took this version first: nothing else is appended.
		return sameOp(d, op)
	}
	rest, err := e.append(ctx, evs[1:], parts[1:])
	if err != nil {
		return nil, err
	}
	for _, p := range rest {
		if e.notOwned(p.Partition) {
			continue
		}
		if err := e.proj.WaitApplied(ctx, p); err != nil {
			return nil, unavailable(err)
		}
	}
	return e.policyDecision(op)
}

// policyDecision merges the per-partition decisions of a policy change: the
// first partition's decision, with the sessions ended on every partition
// this process owns (on the others, their owners end them).
func (e *Engine) policyDecision(op *pb.Event) (*pb.Decision, error) {
	var out *pb.Decision
	for p := int32(0); p < e.log.Partitions(); p++ {
		if p > 0 && e.notOwned(p) {
			continue
		}
		d, ok, err := e.proj.Decision(op.App, PolicyStream(op.App, p), op.Actor.User, op.ClientOpId)
		if err != nil {
			return nil, unavailable(err)
		}
		if !ok {
			// A partition without its copy: an earlier attempt failed part-way
			// (possible on Kafka, where a multi-partition append is not atomic).
			return nil, Errorf(CodeUnavailable, "policy change %s is incomplete on partition %d; retry with a new client_op_id", op.ClientOpId, p)
		}
		if out == nil {
			out = proto.Clone(d).(*pb.Decision)
			continue
		}
		out.Ended = append(out.Ended, d.Ended...)
	}
	return out, nil
}

func unavailable(err error) error {
	var ce *Error
	if errors.As(err, &ce) {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return &Error{Code: CodeUnavailable, Message: fmt.Sprint(err), Err: err}
}

// Package forward lets a process submit an operation whose decision stream
// is owned by another process of the deployment (owned mode, several
// processes on one Kafka topic). A device connects to its user's owner, but
// a group's, a chatroom's or the policy's stream may be decided elsewhere:
// the local engine answers 1018 (engine.CodeNotOwner) and Submitter sends
// the operation, once, to the owner's POST /v1/internal/operations.
//
// It is its own package, not part of adapters/node, because both ends use
// it: the forwarding Submitter here, and the receiving route in restapi,
// which marks its context (Mark) so that a forwarded operation is never
// forwarded again. node stays free of HTTP; restapi stays free of node.
package forward

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/encoding/protojson"
)

// Path is the owner's route that takes a forwarded operation.
const Path = "/v1/internal/operations"

// Header marks a forwarded request ("1"). The receiving route never
// forwards (see Mark); the header tells logs and proxies what it is.
const Header = "X-Mdsync-Forwarded"

// Limits.
const (
	// MaxResponseBytes bounds the owner's answer (a decision or an error).
	MaxResponseBytes = 1 << 20
	// DefaultTimeout bounds one forwarded request end to end.
	DefaultTimeout = 10 * time.Second
)

// Local is the engine this process runs (*engine.Engine): Submit returns
// the decision, or an *engine.Error; code 1018 when another process owns
// the operation's stream. Begin is the batch form (engine.Engine.Begin):
// it appends ops in slice order in one append and returns once they are
// durable, one Pending per op.
type Local interface {
	Submit(ctx context.Context, op *pb.Event) (*pb.Decision, error)
	Begin(ctx context.Context, ops []*pb.Event) []*engine.Pending
}

// Owner tells where an operation is decided (*node.Node implements it):
// local true here, else the owner's host:port ("" while nobody is known).
type Owner interface {
	OwnerOfOp(op *pb.Event) (addr string, local bool)
}

// Options configure a Submitter.
type Options struct {
	// Token is the admin bearer token every process of the deployment
	// shares (--admin-token): the owner's route accepts only it. Required.
	Token string
	// Client sends the requests. Default: an http.Client with Timeout.
	Client *http.Client
	// Timeout bounds one forwarded request. Default DefaultTimeout.
	Timeout time.Duration
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Submitter submits to the local engine and forwards what another process
// owns. It is safe for concurrent use.
type Submitter struct {
	local Local
	owner Owner
	opts  Options
}

// New wraps local. On a node that owns every partition the engine never
// answers 1018, so the wrapper only passes through.
func New(local Local, owner Owner, opts Options) (*Submitter, error) {
	if local == nil || owner == nil {
		return nil, errors.New("forward: local and owner are required")
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Submitter{local: local, owner: owner, opts: opts}, nil
}

// withDefaults checks o and fills in its defaults (for New and NewReads).
func (o Options) withDefaults() (Options, error) {
	if o.Token == "" {
		return o, errors.New("forward: Options.Token is required")
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Client == nil {
		o.Client = &http.Client{Timeout: o.Timeout}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

type markKey struct{}

// Mark returns ctx for submitting an operation that was forwarded here:
// a Submitter given it never forwards again (one hop), so an owner that
// moved meanwhile answers 1018 instead of starting a loop.
func Mark(ctx context.Context) context.Context { return context.WithValue(ctx, markKey{}, true) }

// ActorCheckedHeader ("1") tells the owner that the forwarding process found
// the operation's actor active on the actor's own partition, which the owner
// may not serve (engine.ActorWasChecked); the receiving route then submits
// with engine.ActorChecked. Only the deployment's processes reach that route.
const ActorCheckedHeader = "X-Mdsync-Actor-Checked"

func marked(ctx context.Context) bool { v, _ := ctx.Value(markKey{}).(bool); return v }

// Submit submits op locally; when the local engine answers 1018 and the
// owner of op's stream is another known process, it returns that
// process's decision (or its coded error) instead. The actor is sent as
// is. A retry with the same client_op_id is deduplicated by the owner's
// engine, so forwarding twice after a lost answer is safe.
func (s *Submitter) Submit(ctx context.Context, op *pb.Event) (*pb.Decision, error) {
	d, err := s.local.Submit(ctx, op)
	if engine.CodeOf(err) != engine.CodeNotOwner || marked(ctx) {
		return d, err
	}
	addr, local := s.owner.OwnerOfOp(op)
	if local || addr == "" {
		return d, err
	}
	return s.forward(ctx, addr, op, engine.ActorWasChecked(err))
}

var marshal = protojson.MarshalOptions{UseProtoNames: true}

// forward posts op to addr's internal route and decodes its answer.
func (s *Submitter) forward(ctx context.Context, addr string, op *pb.Event, actorChecked bool) (*pb.Decision, error) {
	body, err := marshal.Marshal(op)
	if err != nil {
		return nil, engine.Errorf(engine.CodeInternal, "forward: encode: %v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+Path, bytes.NewReader(body))
	if err != nil {
		return nil, engine.Errorf(engine.CodeInternal, "forward to %s: %v", addr, err)
	}
	req.Header.Set("Authorization", "Bearer "+s.opts.Token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(Header, "1")
	if actorChecked {
		req.Header.Set(ActorCheckedHeader, "1")
	}
	resp, err := s.opts.Client.Do(req)
	if err != nil {
		// The owner may have decided it: a retry with the same client op
		// id returns that decision.
		return nil, engine.Errorf(engine.CodeUnavailable, "forward to the owner %s: %v; retry", addr, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes+1))
	if err != nil {
		return nil, engine.Errorf(engine.CodeUnavailable, "forward to the owner %s: reading the answer: %v; retry", addr, err)
	}
	if len(out) > MaxResponseBytes {
		return nil, engine.Errorf(engine.CodeUnavailable, "forward to the owner %s: answer exceeds %d bytes", addr, MaxResponseBytes)
	}
	if resp.StatusCode == http.StatusOK {
		d := &pb.Decision{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(out, d); err != nil {
			return nil, engine.Errorf(engine.CodeUnavailable, "forward to the owner %s: undecodable decision: %v", addr, err)
		}
		return d, nil
	}
	var e struct {
		Code         int32  `json:"code"`
		Message      string `json:"message"`
		RetryAfterMs int64  `json:"retry_after_ms"`
	}
	if json.Unmarshal(out, &e) != nil || e.Code == 0 {
		return nil, engine.Errorf(engine.CodeUnavailable, "forward to the owner %s: status %d: %.200q", addr, resp.StatusCode, out)
	}
	if e.Code == int32(engine.CodeUnauthenticated) {
		// Not the device's fault: the processes disagree on the token.
		s.opts.Logger.Error("forward: the owner refused the cluster credential; do all processes share --admin-token?", "owner", addr)
		return nil, engine.Errorf(engine.CodeUnavailable, "forward to the owner %s: cluster credential refused", addr)
	}
	// The owner's refusal is passed on whole: a 1019 keeps the owner's
	// retry_after_ms, the only measure of when the owner can take it.
	refusal := engine.Errorf(engine.Code(e.Code), "%s", e.Message)
	if e.RetryAfterMs > 0 {
		refusal.RetryAfter = min(time.Duration(e.RetryAfterMs)*time.Millisecond, maxRetryAfter)
	}
	return nil, refusal
}

// maxRetryAfter bounds the delay an owner's answer can ask for: a bad or
// hostile answer must not park a device for long (the engine's own
// refusals stay within 5 s).
const maxRetryAfter = 5 * time.Second

// Begin is engine.Engine.Begin across processes, keeping the ops' order:
// it walks ops in order, hands each run of ops decided here (Owner says
// local) to the local engine's Begin, and submits every other op on its own
// with Submit (the local engine first, then, on 1018, the owner) before
// going on, so an op is appended only after every op before it is durable.
// A forwarded op's Pending is already resolved (engine.Resolved). Ops of
// one run that the local engine still refuses with 1018 (ownership moved
// between the two looks) are answered 1018: the caller retries them.
func (s *Submitter) Begin(ctx context.Context, ops []*pb.Event) []*engine.Pending {
	if marked(ctx) {
		return s.local.Begin(ctx, ops)
	}
	out := make([]*engine.Pending, 0, len(ops))
	run := 0 // first op of the current local run
	for i, op := range ops {
		if _, local := s.owner.OwnerOfOp(op); local {
			continue
		}
		if run < i {
			out = append(out, s.local.Begin(ctx, ops[run:i])...)
		}
		out = append(out, engine.Resolved(s.Submit(ctx, op)))
		run = i + 1
	}
	if run < len(ops) {
		out = append(out, s.local.Begin(ctx, ops[run:])...)
	}
	return out
}

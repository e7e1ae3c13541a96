package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// runReplay is `mdsync replay [flags] [FILE]`: it reads operations as JSON
// lines (docs/operations.md), submits them one at a time through the engine
// on a fresh embedded log, and prints each decision, the final device table
// and the state digest as JSON lines on stdout.
func runReplay(args []string) error {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	cfg := replayConfig{}
	fs.StringVar(&cfg.Dir, "data", "", "keep the replayed log and projections in `DIR` (must not hold a log yet); default a temporary directory")
	parts := fs.Int("partitions", 1, "partitions of the replay log; with 1, offsets are one global sequence")
	fs.StringVar(&cfg.App, "app", "demo", "app of lines that name none")
	fs.BoolVar(&cfg.Verify, "verify", false, "rebuild the projections from the log and compare digests")
	fs.Int64Var(&cfg.At, "at", -1, "print the device table as of `OFFSET` (inclusive; per partition) instead of the final one")
	policyFile := fs.String("policy", "", "replay a second time under the policy in `FILE` and print how sessions ended differently")
	fs.BoolVar(&cfg.KeepGoing, "keep-going", true, "report an invalid line and go on; false stops at the first one")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: mdsync replay [flags] [FILE|-]\n\nReads operations as JSON lines (docs/operations.md) from FILE or stdin.\n\nflags:")
		fs.PrintDefaults()
	}
	// Flags may come before or after the file name.
	var files []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		files = append(files, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(files) > 1 {
		return fmt.Errorf("replay: one input file at most, got %d", len(files))
	}
	if *parts < 1 || *parts > 1024 {
		return fmt.Errorf("replay: --partitions %d is outside [1,1024]", *parts)
	}
	cfg.Partitions = int32(*parts)
	if *policyFile != "" {
		b, err := os.ReadFile(*policyFile)
		if err != nil {
			return fmt.Errorf("replay: --policy: %w", err)
		}
		if cfg.Policy, err = parsePolicyFile(b, cfg.App); err != nil {
			return fmt.Errorf("replay: --policy %s: %w", *policyFile, err)
		}
	}
	in := io.Reader(os.Stdin)
	if len(files) == 1 && files[0] != "-" {
		f, err := os.Open(files[0])
		if err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		defer f.Close()
		in = f
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	out := bufio.NewWriter(os.Stdout)
	err := replay(ctx, cfg, in, out)
	if ferr := out.Flush(); err == nil {
		err = ferr
	}
	return err
}

// replayConfig is runReplay's flags, so tests can call replay directly.
type replayConfig struct {
	Dir        string // "" = a temporary directory, removed afterwards
	TempDir    string // parent of temporary directories ("" = os.TempDir)
	Partitions int32
	App        string
	Verify     bool
	At         int64 // < 0: off
	Policy     *whatIfPolicy
	KeepGoing  bool
}

// errInvalidLines is returned (wrapped) when input lines were refused by
// parsing or validation, so the exit status is non-zero.
var errInvalidLines = errors.New("invalid input lines")

// errDigestMismatch is returned when --verify finds the rebuilt state differs.
var errDigestMismatch = errors.New("rebuilt projections differ from the live ones")

// replay runs the whole command over in, writing JSON lines to out.
func replay(ctx context.Context, cfg replayConfig, in io.Reader, out io.Writer) error {
	if cfg.Partitions < 1 {
		cfg.Partitions = 1
	}
	if cfg.App == "" {
		cfg.App = "demo"
	}
	lines, err := readOps(in, cfg.App)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false) // device names and extensions are shown as given
	emit := func(v any) error { return enc.Encode(v) }

	var tmp []string
	defer func() {
		for _, d := range tmp {
			os.RemoveAll(d)
		}
	}()
	tempDir := func() (string, error) {
		d, err := os.MkdirTemp(cfg.TempDir, "mdsync-replay-")
		if err == nil {
			tmp = append(tmp, d)
		}
		return d, err
	}

	dir := cfg.Dir
	if dir == "" {
		if dir, err = tempDir(); err != nil {
			return err
		}
	}
	r, err := openReplayer(ctx, dir, cfg.Partitions)
	if err != nil {
		return err
	}
	defer r.close()

	invalid := 0
	var results []opResult
	stopped := false
	for _, l := range lines {
		res := opResult{line: l}
		if l.err == nil {
			res.d, res.err = r.submit(l.ev, l.timeMs)
			if fatal(r.ctx, res.err) {
				return fmt.Errorf("replay: line %d: %w", l.n, res.err)
			}
		} else {
			res.err = l.err
		}
		results = append(results, res)
		if res.err != nil {
			if !refusedByRule(res.err) {
				invalid++
			}
			if err := emit(errorRow(l, res.err)); err != nil {
				return err
			}
			if !cfg.KeepGoing {
				stopped = true
				break
			}
			continue
		}
		if err := emit(decisionRow(l, res.d)); err != nil {
			return err
		}
	}
	if stopped {
		return fmt.Errorf("replay: %w: stopped at the first (--keep-going=false)", errInvalidLines)
	}

	if err := r.settle(); err != nil {
		return err
	}
	// The device table and digest: the final state, or a store caught up
	// to --at from the same log.
	view := r.n.Store
	var at *int64
	if cfg.At >= 0 {
		d, err := tempDir()
		if err != nil {
			return err
		}
		st, err := storeAt(ctx, r.n.Log, d, cfg.At)
		if err != nil {
			return err
		}
		defer st.Close()
		view, at = st, &cfg.At
	}
	if err := emitDevices(view, emit); err != nil {
		return err
	}
	digest, err := view.Digest()
	if err != nil {
		return err
	}
	if err := emit(digestRow{Type: "digest", Digest: digest, At: at}); err != nil {
		return err
	}

	var verifyErr error
	if cfg.Verify {
		live, err := r.n.Store.Digest()
		if err != nil {
			return err
		}
		d, err := tempDir()
		if err != nil {
			return err
		}
		rb, err := projections.Rebuild(ctx, r.n.Log, projections.Options{Dir: d})
		if err != nil {
			return fmt.Errorf("replay: rebuild: %w", err)
		}
		rebuilt, err := rb.Digest()
		rb.Close()
		if err != nil {
			return err
		}
		if err := emit(verifyRow{Type: "verify", Live: live, Rebuild: rebuilt, Equal: live == rebuilt}); err != nil {
			return err
		}
		if live != rebuilt {
			verifyErr = fmt.Errorf("replay: %w: live %s, rebuild %s", errDigestMismatch, live, rebuilt)
		}
	}

	if cfg.Policy != nil {
		d, err := tempDir()
		if err != nil {
			return err
		}
		if err := whatIf(ctx, d, cfg, lines, results, emit); err != nil {
			return err
		}
	}
	if verifyErr != nil {
		return verifyErr
	}
	if invalid > 0 {
		return fmt.Errorf("replay: %w: %d", errInvalidLines, invalid)
	}
	return nil
}

// fatal reports a Submit error that is about the replay itself (the log or
// projections failed, or the run was interrupted), not about the line.
func fatal(ctx context.Context, err error) bool {
	if err == nil {
		return false
	}
	c := engine.CodeOf(err)
	return ctx.Err() != nil || c == engine.CodeUnavailable || c == engine.CodeInternal
}

// refusedByRule reports a refusal the engine decided before the append
// because the actor's session had ended or never existed (an operation
// decided on a group's or a chatroom's stream, engine.CheckActor): the line
// was valid, the history simply says no, as a decision would.
func refusedByRule(err error) bool {
	switch engine.CodeOf(err) {
	case engine.CodeLoginOtherDevice, engine.CodeUserRemoved, engine.CodePasswordChanged,
		engine.CodeKickedByOtherDevice, engine.CodeNotFound:
		return true
	}
	return false
}

// opResult is what one input line produced in a run.
type opResult struct {
	line opLine
	d    *pb.Decision
	err  error
}

// replayer is a node on a fresh log whose clock the caller sets before each
// Submit, so event times (and so the digest) depend only on the input.
type replayer struct {
	n     *node.Node
	clock atomic.Int64
	// ctx is cancelled, with the projector's error as its cause, when the
	// node's projector or relay stops: Submit waits for the projection and
	// would otherwise wait forever.
	ctx  context.Context
	stop context.CancelFunc
}

func openReplayer(ctx context.Context, dir string, partitions int32) (*replayer, error) {
	r := &replayer{}
	n, err := node.New(ctx, node.Options{
		Dir: dir, Partitions: partitions,
		Now: func() time.Time { return time.UnixMilli(r.clock.Load()) },
	})
	if err != nil {
		return nil, fmt.Errorf("replay: open %s: %w", dir, err)
	}
	r.n = n
	// Offsets in the output, --at and --verify all assume the log holds
	// exactly this input.
	for p := int32(0); p < n.Log.Partitions(); p++ {
		end, err := n.Log.End(ctx, p)
		if err != nil {
			n.Close()
			return nil, err
		}
		if end != 0 {
			n.Close()
			return nil, fmt.Errorf("replay: %s already holds a log (partition %d has %d records); replay needs a fresh directory", dir, p, end)
		}
	}
	rctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	r.ctx, r.stop = rctx, func() { close(done); cancel(nil) }
	go func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := n.Err(); err != nil {
					cancel(fmt.Errorf("projector stopped: %w", err))
					return
				}
			}
		}
	}()
	return r, nil
}

// submit submits one operation at a time, so log order is input order.
func (r *replayer) submit(ev *pb.Event, timeMs int64) (*pb.Decision, error) {
	r.clock.Store(timeMs)
	d, err := r.n.Engine.Submit(r.ctx, ev)
	if r.ctx.Err() != nil {
		return nil, fmt.Errorf("%w (%v)", context.Cause(r.ctx), err)
	}
	return d, err
}

func (r *replayer) close() error {
	r.stop()
	return r.n.Close()
}

// settle waits until the node's relay has appended every fan-out copy and
// the projections applied them. With one partition copies are applied
// inline and this returns at once; with more, the relay appends DELIVER
// records after Submit returned, and the digest, --at and --verify must
// see a log that no longer grows.
func (r *replayer) settle() error {
	ctx := r.ctx
	lg, st := r.n.Log, r.n.Store
	for {
		quiet := true
		for p := int32(0); p < lg.Partitions(); p++ {
			end, err := lg.End(ctx, p)
			if err != nil {
				return err
			}
			if st.Checkpoint(p).NextOffset < end || st.RelayPosition(p) < end {
				quiet = false
			}
		}
		if quiet {
			return nil
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// storeAt builds a store from the log up to and including offset at of each
// partition (clamped to the partition's end).
func storeAt(ctx context.Context, lg engine.Log, dir string, at int64) (*projections.Store, error) {
	st, err := projections.Open(projections.Options{Dir: dir, Partitions: lg.Partitions()})
	if err != nil {
		return nil, err
	}
	ends := make([]int64, lg.Partitions())
	for p := range ends {
		end, err := lg.End(ctx, int32(p))
		if err != nil {
			st.Close()
			return nil, err
		}
		ends[p] = min(at+1, end)
	}
	if err := st.CatchUpTo(ctx, lg, ends); err != nil {
		st.Close()
		return nil, fmt.Errorf("replay: --at %d: %w", at, err)
	}
	return st, nil
}

func emitDevices(st *projections.Store, emit func(any) error) error {
	table, err := st.DeviceTable()
	if err != nil {
		return err
	}
	for _, u := range table {
		for _, s := range u.Sessions {
			if err := emit(deviceRow{
				Type: "device", App: u.App, User: u.User, LoginID: s.LoginId, Platform: s.Platform,
				DeviceName: s.DeviceName, Extension: s.Extension,
				LoginPartition: s.LoginPartition, LoginOffset: s.LoginOffset, LoginTimeMs: s.LoginTimeUnixMs,
				LastLoginOffset: s.LastLoginOffset, LastLoginTimeMs: s.LastLoginTimeUnixMs,
			}); err != nil {
				return err
			}
		}
	}
	return nil
}

// ---- what-if ----

// whatIfPolicy is a --policy file: a policy_set operation, and whether it
// named its app (otherwise it applies to every app of the input).
type whatIfPolicy struct {
	line     opLine
	ownApp   bool
	app      string
	settings *pb.PolicySet
}

func parsePolicyFile(b []byte, defApp string) (*whatIfPolicy, error) {
	b = bytes.TrimSpace(b)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, engine.Errorf(engine.CodeInvalidArgument, "not a JSON object: %v", err)
	}
	// The file is a policy_set line; "op" may be left out.
	if _, ok := raw["op"]; !ok {
		raw["op"] = json.RawMessage(`"policy_set"`)
	}
	b, _ = json.Marshal(raw)
	l := parseOp(0, b, defApp)
	if l.err != nil {
		return nil, l.err
	}
	if l.ev.Kind != pb.Kind_KIND_POLICY_SET {
		return nil, engine.Errorf(engine.CodeInvalidArgument, "op is %s, want policy_set", l.op)
	}
	if err := engine.Validate(l.ev); err != nil {
		return nil, err
	}
	_, own := raw["app"]
	return &whatIfPolicy{line: l, ownApp: own, app: l.ev.App, settings: l.ev.GetPolicySet()}, nil
}

func (w *whatIfPolicy) covers(app string) bool { return !w.ownApp || app == w.app }

// whatIf replays the input again into a fresh log under cfg.Policy, set
// before the first line for every app it covers, with the input's own
// policy_set lines for those apps dropped, and prints each line whose
// outcome differs, then a summary.
func whatIf(ctx context.Context, dir string, cfg replayConfig, lines []opLine, orig []opResult, emit func(any) error) error {
	r, err := openReplayer(ctx, dir, cfg.Partitions)
	if err != nil {
		return err
	}
	defer r.close()

	var apps []string
	if cfg.Policy.ownApp {
		apps = []string{cfg.Policy.app}
	} else {
		for _, l := range lines {
			if l.err == nil && !slices.Contains(apps, l.ev.App) {
				apps = append(apps, l.ev.App)
			}
		}
		sort.Strings(apps)
	}
	for _, app := range apps {
		ev := &pb.Event{
			App: app, ClientOpId: "whatif-policy", Kind: pb.Kind_KIND_POLICY_SET,
			Actor:   &pb.Actor{User: "admin", Admin: true},
			Payload: &pb.Event_PolicySet{PolicySet: cfg.Policy.settings},
		}
		if d, err := r.submit(ev, 0); err != nil {
			return fmt.Errorf("replay: --policy for app %s: %w", app, err)
		} else if d.Code != 0 {
			return fmt.Errorf("replay: --policy for app %s refused: %d %s", app, d.Code, d.Message)
		}
	}

	sum := whatIfSummary{Type: "whatif_summary", Apps: apps}
	for _, o := range orig {
		l := o.line
		if l.err != nil {
			continue // refused by parsing or validation in both runs
		}
		row := whatIfRow{Type: "whatif", Line: l.n, Op: l.op, App: l.ev.App, User: l.ev.Actor.User}
		row.Code, row.Ended = outcome(o)
		var alt opResult
		if l.ev.Kind == pb.Kind_KIND_POLICY_SET && cfg.Policy.covers(l.ev.App) {
			row.Dropped = true
			row.WhatIfEnded = []endedRow{}
		} else {
			alt = opResult{line: l}
			alt.d, alt.err = r.submit(l.ev, l.timeMs)
			if fatal(r.ctx, alt.err) {
				return fmt.Errorf("replay: what-if line %d: %w", l.n, alt.err)
			}
			row.WhatIfCode, row.WhatIfEnded = outcome(alt)
		}
		sum.Evictions += evictions(row.Ended)
		sum.WhatIfEvictions += evictions(row.WhatIfEnded)
		if row.Code != 0 {
			sum.Refused++
		}
		if !row.Dropped && row.WhatIfCode != 0 {
			sum.WhatIfRefused++
		}
		if row.Dropped || row.Code != row.WhatIfCode || !sameEnded(row.Ended, row.WhatIfEnded) {
			sum.Lines++
			if err := emit(row); err != nil {
				return err
			}
		}
	}
	return emit(sum)
}

func outcome(r opResult) (int32, []endedRow) {
	if r.err != nil {
		return int32(engine.CodeOf(r.err)), []endedRow{}
	}
	return r.d.Code, endedRows(r.d.App, r.d.Ended)
}

// evictions counts sessions ended by something other than the device's
// own logout.
func evictions(es []endedRow) int {
	n := 0
	for _, e := range es {
		if e.Reason != reasonName(pb.Reason_REASON_LOGOUT) {
			n++
		}
	}
	return n
}

// sameEnded compares who was ended, how and by whom, not where: offsets and
// policy versions shift between the runs by the injected and dropped lines.
func sameEnded(a, b []endedRow) bool {
	key := func(e endedRow) string {
		return fmt.Sprintf("%s\x00%s\x00%s\x00%d\x00%s\x00%s", e.App, e.User, e.LoginID, e.Code, e.Reason, e.ByLoginID)
	}
	return slices.EqualFunc(a, b, func(x, y endedRow) bool { return key(x) == key(y) })
}

// ---- input ----

// opLine is one parsed input line: the operation, or why it was refused.
type opLine struct {
	n      int // 1-based line number in the input
	op     string
	ev     *pb.Event
	timeMs int64
	err    error
}

// maxLineBytes bounds one input line. An event is at most
// engine.MaxEventBytes encoded; JSON escaping can grow text up to 6x.
const maxLineBytes = 6*engine.MaxEventBytes + 4096

// readOps reads every line first: the what-if run needs the input's apps,
// and errors are reported in line order either way. Blank lines are skipped
// but counted, so line numbers match an editor's.
func readOps(in io.Reader, defApp string) ([]opLine, error) {
	br := bufio.NewReaderSize(in, 64<<10)
	var out []opLine
	for n := 1; ; n++ {
		b, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(b)) > 0 {
			if len(b) > maxLineBytes {
				out = append(out, opLine{n: n, err: engine.Errorf(engine.CodeTooLarge, "line is %d bytes, limit %d", len(b), maxLineBytes)})
			} else {
				out = append(out, parseOp(n, b, defApp))
			}
		}
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("replay: read line %d: %w", n, err)
		}
	}
}

// opJSON is the input schema of docs/operations.md. Which fields an op may
// carry is in shapeFields; the engine validates values and limits.
type opJSON struct {
	Op         string `json:"op"`
	App        string `json:"app"`
	User       string `json:"user"`
	ClientOpID string `json:"client_op_id"`
	TimeMs     *int64 `json:"time_ms"`
	Admin      bool   `json:"admin"`
	LoginID    string `json:"login_id"`

	Platform   int32  `json:"platform"`
	DeviceName string `json:"device_name"`
	Extension  string `json:"extension"`
	// auto_login is a bool on login and a policy name on policy_set.
	AutoLogin json.RawMessage `json:"auto_login"`
	ByLoginID string          `json:"by_login_id"`

	Mode         string           `json:"mode"`
	DefaultLimit *int32           `json:"default_limit"`
	Limits       map[string]int32 `json:"limits"`

	ChatType       chatType          `json:"chat_type"`
	To             string            `json:"to"`
	ClientMsgID    string            `json:"client_msg_id"`
	ContentType    string            `json:"content_type"`
	Body           string            `json:"body"`
	GroupID        string            `json:"group_id"`
	ConversationID string            `json:"conversation_id"`
	MessageID      string            `json:"message_id"`
	Mark           int32             `json:"mark"`
	Contact        string            `json:"contact"`
	Ext            string            `json:"ext"`
	Users          []string          `json:"users"`
	Name           string            `json:"name"`
	Reason         string            `json:"reason"`
	Attributes     map[string]string `json:"attributes"`
	MuteMs         int64             `json:"mute_ms"`
	ThreadID       string            `json:"thread_id"`
	RoomID         string            `json:"room_id"`

	// Fields of `mdsync export` lines (docs/events.md): body_base64 is a
	// body that is not UTF-8, timeline_* are policy retention settings.
	BodyBase64         string `json:"body_base64"`
	TimelineMaxEntries int64  `json:"timeline_max_entries"`
	TimelineMaxAgeMs   int64  `json:"timeline_max_age_ms"`
	// Where an exported event sat in the log; read and ignored, since the
	// replay appends to a fresh log.
	Partition     json.RawMessage `json:"partition"`
	Offset        json.RawMessage `json:"offset"`
	EventID       json.RawMessage `json:"event_id"`
	SchemaVersion json.RawMessage `json:"schema_version"`
	PolicyVersion json.RawMessage `json:"policy_version"`
}

// commonFields are accepted on every op.
var commonFields = []string{"op", "app", "user", "client_op_id", "time_ms", "admin",
	// export lines carry their log position; ignored (see opJSON)
	"partition", "offset", "event_id", "schema_version", "policy_version"}

// shapeFields lists, per payload shape, the fields an op of that shape takes.
var shapeFields = map[string][]string{
	"login":        {"login_id", "platform", "device_name", "extension", "auto_login"},
	"logout":       {"login_id"},
	"kick":         {"login_id", "by_login_id"},
	"empty":        {"login_id"},
	"policy":       {"mode", "default_limit", "limits", "auto_login", "timeline_max_entries", "timeline_max_age_ms"},
	"message":      {"login_id", "chat_type", "to", "client_msg_id", "content_type", "body", "body_base64", "group_id"},
	"receipt":      {"login_id", "chat_type", "conversation_id", "message_id"},
	"conversation": {"login_id", "chat_type", "conversation_id", "mark"},
	"contact":      {"login_id", "contact", "ext"},
	"group":        {"login_id", "group_id", "users", "name", "reason", "attributes", "mute_ms"},
	"thread":       {"login_id", "thread_id", "group_id", "name", "users", "message_id"},
	"chatroom":     {"login_id", "room_id"},
}

// shapeOf maps a kind to its payload shape (engine keeps its own mapping
// unexported; this one is checked against every kind by the tests).
func shapeOf(k pb.Kind) string {
	switch k {
	case pb.Kind_KIND_LOGIN:
		return "login"
	case pb.Kind_KIND_LOGOUT:
		return "logout"
	case pb.Kind_KIND_KICK_DEVICE:
		return "kick"
	case pb.Kind_KIND_KICK_ALL_DEVICES, pb.Kind_KIND_PASSWORD_CHANGE, pb.Kind_KIND_USER_REMOVE:
		return "empty"
	case pb.Kind_KIND_POLICY_SET:
		return "policy"
	case pb.Kind_KIND_MESSAGE_SEND:
		return "message"
	case pb.Kind_KIND_DELIVERY_RECEIPT, pb.Kind_KIND_READ_RECEIPT:
		return "receipt"
	case pb.Kind_KIND_CONVERSATION_READ:
		return "conversation"
	}
	ki, _ := engine.LookupKind(k)
	switch ki.Category {
	case engine.CatContact:
		return "contact"
	case engine.CatGroup:
		return "group"
	case engine.CatThread:
		return "thread"
	case engine.CatConversation:
		return "conversation"
	case engine.CatChatroom:
		return "chatroom"
	}
	return ""
}

func invalid(format string, args ...any) error {
	return engine.Errorf(engine.CodeInvalidArgument, format, args...)
}

// parseOp turns one JSON line into an event. Field values are checked by
// engine.Validate on Submit; here only the shape of the line is checked.
func parseOp(n int, b []byte, defApp string) opLine {
	l := opLine{n: n}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		l.err = invalid("not a JSON object: %v", err)
		return l
	}
	if v, ok := raw["op"]; !ok {
		l.err = engine.Errorf(engine.CodeMissingField, "op is required")
		return l
	} else if err := json.Unmarshal(v, &l.op); err != nil {
		l.err = invalid("op is not a string")
		return l
	}
	kind, ok := engine.KindByName(l.op)
	if !ok {
		l.err = engine.UnknownKind(strconv.Quote(l.op)) // as the WebSocket and REST say it
		return l
	}
	l.op = engine.KindName(kind) // "KIND_LOGIN" is accepted and reported as "login"
	shape := shapeOf(kind)
	if ki, _ := engine.LookupKind(kind); ki.Category == engine.CatDerived {
		l.err = engine.Errorf(engine.CodeForbidden, "op %s is derived by mdsync and cannot be submitted", l.op)
		return l
	} else if shape == "" {
		l.err = engine.Errorf(engine.CodeUnknownKind, "op %s has no JSON mapping in this build", l.op)
		return l
	}
	allowed := append(slices.Clone(commonFields), shapeFields[shape]...)
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys) // report the same field first every run
	for _, k := range keys {
		if slices.Contains(allowed, k) {
			continue
		}
		if knownField(k) {
			l.err = invalid("field %q is not used by op %s", k, l.op)
		} else {
			l.err = invalid("unknown field %q", k)
		}
		return l
	}
	var j opJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		l.err = invalid("%v", strings.TrimPrefix(err.Error(), "json: "))
		return l
	}
	if _, err := dec.Token(); err != io.EOF {
		l.err = invalid("trailing data after the JSON object")
		return l
	}
	l.timeMs = int64(n) * 1000
	if j.TimeMs != nil {
		if *j.TimeMs < 0 {
			l.err = invalid("time_ms %d is negative", *j.TimeMs)
			return l
		}
		l.timeMs = *j.TimeMs
	}
	if j.App == "" {
		j.App = defApp
	}
	if j.ClientOpID == "" {
		j.ClientOpID = "line-" + strconv.Itoa(n)
	}
	if kind == pb.Kind_KIND_POLICY_SET && j.User == "" {
		// A policy is an admin operation; lines need not invent an actor.
		j.User, j.Admin = "admin", true
	}
	ev := &pb.Event{
		App: j.App, ClientOpId: j.ClientOpID, Kind: kind,
		Actor: &pb.Actor{User: j.User, LoginId: j.LoginID, Admin: j.Admin},
	}
	if err := fillPayload(ev, shape, &j); err != nil {
		l.err = err
		return l
	}
	l.ev = ev
	return l
}

func knownField(k string) bool {
	if slices.Contains(commonFields, k) {
		return true
	}
	for _, fs := range shapeFields {
		if slices.Contains(fs, k) {
			return true
		}
	}
	return false
}

func fillPayload(ev *pb.Event, shape string, j *opJSON) error {
	switch shape {
	case "login":
		var auto bool
		if len(j.AutoLogin) > 0 {
			if err := json.Unmarshal(j.AutoLogin, &auto); err != nil {
				return invalid("auto_login of a login is true or false")
			}
		}
		ev.Payload = &pb.Event_Login{Login: &pb.Login{
			Platform: j.Platform, LoginId: j.LoginID, DeviceName: j.DeviceName,
			Extension: j.Extension, AutoLogin: auto,
		}}
	case "logout", "empty":
		// login_id is the acting device (required by logout).
	case "kick":
		ev.Actor.LoginId = j.ByLoginID
		ev.Payload = &pb.Event_KickDevice{KickDevice: &pb.KickDevice{LoginId: j.LoginID}}
	case "policy":
		ps, err := policyOf(j)
		if err != nil {
			return err
		}
		ev.Payload = &pb.Event_PolicySet{PolicySet: ps}
	case "message":
		body := []byte(j.Body)
		if j.BodyBase64 != "" {
			var err error
			if j.Body != "" {
				return invalid("body and body_base64 are exclusive")
			}
			if body, err = base64.StdEncoding.DecodeString(j.BodyBase64); err != nil {
				return invalid("body_base64 is not base64: %v", err)
			}
		}
		ev.Payload = &pb.Event_Message{Message: &pb.MessageSend{
			ChatType: pb.ChatType(j.ChatType), To: j.To, ClientMsgId: j.ClientMsgID,
			ContentType: j.ContentType, Body: body, GroupId: j.GroupID,
		}}
	case "receipt":
		ev.Payload = &pb.Event_Receipt{Receipt: &pb.Receipt{
			ChatType: pb.ChatType(j.ChatType), ConversationId: j.ConversationID, MessageId: j.MessageID,
		}}
	case "conversation":
		ev.Payload = &pb.Event_Conversation{Conversation: &pb.ConversationRef{
			ChatType: pb.ChatType(j.ChatType), ConversationId: j.ConversationID, Mark: j.Mark,
		}}
	case "contact":
		ev.Payload = &pb.Event_Contact{Contact: &pb.ContactOp{User: j.Contact, Ext: j.Ext}}
	case "group":
		g := &pb.GroupOp{GroupId: j.GroupID, Users: j.Users, Name: j.Name, Reason: j.Reason, MuteMs: j.MuteMs}
		// The wire wants attributes sorted by key; a JSON object has no order.
		keys := make([]string, 0, len(j.Attributes))
		for k := range j.Attributes {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			g.Attributes = append(g.Attributes, &pb.Attribute{Key: k, Value: j.Attributes[k]})
		}
		ev.Payload = &pb.Event_Group{Group: g}
	case "thread":
		ev.Payload = &pb.Event_Thread{Thread: &pb.ThreadOp{
			ThreadId: j.ThreadID, GroupId: j.GroupID, Name: j.Name, Users: j.Users, MessageId: j.MessageID,
		}}
	case "chatroom":
		ev.Payload = &pb.Event_Chatroom{Chatroom: &pb.ChatroomOp{RoomId: j.RoomID}}
	default:
		return engine.Errorf(engine.CodeInternal, "op %s has no JSON mapping", engine.KindName(ev.Kind))
	}
	return nil
}

// policyOf builds a policy_set payload; unset fields take the defaults of
// engine.DefaultPolicy, so a line need only say what it changes.
func policyOf(j *opJSON) (*pb.PolicySet, error) {
	ps := &pb.PolicySet{
		Mode:         pb.PlatformMode_PLATFORM_MODE_MULTI,
		DefaultLimit: engine.DefaultPlatformLimit,
		AutoLogin:    pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST,
		// Retention: 0 is the default; the engine validates the range.
		TimelineMaxEntries: j.TimelineMaxEntries,
		TimelineMaxAgeMs:   j.TimelineMaxAgeMs,
	}
	switch j.Mode {
	case "", "multi":
	case "single":
		ps.Mode = pb.PlatformMode_PLATFORM_MODE_SINGLE
	default:
		return nil, invalid("mode %q is not multi or single", j.Mode)
	}
	if j.DefaultLimit != nil {
		ps.DefaultLimit = *j.DefaultLimit
	}
	if len(j.AutoLogin) > 0 {
		var s string
		if err := json.Unmarshal(j.AutoLogin, &s); err != nil {
			return nil, invalid("auto_login of a policy is \"kick_oldest\" or \"keep_current\"")
		}
		switch s {
		case "kick_oldest":
		case "keep_current":
			ps.AutoLogin = pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KEEP_CURRENT
		default:
			return nil, invalid("auto_login %q is not kick_oldest or keep_current", s)
		}
	}
	for k, v := range j.Limits {
		p, err := strconv.ParseInt(k, 10, 32)
		if err != nil {
			return nil, invalid("limits key %q is not a platform number", k)
		}
		ps.Limits = append(ps.Limits, &pb.PlatformLimit{Platform: int32(p), Limit: v})
	}
	// The wire wants limits sorted by platform; a JSON object has no order.
	slices.SortFunc(ps.Limits, func(a, b *pb.PlatformLimit) int { return int(a.Platform) - int(b.Platform) })
	return ps, nil
}

// chatType is a chat type in JSON: "user", "group", "chatroom", "thread",
// "self_device", or the enum's number.
type chatType pb.ChatType

func (c *chatType) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, ok := pb.ChatType_value["CHAT_TYPE_"+strings.ToUpper(s)]
		if !ok || v == 0 {
			return fmt.Errorf("chat_type %q is not user, group, chatroom, thread or self_device", s)
		}
		*c = chatType(v)
		return nil
	}
	var n int32
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("chat_type is a name or a number")
	}
	*c = chatType(n)
	return nil
}

// ---- output ----

type errorRowT struct {
	Type    string `json:"type"`
	Line    int    `json:"line"`
	Op      string `json:"op,omitempty"`
	Code    int32  `json:"code"`
	Message string `json:"message"`
}

type endedRow struct {
	App           string `json:"app"`
	User          string `json:"user"`
	LoginID       string `json:"login_id"`
	Platform      int32  `json:"platform"`
	DeviceName    string `json:"device_name"`
	Code          int32  `json:"code"`
	Reason        string `json:"reason"`
	ByLoginID     string `json:"by_login_id"`
	ByDeviceName  string `json:"by_device_name"`
	ByExtension   string `json:"by_extension"`
	PolicyVersion uint64 `json:"policy_version"`
	Partition     int32  `json:"partition"`
	Offset        int64  `json:"offset"`
}

type decisionRowT struct {
	Type          string     `json:"type"`
	Line          int        `json:"line"`
	Op            string     `json:"op"`
	App           string     `json:"app"`
	User          string     `json:"user"`
	ClientOpID    string     `json:"client_op_id"`
	Code          int32      `json:"code"`
	Message       string     `json:"message,omitempty"`
	Partition     int32      `json:"partition"`
	Offset        int64      `json:"offset"`
	PolicyVersion uint64     `json:"policy_version"`
	LoginID       string     `json:"login_id,omitempty"`
	Reconnect     bool       `json:"reconnect,omitempty"`
	Ended         []endedRow `json:"ended"`
}

type deviceRow struct {
	Type            string `json:"type"`
	App             string `json:"app"`
	User            string `json:"user"`
	LoginID         string `json:"login_id"`
	Platform        int32  `json:"platform"`
	DeviceName      string `json:"device_name"`
	Extension       string `json:"extension"`
	LoginPartition  int32  `json:"login_partition"`
	LoginOffset     int64  `json:"login_offset"`
	LoginTimeMs     int64  `json:"login_time_ms"`
	LastLoginOffset int64  `json:"last_login_offset"`
	LastLoginTimeMs int64  `json:"last_login_time_ms"`
}

type digestRow struct {
	Type   string `json:"type"`
	Digest string `json:"digest"`
	At     *int64 `json:"at,omitempty"`
}

type verifyRow struct {
	Type    string `json:"type"`
	Live    string `json:"live"`
	Rebuild string `json:"rebuild"`
	Equal   bool   `json:"equal"`
}

type whatIfRow struct {
	Type        string     `json:"type"`
	Line        int        `json:"line"`
	Op          string     `json:"op"`
	App         string     `json:"app"`
	User        string     `json:"user"`
	Dropped     bool       `json:"dropped,omitempty"`
	Code        int32      `json:"code"`
	WhatIfCode  int32      `json:"whatif_code"`
	Ended       []endedRow `json:"ended"`
	WhatIfEnded []endedRow `json:"whatif_ended"`
}

type whatIfSummary struct {
	Type            string   `json:"type"`
	Apps            []string `json:"apps"`
	Lines           int      `json:"lines"`
	Evictions       int      `json:"evictions"`
	WhatIfEvictions int      `json:"whatif_evictions"`
	Refused         int      `json:"refused"`
	WhatIfRefused   int      `json:"whatif_refused"`
}

func decisionRow(l opLine, d *pb.Decision) decisionRowT {
	return decisionRowT{
		Type: "decision", Line: l.n, Op: l.op, App: d.App, User: d.User, ClientOpID: d.ClientOpId,
		Code: d.Code, Message: d.Message, Partition: d.Partition, Offset: d.Offset,
		PolicyVersion: d.PolicyVersion, LoginID: d.LoginId, Reconnect: d.Reconnect,
		Ended: endedRows(d.App, d.Ended),
	}
}

func errorRow(l opLine, err error) errorRowT {
	msg := err.Error()
	var e *engine.Error
	if errors.As(err, &e) {
		msg = e.Message // the code has its own field
	}
	return errorRowT{Type: "error", Line: l.n, Op: l.op, Code: int32(engine.CodeOf(err)), Message: msg}
}

func endedRows(app string, es []*pb.Ended) []endedRow {
	out := make([]endedRow, 0, len(es)) // [] rather than null: "nobody ended"
	for _, e := range es {
		s := e.GetSession()
		out = append(out, endedRow{
			App: app, User: e.User, LoginID: s.GetLoginId(), Platform: s.GetPlatform(), DeviceName: s.GetDeviceName(),
			Code: e.Code, Reason: reasonName(e.Reason),
			ByLoginID: e.ByLoginId, ByDeviceName: e.ByDeviceName, ByExtension: e.ByExtension,
			PolicyVersion: e.PolicyVersion, Partition: e.Partition, Offset: e.Offset,
		})
	}
	return out
}

// reasonName is the JSON name of a reason: "login_other_device", "kicked"...
func reasonName(r pb.Reason) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "REASON_"))
}

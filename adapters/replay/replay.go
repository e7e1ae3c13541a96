// Package replay is `mdsync replay`: it submits operations (opjson lines)
// one at a time through the engine on a fresh embedded log, and reports each
// decision, the device table and the state digest; with options, the state
// as of an offset (time travel), a rebuild that must reach the same digest
// (verify), and a second run under another policy (what-if).
package replay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/adapters/opjson"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// Config is one replay run (the flags of `mdsync replay`).
type Config struct {
	Dir        string // "" = a temporary directory, removed afterwards
	TempDir    string // parent of temporary directories ("" = os.TempDir)
	Partitions int32  // partitions of the replay log; < 1 = 1
	App        string // app of lines that name none; "" = "demo"
	Verify     bool   // rebuild the projections from the log and compare digests
	At         int64  // >= 0: print the device table as of this offset; < 0: off
	Policy     *Policy
	KeepGoing  bool // report an invalid line and go on; false stops at the first
}

// ErrInvalidLines is returned (wrapped) when input lines were refused by
// parsing or validation, so the exit status is non-zero.
var ErrInvalidLines = errors.New("invalid input lines")

// ErrDigestMismatch is returned when --verify finds the rebuilt state differs.
var ErrDigestMismatch = errors.New("rebuilt projections differ from the live ones")

// Run replays the operations of in, writing JSON lines to out
// (docs/operations.md, "Output"). Refused input lines make it return
// ErrInvalidLines (wrapped) after the whole output was written.
func Run(ctx context.Context, cfg Config, in io.Reader, out io.Writer) error {
	if cfg.App == "" {
		cfg.App = "demo"
	}
	lines, err := opjson.ReadLines(in, cfg.App)
	if err != nil {
		return err
	}
	return run(ctx, cfg, lines, nil, nil, out)
}

// run replays lines; pos, when not nil, is each line's position in the log
// it was read from (by line number), and head are rows emitted first.
func run(ctx context.Context, cfg Config, lines []opjson.Line, pos []LogPos, head []any, out io.Writer) error {
	if cfg.Partitions < 1 {
		cfg.Partitions = 1
	}
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false) // device names and extensions are shown as given
	emit := func(v any) error { return enc.Encode(v) }
	for _, h := range head {
		if err := emit(h); err != nil {
			return err
		}
	}
	from := func(n int) *LogPos {
		if n < 1 || n > len(pos) {
			return nil
		}
		return &pos[n-1]
	}
	var err error

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
		if l.Err == nil {
			res.d, res.err = r.submit(l.Event, l.TimeMs)
			if fatal(r.ctx, res.err) {
				return fmt.Errorf("replay: line %d: %w", l.N, res.err)
			}
		} else {
			res.err = l.Err
		}
		results = append(results, res)
		if res.err != nil {
			if !RefusedByRule(res.err) {
				invalid++
			}
			row := errorRowOf(l, res.err)
			row.From = from(l.N)
			if err := emit(row); err != nil {
				return err
			}
			if !cfg.KeepGoing {
				stopped = true
				break
			}
			continue
		}
		row := decisionRowOf(l, res.d)
		row.From = from(l.N)
		if err := emit(row); err != nil {
			return err
		}
	}
	if stopped {
		return fmt.Errorf("replay: %w: stopped at the first (--keep-going=false)", ErrInvalidLines)
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
	if err := emit(DigestRow{Type: "digest", Digest: digest, At: at}); err != nil {
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
		if err := emit(VerifyRow{Type: "verify", Live: live, Rebuild: rebuilt, Equal: live == rebuilt}); err != nil {
			return err
		}
		if live != rebuilt {
			verifyErr = fmt.Errorf("replay: %w: live %s, rebuild %s", ErrDigestMismatch, live, rebuilt)
		}
	}

	if cfg.Policy != nil {
		d, err := tempDir()
		if err != nil {
			return err
		}
		if err := whatIf(ctx, d, cfg, lines, results, from, emit); err != nil {
			return err
		}
	}
	if verifyErr != nil {
		return verifyErr
	}
	if invalid > 0 {
		return fmt.Errorf("replay: %w: %d", ErrInvalidLines, invalid)
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

// RefusedByRule reports a refusal the engine decided before the append
// because the actor's session had ended or never existed (an operation
// decided on a group's or a chatroom's stream, engine.CheckActor): the line
// was valid, the history simply says no, as a decision would.
func RefusedByRule(err error) bool {
	switch engine.CodeOf(err) {
	case engine.CodeLoginOtherDevice, engine.CodeUserRemoved, engine.CodePasswordChanged,
		engine.CodeKickedByOtherDevice, engine.CodeNotFound:
		return true
	}
	return false
}

// opResult is what one input line produced in a run.
type opResult struct {
	line opjson.Line
	d    *pb.Decision
	err  error
}

// replayer is a node on a fresh log whose clock the caller sets before each
// Submit, so event times (and so the digest) depend only on the input.
type replayer struct {
	n     *node.Node
	clock atomic.Int64
	// ctx is the run's. When the node's projector stops, Submit returns at
	// once with CodeUnavailable (the store's WaitApplied wakes on the
	// failure), which fatal reports; no watcher is needed.
	ctx context.Context
}

func openReplayer(ctx context.Context, dir string, partitions int32) (*replayer, error) {
	r := &replayer{ctx: ctx}
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
	return r, nil
}

// submit submits one operation at a time, so log order is input order.
func (r *replayer) submit(ev *pb.Event, timeMs int64) (*pb.Decision, error) {
	r.clock.Store(timeMs)
	d, err := r.n.Engine.Submit(r.ctx, ev)
	if err == nil {
		return d, nil
	}
	if perr := r.n.Err(); perr != nil {
		return nil, fmt.Errorf("%w (projector stopped: %w)", err, perr)
	}
	return nil, err
}

func (r *replayer) close() error {
	return r.n.Close()
}

// settle waits until the node's relay has appended every fan-out copy and
// the projections applied them: the digest, --at and --verify must see a
// log that no longer grows. node.Settle waits to that fixed point on the
// projector's and the relay's signals; nothing polls.
func (r *replayer) settle() error {
	if err := r.n.Settle(r.ctx); err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	return nil
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
			if err := emit(DeviceRow{
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

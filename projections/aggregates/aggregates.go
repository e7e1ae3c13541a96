// Package aggregates is a projection of counts for analytics: logins,
// sessions ended by reason, active devices per platform, and messages per
// chat type per hour. Like every projection it is a pure function of the
// log (event time only, never the wall clock): it follows the log port,
// keeps its own Pebble database, and writes each partition's checkpoint in
// the same batch as the counts that partition's events produced.
//
// Session outcomes (accepted or refused logins, evictions, kicks) come from
// the engine's pure session rules (engine.ApplySession, ApplyPolicy,
// EnforcePolicy), applied to this projection's own copy of the sessions, so
// the counts agree with the decisions of the main projection.
package aggregates

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
)

// ErrClosed is returned after Close.
var ErrClosed = errors.New("aggregates: closed")

// Options configure Open.
type Options struct {
	// Dir holds the Pebble files. Required unless FS is in-memory.
	Dir string
	// FS is the file system; default vfs.Default.
	FS vfs.FS
	// Partitions must equal the log's partition count (1..1024). Required.
	Partitions int32
	// Sync commits every batch with fsync (default false: counts are
	// derived from the durable log; a lost batch only moves its checkpoint
	// back and is applied again).
	Sync bool
	// Logger receives Pebble's messages (info at debug level). Default
	// slog.Default().
	Logger *slog.Logger
}

// readBatch bounds the entries applied in one batch.
const readBatch = 512

// HourMs is the width of a message bucket.
const HourMs = 3_600_000

// Aggregates is the projection. Safe for concurrent use; each partition is
// applied by one goroutine at a time.
type Aggregates struct {
	opts  Options
	db    *pebble.DB
	wo    *pebble.WriteOptions
	parts []partState

	mu     sync.RWMutex // held for reading by users of db, for writing by Close
	closed bool
}

type partState struct {
	mu sync.Mutex // one applier per partition
	cp *pb.Checkpoint
}

// Open opens or creates the projection's database.
func Open(opts Options) (*Aggregates, error) {
	if opts.Partitions < 1 || opts.Partitions > 1024 {
		return nil, fmt.Errorf("aggregates: Options.Partitions %d is outside [1,1024]", opts.Partitions)
	}
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	db, err := pebble.Open(opts.Dir, &pebble.Options{FS: opts.FS, Logger: projections.PebbleLogger(opts.Logger)})
	if err != nil {
		return nil, fmt.Errorf("aggregates: open %s: %w", opts.Dir, err)
	}
	a := &Aggregates{opts: opts, db: db, wo: pebble.NoSync, parts: make([]partState, opts.Partitions)}
	if opts.Sync {
		a.wo = pebble.Sync
	}
	if err := a.checkPartitions(); err != nil {
		db.Close()
		return nil, err
	}
	for p := range a.parts {
		cp := &pb.Checkpoint{}
		if _, err := a.getProto(checkpointKey(int32(p)), cp); err != nil {
			db.Close()
			return nil, err
		}
		a.parts[p].cp = cp
	}
	return a, nil
}

// checkPartitions stores the partition count on first open and refuses
// another count later: counts are kept per partition.
func (a *Aggregates) checkPartitions() error {
	k := []byte(tagMeta + "partitions")
	v, closer, err := a.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(a.opts.Partitions))
		return a.db.Set(k, b[:], pebble.Sync)
	}
	if err != nil {
		return err
	}
	defer closer.Close()
	if got := int32(binary.BigEndian.Uint32(v)); got != a.opts.Partitions {
		return fmt.Errorf("aggregates: built for %d partitions, opened with %d", got, a.opts.Partitions)
	}
	return nil
}

// Close closes the database; later calls return ErrClosed.
func (a *Aggregates) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	return a.db.Close()
}

// Checkpoint returns partition p's position (a copy).
func (a *Aggregates) Checkpoint(p int32) *pb.Checkpoint {
	ps := &a.parts[p]
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return proto.Clone(ps.cp).(*pb.Checkpoint)
}

// Run applies every partition from its checkpoint and follows the log
// until ctx is done (then it returns nil) or an error stops a partition.
func (a *Aggregates) Run(ctx context.Context, log engine.Log) error {
	err := a.run(ctx, log, nil)
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, engine.ErrLogClosed) || errors.Is(err, ErrClosed)) {
		return nil
	}
	return err
}

// CatchUp applies every partition up to the log's end as of the call.
func (a *Aggregates) CatchUp(ctx context.Context, log engine.Log) error {
	ends := make([]int64, a.opts.Partitions)
	for p := range ends {
		e, err := log.End(ctx, int32(p))
		if err != nil {
			return err
		}
		ends[p] = e
	}
	return a.run(ctx, log, ends)
}

func (a *Aggregates) run(ctx context.Context, log engine.Log, ends []int64) error {
	if log.Partitions() != a.opts.Partitions {
		return fmt.Errorf("aggregates: log has %d partitions, the projection %d", log.Partitions(), a.opts.Partitions)
	}
	g, ctx := errgroup.WithContext(ctx)
	for p := int32(0); p < a.opts.Partitions; p++ {
		g.Go(func() error {
			for {
				from := a.Checkpoint(p).NextOffset
				max := int64(readBatch)
				if ends != nil {
					if from >= ends[p] {
						return nil
					}
					max = min(max, ends[p]-from)
				}
				ents, err := log.Read(ctx, p, from, int(max))
				if err != nil {
					return fmt.Errorf("aggregates: read partition %d at %d: %w", p, from, err)
				}
				if err := a.Apply(p, ents); err != nil {
					return err
				}
			}
		})
	}
	return g.Wait()
}

// ---- keys ----
//
// Every key starts with a one-byte tag. Counters are kept per partition,
// so that partitions applied concurrently never write the same key; reads
// sum them.
const (
	tagMeta       = "m"
	tagCheckpoint = "c"
	tagSessions   = "s" // s app \0 user -> UserSessions
	tagPolicy     = "p" // p app \0 partition -> Policy
	tagSeen       = "d" // d stream \0 user \0 client_op_id -> "" (duplicates)
	tagCounter    = "n" // n partition(4) app \0 metric \0 labels... -> int64
)

func join(tag string, parts ...string) []byte {
	return []byte(tag + strings.Join(parts, "\x00"))
}

func checkpointKey(p int32) []byte {
	return binary.BigEndian.AppendUint32([]byte(tagCheckpoint), uint32(p))
}

// counterPrefix is the start of partition p's counter keys.
func counterPrefix(p int32) []byte {
	return binary.BigEndian.AppendUint32([]byte(tagCounter), uint32(p))
}

func counterKey(p int32, app, metric string, labels ...string) []byte {
	return append(counterPrefix(p), strings.Join(append([]string{app, metric}, labels...), "\x00")...)
}

// Counter metrics (the metric part of a counter key).
const (
	mLogins        = "logins"         // accepted LOGIN
	mLoginsRefused = "logins_refused" // LOGIN refused (214, 1006...)
	mEnded         = "ended"          // labels: reason
	mActive        = "active"         // labels: platform (a delta, summed)
	mMessages      = "messages"       // labels: chat type
	mMessagesHour  = "messages_hour"  // labels: chat type, hour start (ms, 20 digits)
)

func (a *Aggregates) getProto(k []byte, m proto.Message) (bool, error) {
	v, closer, err := a.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer closer.Close()
	return true, proto.Unmarshal(v, m)
}

// ---- applying ----

// txn is one batch with a read-your-writes overlay.
type txn struct {
	db      *pebble.DB
	b       *pebble.Batch
	overlay map[string][]byte
	deltas  map[string]int64
}

func (t *txn) get(k []byte) ([]byte, bool, error) {
	if v, ok := t.overlay[string(k)]; ok {
		return v, v != nil, nil
	}
	v, closer, err := t.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		t.overlay[string(k)] = nil
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	v = slices.Clone(v)
	closer.Close()
	t.overlay[string(k)] = v
	return v, true, nil
}

func (t *txn) getProto(k []byte, m proto.Message) (bool, error) {
	v, ok, err := t.get(k)
	if err != nil || !ok {
		return false, err
	}
	return true, proto.Unmarshal(v, m)
}

func (t *txn) set(k, v []byte) error {
	t.overlay[string(k)] = v
	return t.b.Set(k, v, nil)
}

func (t *txn) putProto(k []byte, m proto.Message) error {
	v, err := engine.EncodeState(m)
	if err != nil {
		return err
	}
	return t.set(k, v)
}

func (t *txn) del(k []byte) error {
	t.overlay[string(k)] = nil
	return t.b.Delete(k, nil)
}

func (t *txn) add(k []byte, n int64) { t.deltas[string(k)] += n }

// flushCounters adds the batch's deltas to the stored counters.
func (t *txn) flushCounters() error {
	keys := make([]string, 0, len(t.deltas))
	for k := range t.deltas {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v, _, err := t.get([]byte(k))
		if err != nil {
			return err
		}
		var cur int64
		if len(v) == 8 {
			cur = int64(binary.BigEndian.Uint64(v))
		}
		cur += t.deltas[k]
		if cur == 0 {
			if err := t.del([]byte(k)); err != nil {
				return err
			}
			continue
		}
		if err := t.set([]byte(k), binary.BigEndian.AppendUint64(nil, uint64(cur))); err != nil {
			return err
		}
	}
	return nil
}

// Apply applies entries of partition p, which must continue its
// checkpoint, in one batch with the new checkpoint.
func (a *Aggregates) Apply(p int32, entries []engine.Entry) error {
	if len(entries) == 0 {
		return nil
	}
	if p < 0 || p >= a.opts.Partitions {
		return fmt.Errorf("aggregates: apply: %w", engine.ErrBadPartition)
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.closed {
		return ErrClosed
	}
	ps := &a.parts[p]
	ps.mu.Lock()
	defer ps.mu.Unlock()
	cp := proto.Clone(ps.cp).(*pb.Checkpoint)
	t := &txn{db: a.db, b: a.db.NewBatch(), overlay: map[string][]byte{}, deltas: map[string]int64{}}
	defer t.b.Close()
	for _, en := range entries {
		if en.Partition != p || en.Offset != cp.NextOffset {
			return fmt.Errorf("aggregates: entries do not continue partition %d at %d (got %d/%d)", p, cp.NextOffset, en.Partition, en.Offset)
		}
		applied, dup, err := a.applyOne(t, en)
		if err != nil {
			return err
		}
		switch {
		case dup:
			cp.Duplicates++
		case applied:
			cp.Applied++
		default:
			cp.Skipped++
		}
		cp.NextOffset = en.Offset + 1
	}
	if err := t.flushCounters(); err != nil {
		return err
	}
	if err := t.putProto(checkpointKey(p), cp); err != nil {
		return err
	}
	if err := t.b.Commit(a.wo); err != nil {
		return fmt.Errorf("aggregates: commit partition %d: %w", p, err)
	}
	ps.cp = cp
	return nil
}

// applyOne counts one event. Retried appends of an operation already
// counted (same stream, user, client op id) are dropped as duplicates, as
// the main projection drops them; undecodable records and unknown kinds
// are skipped.
func (a *Aggregates) applyOne(t *txn, en engine.Entry) (applied, dup bool, err error) {
	ev, derr := engine.Decode(en.Value)
	if derr != nil {
		return false, false, nil
	}
	ki, known := engine.LookupKind(ev.Kind)
	if !known || ev.Actor == nil {
		return false, false, nil
	}
	seen := join(tagSeen, ev.StreamKey, ev.Actor.User, ev.ClientOpId)
	if _, ok, err := t.get(seen); err != nil || ok {
		return false, ok, err
	}
	if err := t.set(seen, []byte{}); err != nil {
		return false, false, err
	}
	p := en.Partition
	pos := engine.Position{Partition: p, Offset: en.Offset}
	pol, err := a.policy(t, ev.App, p)
	if err != nil {
		return false, false, err
	}
	if ki.Category == engine.CatSession {
		// A session operation of an ended device changes no session. (Message
		// counts are of messages in the log, refused or not, as before.)
		if refused, err := a.actorEnded(t, ev); err != nil || refused {
			return err == nil, false, err
		}
	}
	switch {
	case ev.Kind == pb.Kind_KIND_POLICY_SET:
		err = a.applyPolicy(t, pol, ev, pos)
	case ki.Category == engine.CatSession:
		err = a.applySession(t, pol, ev, pos)
	case ev.Kind == pb.Kind_KIND_MESSAGE_SEND:
		ct := ev.GetMessage().GetChatType().String()                   // the protocol's spelling, "CHAT_TYPE_USER"
		hour := ev.TimeUnixMs - ((ev.TimeUnixMs%HourMs)+HourMs)%HourMs // floor, also before 1970
		t.add(counterKey(p, ev.App, mMessages, ct), 1)
		t.add(counterKey(p, ev.App, mMessagesHour, ct, fmt.Sprintf("%020d", hour+offsetHour)), 1)
	}
	return err == nil, false, err
}

// actorEnded is the projector's actor rule (projections.checkActor) on this
// projection's copy of the sessions: an operation on its actor's own stream
// by a login ID without an active session was refused.
func (a *Aggregates) actorEnded(t *txn, ev *pb.Event) (bool, error) {
	switch ev.Kind {
	case pb.Kind_KIND_LOGIN, pb.Kind_KIND_POLICY_SET, pb.Kind_KIND_DELIVER:
		return false, nil
	}
	if ev.Actor.LoginId == "" || ev.StreamKey != engine.UserStream(ev.App, ev.Actor.User) {
		return false, nil
	}
	st := &pb.UserSessions{}
	if _, err := t.getProto(join(tagSessions, ev.App, ev.Actor.User), st); err != nil {
		return false, err
	}
	return engine.CheckActor(st, ev.Actor.LoginId, nil) != nil, nil
}

// offsetHour shifts hour starts so that their zero-padded decimal text
// sorts in time order even for negative times.
const offsetHour = 1 << 62

func (a *Aggregates) policy(t *txn, app string, p int32) (*pb.Policy, error) {
	pol := &pb.Policy{}
	ok, err := t.getProto(join(tagPolicy, app, fmt.Sprint(p)), pol)
	if err != nil {
		return nil, err
	}
	if !ok {
		return engine.DefaultPolicy(), nil
	}
	return pol, nil
}

func (a *Aggregates) applySession(t *txn, pol *pb.Policy, ev *pb.Event, pos engine.Position) error {
	sk := join(tagSessions, ev.App, ev.Actor.User)
	st := &pb.UserSessions{}
	if _, err := t.getProto(sk, st); err != nil {
		return err
	}
	next, d := engine.ApplySession(st, pol, ev, pos)
	if ev.Kind == pb.Kind_KIND_LOGIN {
		if d.Code == 0 {
			t.add(counterKey(pos.Partition, ev.App, mLogins), 1)
		} else {
			t.add(counterKey(pos.Partition, ev.App, mLoginsRefused), 1)
		}
	}
	return a.sessionsChanged(t, pos.Partition, ev.App, sk, st, next, d.Ended)
}

// sessionsChanged stores a user's new sessions and counts what changed:
// ended sessions by reason, and active devices per platform.
func (a *Aggregates) sessionsChanged(t *txn, p int32, app string, sk []byte, before, after *pb.UserSessions, ended []*pb.Ended) error {
	for _, e := range ended {
		t.add(counterKey(p, app, mEnded, e.Reason.String()), 1) // "REASON_LOGIN_OTHER_DEVICE"
	}
	for _, s := range before.GetSessions() {
		t.add(counterKey(p, app, mActive, fmt.Sprint(s.Platform)), -1)
	}
	for _, s := range after.GetSessions() {
		t.add(counterKey(p, app, mActive, fmt.Sprint(s.Platform)), 1)
	}
	if after == before {
		return nil
	}
	if len(after.Sessions) == 0 && after.CredentialEpoch == 0 {
		return t.del(sk)
	}
	return t.putProto(sk, after)
}

// applyPolicy installs a newer policy on this partition and ends the
// sessions above its limits of the app's users on this partition, in key
// order (as the main projection does).
func (a *Aggregates) applyPolicy(t *txn, cur *pb.Policy, ev *pb.Event, pos engine.Position) error {
	pol, changed := engine.ApplyPolicy(cur, ev, pos)
	if !changed {
		return nil
	}
	if err := t.putProto(join(tagPolicy, ev.App, fmt.Sprint(pos.Partition)), pol); err != nil {
		return err
	}
	users, err := a.usersOf(t, ev.App)
	if err != nil {
		return err
	}
	for _, user := range users {
		if engine.PartitionFor([]byte(engine.UserStream(ev.App, user)), a.opts.Partitions) != pos.Partition {
			continue
		}
		sk := join(tagSessions, ev.App, user)
		st := &pb.UserSessions{}
		if _, err := t.getProto(sk, st); err != nil {
			return err
		}
		next, ended := engine.EnforcePolicy(user, st, pol, ev, pos)
		if len(ended) == 0 {
			continue
		}
		if err := a.sessionsChanged(t, pos.Partition, ev.App, sk, st, next, ended); err != nil {
			return err
		}
	}
	return nil
}

// usersOf lists the app's users with stored sessions, from the committed
// state merged with the batch's overlay, sorted.
func (a *Aggregates) usersOf(t *txn, app string) ([]string, error) {
	prefix := join(tagSessions, app, "")
	set := map[string]bool{}
	it, err := a.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return nil, err
	}
	for it.First(); it.Valid(); it.Next() {
		set[string(it.Key()[len(prefix):])] = true
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	for k, v := range t.overlay {
		if strings.HasPrefix(k, string(prefix)) {
			set[k[len(prefix):]] = v != nil
		}
	}
	var users []string
	for u, live := range set {
		if live {
			users = append(users, u)
		}
	}
	slices.Sort(users)
	return users, nil
}

func prefixEnd(prefix []byte) []byte {
	end := slices.Clone(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}

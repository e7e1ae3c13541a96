package loadgen

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/mdsync/mdsync/adapters/opjson"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// A trace is a recorded history (`mdsync export` JSON lines, or the
// operations JSON lines `mdsync replay` reads: the same codec, opjson)
// turned into a plan: the operations in log order, each with how it is
// played and which earlier operations it must wait for.

// playMode says how one operation of a trace is played.
type playMode int

const (
	playSkip     playMode = iota // not played
	playPresence                 // a connection's record, appended by the gateway: not sent; a disconnect closes the device's connection
	playSetup                    // a user's first registration: done before the clock starts
	playDial                     // a login: an SDK device connects with the recorded login ID
	playDevice                   // sent on the acting device's connection
	playAdmin                    // submitted over REST with the admin token
	playPassword                 // a password change: the hash is redacted in exports, so a new password over REST
	playRegister                 // a later registration of a user (after a removal)
)

// TraceOp is one operation of a trace.
type TraceOp struct {
	Line    int       // 1-based line in the history file
	Kind    string    // opjson name: "message_send"
	Event   *pb.Event // as decoded; copied before it is sent
	AtMs    int64     // time since the trace's first operation
	EventID string    // the event id it had in the recorded log ("" in replay files)
	mode    playMode
	// deps are earlier operations (indexes) this one waits for: the
	// order the recorded server saw between them decides the outcome.
	deps []int32
}

// Trace is a history ready to play.
type Trace struct {
	Name, Path string
	Ops        []TraceOp
	// Lines read, and lines that are not operations (refused by the
	// codec, or kinds this build does not know): counted, not played.
	Lines   int
	Invalid int
	// FirstInvalid is the first refused line's error, for the report.
	FirstInvalid string
	// SpanMs is the recorded time from the first to the last operation.
	SpanMs int64
}

// traceUser names a user of an app.
type traceUser struct{ app, user string }

// traceDevice names a login (device) of a user.
type traceDevice struct {
	traceUser
	loginID string
}

// LoadTrace reads a history file. Export lines carry their partition and
// offset: each partition is in log order in the file, and partitions are
// merged by event time, so a user's operations (one partition) keep their
// log order. Replay files have no positions and are taken in file order.
func LoadTrace(path string) (*Trace, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tr, err := ReadTrace(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	tr.Path = path
	tr.Name = strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	return tr, nil
}

// ReadTrace is LoadTrace from a reader.
func ReadTrace(in io.Reader) (*Trace, error) {
	b, err := io.ReadAll(in)
	if err != nil {
		return nil, err
	}
	type pos struct {
		Partition *int32 `json:"partition"`
		Offset    *int64 `json:"offset"`
		EventID   string `json:"event_id"`
	}
	type row struct {
		op       TraceOp
		part     int32
		off      int64
		hasPlace bool
	}
	tr := &Trace{}
	var rows []row
	for n, line := range bytes.Split(b, []byte{'\n'}) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		tr.Lines++
		l := opjson.Decode(n+1, line, "")
		if l.Err != nil {
			tr.Invalid++
			if tr.FirstInvalid == "" {
				tr.FirstInvalid = fmt.Sprintf("line %d: %v", n+1, l.Err)
			}
			continue
		}
		var p pos
		_ = json.Unmarshal(line, &p) // Decode parsed it already
		r := row{op: TraceOp{Line: n + 1, Kind: l.Op, Event: l.Event, AtMs: l.TimeMs, EventID: p.EventID}}
		if p.Partition != nil && p.Offset != nil {
			r.part, r.off, r.hasPlace = *p.Partition, *p.Offset, true
		}
		rows = append(rows, r)
	}
	// Merge partitions by time; a partition's own rows never pass each
	// other (stable sort on time within the file order would, when a
	// clock stepped back): take the earliest head each time.
	byPart := map[int32][]row{}
	var parts []int32
	placed := len(rows) > 0
	for _, r := range rows {
		placed = placed && r.hasPlace
	}
	if placed {
		for _, r := range rows {
			if _, ok := byPart[r.part]; !ok {
				parts = append(parts, r.part)
			}
			byPart[r.part] = append(byPart[r.part], r)
		}
		sort.Slice(parts, func(i, j int) bool { return parts[i] < parts[j] })
		for _, p := range parts {
			rs := byPart[p]
			sort.SliceStable(rs, func(i, j int) bool { return rs[i].off < rs[j].off })
		}
		rows = rows[:0]
		for {
			best := int32(-1)
			for _, p := range parts {
				if len(byPart[p]) > 0 && (best < 0 || byPart[p][0].op.AtMs < byPart[best][0].op.AtMs) {
					best = p
				}
			}
			if best < 0 {
				break
			}
			rows = append(rows, byPart[best][0])
			byPart[best] = byPart[best][1:]
		}
	}
	raw := make([]int64, len(rows))
	for i, r := range rows {
		tr.Ops = append(tr.Ops, r.op)
		raw[i] = r.op.AtMs
	}
	tr.plan()
	tr.schedule(raw)
	return tr, nil
}

// schedule sets each operation's time from the trace's start: the recorded
// gaps between operations, never negative (a partition's clock may have
// stepped back), except that a stretch holding setup registrations takes
// no time: registering users is done before the clock starts, so the
// recorded run's registration phase is not waited out again.
func (tr *Trace) schedule(raw []int64) {
	if len(raw) == 0 {
		return
	}
	at, prev, setup := int64(0), raw[0], false
	for i := range tr.Ops {
		if tr.Ops[i].mode == playSetup {
			setup = true
			tr.Ops[i].AtMs = at
			continue
		}
		if !setup {
			at += max(raw[i]-prev, 0)
		}
		setup = false
		prev = max(prev, raw[i])
		tr.Ops[i].AtMs = at
	}
	tr.SpanMs = at
}

// sessionKinds change a user's device set or credentials: ordered against
// every other operation of the user.
var sessionKinds = map[pb.Kind]bool{
	pb.Kind_KIND_LOGIN: true, pb.Kind_KIND_LOGOUT: true, pb.Kind_KIND_KICK_DEVICE: true, pb.Kind_KIND_KICK_ALL_DEVICES: true,
	pb.Kind_KIND_PASSWORD_CHANGE: true, pb.Kind_KIND_USER_REMOVE: true, pb.Kind_KIND_TOKENS_REVOKE: true, pb.Kind_KIND_USER_REGISTER: true,
}

// plan sets each operation's play mode and dependencies. Operations of
// different devices run concurrently, except where the recorded order
// decided an outcome: a device's own operations are sequential; a user's
// session operations (login, logout, kicks, credentials) are ordered
// against all of the user's operations; a policy against the app's
// logins; a group's (thread's, contact pair's, chatroom membership's)
// changes against the operations that use it; a receipt after the message
// it names. Each is a key written by some operations and read by others:
// a write waits for the previous write and the reads since, a read for
// the previous write.
func (tr *Trace) plan() {
	lastWrite := map[string]int32{}
	reads := map[string][]int32{}
	registered := map[traceUser]bool{}
	for i := range tr.Ops {
		op := &tr.Ops[i]
		ev := op.Event
		u := traceUser{ev.GetApp(), ev.GetActor().GetUser()}
		admin := ev.GetActor().GetAdmin()
		switch {
		case isPresence(ev.Kind):
			op.mode = playPresence
		case ev.Kind == pb.Kind_KIND_USER_REGISTER && !registered[u]:
			registered[u] = true
			op.mode = playSetup
			continue
		case ev.Kind == pb.Kind_KIND_USER_REGISTER:
			op.mode = playRegister
		case ev.Kind == pb.Kind_KIND_PASSWORD_CHANGE:
			op.mode = playPassword
		case ev.Kind == pb.Kind_KIND_LOGIN:
			op.mode = playDial
		case admin || ev.Kind == pb.Kind_KIND_USER_REMOVE || ev.Kind == pb.Kind_KIND_TOKENS_REVOKE:
			op.mode = playAdmin
		default:
			op.mode = playDevice
		}
		w := func(k string) {
			if j, ok := lastWrite[k]; ok {
				op.deps = append(op.deps, j)
			}
			op.deps = append(op.deps, reads[k]...)
			lastWrite[k], reads[k] = int32(i), nil
		}
		r := func(k string) {
			if j, ok := lastWrite[k]; ok {
				op.deps = append(op.deps, j)
			}
			reads[k] = append(reads[k], int32(i))
		}
		app := ev.GetApp() + "/"
		userKey := "user:" + app + u.user
		if op.mode == playDevice || op.mode == playDial || op.mode == playPresence {
			w("dev:" + app + u.user + "/" + ev.GetActor().GetLoginId())
		}
		if op.mode == playPresence {
			slices32(&op.deps)
			continue
		}
		switch {
		case ev.Kind == pb.Kind_KIND_POLICY_SET:
			w("app:" + app)
		case sessionKinds[ev.Kind]:
			w(userKey)
			if ev.Kind == pb.Kind_KIND_LOGIN {
				r("app:" + app)
			}
		default:
			r(userKey)
		}
		for _, k := range resourceKeys(ev) {
			if k.write {
				w(app + k.key)
			} else {
				r(app + k.key)
			}
		}
		if op.EventID != "" && ev.Kind == pb.Kind_KIND_MESSAGE_SEND {
			w("msg:" + op.EventID)
		}
		if id := referencedMessage(ev); id != "" {
			r("msg:" + id)
		}
		slices32(&op.deps)
	}
}

// isPresence: kinds the gateway appends for a connection, never a client.
func isPresence(k pb.Kind) bool {
	ki, ok := engine.LookupKind(k)
	return ok && ki.Category == engine.CatPresence
}

type resKey struct {
	key   string
	write bool
}

// resourceKeys are the shared things an operation changes (write) or
// depends on (read), beyond its device and user.
func resourceKeys(ev *pb.Event) []resKey {
	actor := ev.GetActor().GetUser()
	switch p := ev.Payload.(type) {
	case *pb.Event_Group:
		return []resKey{{"group:" + p.Group.GetGroupId(), true}}
	case *pb.Event_Thread:
		ks := []resKey{{"thread:" + p.Thread.GetThreadId(), true}}
		if g := p.Thread.GetGroupId(); g != "" {
			ks = append(ks, resKey{"group:" + g, false})
		}
		return ks
	case *pb.Event_Contact:
		return []resKey{{"contact:" + pair(actor, p.Contact.GetUser()), true}}
	case *pb.Event_Chatroom:
		return []resKey{{"room:" + p.Chatroom.GetRoomId() + "/" + actor, true}}
	case *pb.Event_Message:
		m := p.Message
		switch m.GetChatType() {
		case pb.ChatType_CHAT_TYPE_GROUP:
			return []resKey{{"group:" + m.GetTo(), false}}
		case pb.ChatType_CHAT_TYPE_THREAD:
			ks := []resKey{{"thread:" + m.GetTo(), false}}
			if g := m.GetGroupId(); g != "" {
				ks = append(ks, resKey{"group:" + g, false})
			}
			return ks
		case pb.ChatType_CHAT_TYPE_CHATROOM:
			return []resKey{{"room:" + m.GetTo() + "/" + actor, false}}
		case pb.ChatType_CHAT_TYPE_USER:
			return []resKey{{"contact:" + pair(actor, m.GetTo()), false}}
		}
	}
	return nil
}

func pair(a, b string) string {
	if a > b {
		a, b = b, a
	}
	return a + "/" + b
}

// referencedMessage is the message id an operation names (a receipt, a
// thread started from a message).
func referencedMessage(ev *pb.Event) string {
	if id := ev.GetReceipt().GetMessageId(); id != "" {
		return id
	}
	return ev.GetThread().GetMessageId()
}

// slices32 sorts and deduplicates dependencies.
func slices32(d *[]int32) {
	s := *d
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	*d = out
}

// Population is who a trace needs: the users to register (each app's),
// and the devices (login IDs) it logs in.
func (tr *Trace) population() (users []traceUser, devices int) {
	seen := map[traceUser]bool{}
	devs := map[traceDevice]bool{}
	add := func(u traceUser) {
		if u.user != "" && !seen[u] {
			seen[u] = true
			users = append(users, u)
		}
	}
	for _, op := range tr.Ops {
		ev := op.Event
		app := ev.GetApp()
		if op.mode == playSkip || op.mode == playPresence {
			continue
		}
		if !ev.GetActor().GetAdmin() || op.mode != playAdmin {
			add(traceUser{app, ev.GetActor().GetUser()})
		}
		if op.mode == playDial {
			devs[traceDevice{traceUser{app, ev.GetActor().GetUser()}, ev.GetActor().GetLoginId()}] = true
		}
		// Users an operation names: in a full history they were
		// registered; in a slice of one, their registration came before.
		if m := ev.GetMessage(); m != nil && m.GetChatType() == pb.ChatType_CHAT_TYPE_USER {
			add(traceUser{app, m.GetTo()})
		}
		if c := ev.GetContact(); c != nil {
			add(traceUser{app, c.GetUser()})
		}
		for _, x := range ev.GetGroup().GetUsers() {
			add(traceUser{app, x})
		}
	}
	return users, len(devs)
}

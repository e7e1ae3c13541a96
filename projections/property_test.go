package projections

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

var (
	propOps  = flag.Int("prop.ops", 100_000, "operations in the randomized history")
	propSeed = flag.Uint64("prop.seed", 0, "seed (0: a fixed default, printed on failure)")
)

// model is an independent, deliberately naive statement of the seed rules:
// per user, the active devices in login order. The projection's decisions
// are checked against it event by event.
type model struct {
	users map[string][]mdev // app/user → devices in login order
	pol   map[string]mpol   // app → policy
	ended map[string]int32  // app/user/login → the code that ended its latest session
	// accounts: app/user → "live" or "removed" (absent: never registered).
	accounts map[string]string
}

type mdev struct {
	id   string
	plat int32
}

type mpol struct {
	single bool
	keep   bool
	def    int32
	limits map[int32]int32
}

func (p mpol) limit(plat int32) int32 {
	if p.single {
		return 1
	}
	if l, ok := p.limits[plat]; ok {
		return l
	}
	return p.def
}

// expect is what the model says an event must produce.
type expect struct {
	code  int32
	ended []string // login IDs, in order
}

func (m *model) apply(app, user string, ev *pb.Event) expect {
	key := app + "/" + user
	devs := m.users[key]
	pol := m.pol[app]
	idx := func(id string) int {
		for i, d := range devs {
			if d.id == id {
				return i
			}
		}
		return -1
	}
	var ex expect
	// An ended session can do nothing: a device actor must be logged in.
	if id := ev.Actor.GetLoginId(); ev.Kind != pb.Kind_KIND_LOGIN && id != "" && idx(id) < 0 {
		ex.code = 1005
		if c := m.ended[key+"/"+id]; c != 0 {
			ex.code = c
		}
		return ex
	}
	defer func() {
		for _, id := range ex.ended {
			m.ended[key+"/"+id] = endCode(ev.Kind)
		}
	}()
	// Accounts: the first registration wins; the other account operations
	// need a live account, and a refused one ends nothing.
	switch live := m.accounts[key] == "live"; {
	case ev.Kind == pb.Kind_KIND_USER_REGISTER && live:
		ex.code = 1006
		return ex
	case ev.Kind == pb.Kind_KIND_USER_REGISTER:
		m.accounts[key] = "live"
		return ex
	case engine.IsAccountKind(ev.Kind) && !live:
		ex.code = 1005
		return ex
	case ev.Kind == pb.Kind_KIND_TOKENS_REVOKE:
		return ex
	case ev.Kind == pb.Kind_KIND_USER_REMOVE:
		m.accounts[key] = "removed"
	}
	switch ev.Kind {
	case pb.Kind_KIND_LOGIN:
		l := ev.GetLogin()
		if i := idx(l.LoginId); i >= 0 {
			if devs[i].plat != l.Platform {
				ex.code = 1006
			}
			return ex
		}
		var comp []int
		for i, d := range devs {
			if pol.single || d.plat == l.Platform {
				comp = append(comp, i)
			}
		}
		lim := pol.limit(l.Platform)
		if len(comp) >= int(lim) {
			if l.AutoLogin && pol.keep {
				ex.code = 214
				return ex
			}
			drop := map[int]bool{}
			for _, i := range comp[:len(comp)-int(lim)+1] {
				drop[i] = true
				ex.ended = append(ex.ended, devs[i].id)
			}
			var keep []mdev
			for i, d := range devs {
				if !drop[i] {
					keep = append(keep, d)
				}
			}
			devs = keep
		}
		devs = append(devs, mdev{l.LoginId, l.Platform})
	case pb.Kind_KIND_LOGOUT, pb.Kind_KIND_KICK_DEVICE:
		id := ev.Actor.LoginId
		if ev.Kind == pb.Kind_KIND_KICK_DEVICE {
			id = ev.GetKickDevice().LoginId
		}
		i := idx(id)
		if i < 0 {
			ex.code = 1005
			return ex
		}
		ex.ended = []string{id}
		devs = append(devs[:i:i], devs[i+1:]...)
	case pb.Kind_KIND_KICK_ALL_DEVICES, pb.Kind_KIND_PASSWORD_CHANGE, pb.Kind_KIND_USER_REMOVE:
		for _, d := range devs {
			ex.ended = append(ex.ended, d.id)
		}
		devs = nil
	default:
		return ex
	}
	m.users[key] = devs
	m.check(app, key)
	return ex
}

// endCode is the code a session ended by an event of kind k carries.
func endCode(k pb.Kind) int32 {
	switch k {
	case pb.Kind_KIND_LOGIN:
		return 206
	case pb.Kind_KIND_LOGOUT:
		return 0
	case pb.Kind_KIND_PASSWORD_CHANGE:
		return 216
	case pb.Kind_KIND_USER_REMOVE:
		return 207
	}
	return 217
}

// enforce applies a new policy to every user of app; it returns the ended
// login IDs per user.
func (m *model) enforce(app string, users []string) map[string][]string {
	pol := m.pol[app]
	out := map[string][]string{}
	for _, u := range users {
		key := app + "/" + u
		devs := m.users[key]
		kept := map[int32]int32{}
		keep := make([]bool, len(devs))
		for i := len(devs) - 1; i >= 0; i-- {
			if kept[devs[i].plat] < pol.limit(devs[i].plat) && (!pol.single || i == len(devs)-1) {
				kept[devs[i].plat]++
				keep[i] = true
			}
		}
		var next []mdev
		for i, d := range devs {
			if keep[i] {
				next = append(next, d)
			} else {
				out[u] = append(out[u], d.id)
				m.ended[key+"/"+d.id] = 217
			}
		}
		m.users[key] = next
		m.check(app, key)
	}
	return out
}

func (m *model) check(app, key string) {
	count := map[int32]int32{}
	for _, d := range m.users[key] {
		count[d.plat]++
		if count[d.plat] > m.pol[app].limit(d.plat) {
			panic(fmt.Sprintf("model: %s over the limit on platform %d", key, d.plat))
		}
	}
	if m.pol[app].single && len(m.users[key]) > 1 {
		panic("model: single mode with two devices")
	}
}

// TestPropertyRandomHistories generates a long random history across apps,
// users, platforms and policy changes (with retried duplicate appends and
// undecodable records mixed in), projects it live in random batch sizes,
// and checks: every decision equals the naive model's (so evictions always
// take the earliest login of the platform, and refusals carry their code);
// no user is ever above a platform's limit after any batch; and a rebuild
// from offset 0 in other batch sizes yields the same digest.
func TestPropertyRandomHistories(t *testing.T) {
	seed := *propSeed
	if seed == 0 {
		seed = 20261121
	}
	n := *propOps
	if testing.Short() {
		n = 10_000
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	const parts = 4
	apps := []string{"app1", "app2"}
	usersPerApp := 400

	m := &model{users: map[string][]mdev{}, pol: map[string]mpol{}, ended: map[string]int32{}, accounts: map[string]string{}}
	for _, a := range apps {
		m.pol[a] = mpol{def: 4}
	}
	log := make([][]engine.Entry, parts)
	expects := map[engine.Position]expect{}
	policyExpect := map[engine.Position]map[string][]string{}
	policyVersion := map[string]uint64{}
	nextID := 0
	var history [][]engine.Entry // appended entries, for duplicates

	appendEv := func(p int32, ev *pb.Event) engine.Position {
		b, err := engine.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		pos := engine.Position{Partition: p, Offset: int64(len(log[p]))}
		en := engine.Entry{Partition: p, Offset: pos.Offset, Key: []byte(ev.StreamKey), Value: b}
		log[p] = append(log[p], en)
		history = append(history, []engine.Entry{en})
		return pos
	}

	for op := 0; op < n; op++ {
		app := apps[rng.IntN(len(apps))]
		user := fmt.Sprintf("u%d", rng.IntN(usersPerApp))
		key := app + "/" + user
		ev := &pb.Event{SchemaVersion: 1, App: app, ClientOpId: fmt.Sprintf("op%d", op),
			Actor: &pb.Actor{User: user}, TimeUnixMs: int64(op)}
		active := m.users[key]
		r := rng.IntN(1000)
		switch {
		case r < 3: // policy change, to every partition
			pol := mpol{def: int32(1 + rng.IntN(5)), limits: map[int32]int32{}}
			ps := &pb.PolicySet{Mode: pb.PlatformMode_PLATFORM_MODE_MULTI, DefaultLimit: pol.def,
				AutoLogin: pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST}
			if rng.IntN(5) == 0 {
				pol.single, ps.Mode = true, pb.PlatformMode_PLATFORM_MODE_SINGLE
			}
			if rng.IntN(2) == 0 {
				pol.keep, ps.AutoLogin = true, pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KEEP_CURRENT
			}
			for plat := int32(1); plat <= 6; plat++ {
				if rng.IntN(3) == 0 {
					l := int32(1 + rng.IntN(6))
					pol.limits[plat] = l
					ps.Limits = append(ps.Limits, &pb.PlatformLimit{Platform: plat, Limit: l})
				}
			}
			policyVersion[app]++
			m.pol[app] = pol
			for p := int32(0); p < parts; p++ {
				cp := &pb.Event{SchemaVersion: 1, App: app, ClientOpId: ev.ClientOpId, Actor: &pb.Actor{User: "admin", Admin: true},
					Kind: pb.Kind_KIND_POLICY_SET, TimeUnixMs: ev.TimeUnixMs}
				cps := proto.Clone(ps).(*pb.PolicySet)
				cps.Version, cps.Partition, cps.Partitions = policyVersion[app], p, parts
				cp.Payload = &pb.Event_PolicySet{PolicySet: cps}
				cp.StreamKey = engine.PolicyStream(app, p)
				cp.EventId = engine.EventID(engine.PolicyStream(app, 0), "admin", ev.ClientOpId)
				pos := appendEv(p, cp)
				var users []string
				for i := 0; i < usersPerApp; i++ {
					u := fmt.Sprintf("u%d", i)
					if engine.PartitionFor([]byte(engine.UserStream(app, u)), parts) == p {
						users = append(users, u)
					}
				}
				// Pebble orders users bytewise; the model's enforcement is per
				// user so its order does not matter, only the set.
				policyExpect[pos] = m.enforce(app, users)
			}
			continue
		case r < 13 && len(history) > 0: // a retried append of an earlier record
			old := history[rng.IntN(len(history))][0]
			p := old.Partition
			log[p] = append(log[p], engine.Entry{Partition: p, Offset: int64(len(log[p])), Key: old.Key, Value: old.Value})
			continue
		case r < 15: // garbage: must be skipped deterministically
			p := int32(rng.IntN(parts))
			log[p] = append(log[p], engine.Entry{Partition: p, Offset: int64(len(log[p])), Key: []byte("x"), Value: []byte{0xff, 0x01, 0x02}})
			continue
		case r < 650:
			ev.Kind = pb.Kind_KIND_LOGIN
			l := &pb.Login{Platform: int32(1 + rng.IntN(6)), AutoLogin: rng.IntN(3) == 0, DeviceName: "dev", Extension: "x"}
			if len(active) > 0 && rng.IntN(8) == 0 {
				d := active[rng.IntN(len(active))]
				l.LoginId, l.Platform = d.id, d.plat // reconnect
				if rng.IntN(4) == 0 {
					l.Platform = d.plat%6 + 1 // conflicting platform
				}
			} else {
				nextID++
				l.LoginId = fmt.Sprintf("d%d", nextID)
			}
			if rng.IntN(50) == 0 {
				l.Platform = 100
			}
			ev.Payload = &pb.Event_Login{Login: l}
		case r < 780:
			ev.Kind = pb.Kind_KIND_LOGOUT
			ev.Actor.LoginId = fmt.Sprintf("d%d", 1+rng.IntN(nextID+1))
			if len(active) > 0 && rng.IntN(4) != 0 {
				ev.Actor.LoginId = active[rng.IntN(len(active))].id
			}
		case r < 900:
			ev.Kind = pb.Kind_KIND_KICK_DEVICE
			target := fmt.Sprintf("d%d", 1+rng.IntN(nextID+1))
			if len(active) > 0 && rng.IntN(4) != 0 {
				target = active[rng.IntN(len(active))].id
			}
			ev.Payload = &pb.Event_KickDevice{KickDevice: &pb.KickDevice{LoginId: target}}
		case r < 930:
			ev.Kind = pb.Kind_KIND_KICK_ALL_DEVICES
		case r < 938:
			ev.Kind = pb.Kind_KIND_USER_REGISTER
			ev.Payload = &pb.Event_Credential{Credential: &pb.Credential{PasswordHash: "h" + ev.ClientOpId}}
		case r < 948:
			ev.Kind = pb.Kind_KIND_PASSWORD_CHANGE
			ev.Payload = &pb.Event_Credential{Credential: &pb.Credential{PasswordHash: "h" + ev.ClientOpId}}
		case r < 952:
			ev.Kind = pb.Kind_KIND_TOKENS_REVOKE
		case r < 958:
			ev.Kind = pb.Kind_KIND_USER_REMOVE
		default:
			ev.Kind = pb.Kind_KIND_MESSAGE_SEND
			ev.Payload = &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "u1", ClientMsgId: ev.ClientOpId}}
		}
		if err := engine.Validate(ev); err != nil {
			t.Fatalf("generator made an invalid op: %v", err)
		}
		ev.StreamKey = engine.StreamKeyFor(ev)
		ev.EventId = engine.EventID(ev.StreamKey, user, ev.ClientOpId)
		p := engine.PartitionFor([]byte(ev.StreamKey), parts)
		pos := appendEv(p, ev)
		expects[pos] = m.apply(app, user, ev)
	}

	// Live: apply partitions interleaved, in random batch sizes, checking
	// every decision against the model and the limits after every batch.
	checked := 0
	var live *Store
	live = openMem(t, parts, func(p int32, ds []*pb.Decision) {
		for _, d := range ds {
			pos := engine.Position{Partition: d.Partition, Offset: d.Offset}
			if d.Kind == pb.Kind_KIND_POLICY_SET {
				want := policyExpect[pos]
				got := map[string][]string{}
				for _, e := range d.Ended {
					got[e.User] = append(got[e.User], e.Session.LoginId)
				}
				if fmt.Sprint(normalize(got)) != fmt.Sprint(normalize(want)) {
					t.Fatalf("seed %d: policy at %v ended %v, model %v", seed, pos, got, want)
				}
				checked++
				continue
			}
			want, ok := expects[pos]
			if !ok {
				t.Fatalf("seed %d: decision at %v for an event the generator did not decide", seed, pos)
			}
			var ended []string
			for _, e := range d.Ended {
				ended = append(ended, e.Session.LoginId)
				if e.Reason == pb.Reason_REASON_LOGIN_OTHER_DEVICE && (e.Code != 206 || e.ByLoginId != d.LoginId) {
					t.Fatalf("seed %d: eviction at %v without 206 and the evicting login: %v", seed, pos, e)
				}
			}
			if d.Code != want.code || fmt.Sprint(ended) != fmt.Sprint(want.ended) {
				t.Fatalf("seed %d: at %v %s: got code %d ended %v, model code %d ended %v",
					seed, pos, engine.KindName(d.Kind), d.Code, ended, want.code, want.ended)
			}
			checked++
			checkLimits(t, live, d.App, d.User)
		}
	})
	defer live.Close()
	next := make([]int, parts)
	for done := 0; done < parts; {
		p := rng.IntN(parts)
		if next[p] >= len(log[p]) {
			continue
		}
		k := min(1+rng.IntN(64), len(log[p])-next[p])
		if err := live.Apply(int32(p), log[p][next[p]:next[p]+k]); err != nil {
			t.Fatal(err)
		}
		next[p] += k
		if next[p] == len(log[p]) {
			done++
		}
	}
	if want := len(expects) + len(policyExpect); checked != want {
		t.Fatalf("checked %d decisions, want %d", checked, want)
	}

	// Rebuild: partitions in reverse order, one large batch size.
	rebuilt := openMem(t, parts, nil)
	defer rebuilt.Close()
	for p := parts - 1; p >= 0; p-- {
		for i := 0; i < len(log[p]); i += 4096 {
			if err := rebuilt.Apply(int32(p), log[p][i:min(i+4096, len(log[p]))]); err != nil {
				t.Fatal(err)
			}
		}
	}
	a, _ := live.Digest()
	b, _ := rebuilt.Digest()
	if a != b {
		t.Fatalf("seed %d: live digest %s != rebuild digest %s", seed, a, b)
	}
	var total, dups, skipped uint64
	for p := int32(0); p < parts; p++ {
		cp := live.Checkpoint(p)
		if cp.NextOffset != int64(len(log[p])) || cp.Applied+cp.Duplicates+cp.Skipped != uint64(cp.NextOffset) {
			t.Fatalf("partition %d checkpoint %v, log %d", p, cp, len(log[p]))
		}
		total += cp.Applied
		dups += cp.Duplicates
		skipped += cp.Skipped
	}
	// Final device table equals the model's.
	tbl, err := live.DeviceTable()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range tbl {
		got[r.App+"/"+r.User] = fmt.Sprint(ids(r.Sessions))
	}
	for k, devs := range m.users {
		var want []string
		for _, d := range devs {
			want = append(want, d.id)
		}
		if len(want) == 0 {
			continue
		}
		if got[k] != fmt.Sprint(want) {
			t.Fatalf("seed %d: %s has %s, model %v", seed, k, got[k], want)
		}
		delete(got, k)
	}
	if len(got) != 0 {
		t.Fatalf("seed %d: projection has users the model does not: %v", seed, got)
	}
	t.Logf("seed %d: %d ops, %d events applied, %d duplicates dropped, %d skipped, %d decisions checked, digest %s",
		seed, n, total, dups, skipped, checked, a[:16])
}

func openMem(t *testing.T, parts int32, on func(int32, []*pb.Decision)) *Store {
	t.Helper()
	opts := Options{Dir: "", FS: vfs.NewMem(), Partitions: parts}
	if on != nil {
		opts.OnApplied = func(p int32, a Applied) { on(p, a.Decisions) }
	}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func checkLimits(t *testing.T, s *Store, app, user string) {
	t.Helper()
	devs, err := s.Devices(app, user)
	if err != nil {
		t.Fatal(err)
	}
	p := engine.PartitionFor([]byte(engine.UserStream(app, user)), s.Partitions())
	pol := &pb.Policy{}
	if ok, _ := s.getProto(policyKey(app, p), pol); !ok {
		pol = engine.DefaultPolicy()
	}
	count := map[int32]int32{}
	for _, d := range devs {
		count[d.Platform]++
		lim := engine.LimitFor(pol, d.Platform)
		if pol.Mode == pb.PlatformMode_PLATFORM_MODE_SINGLE {
			lim = 1
			count[d.Platform] = int32(len(devs))
		}
		if count[d.Platform] > lim {
			t.Fatalf("%s/%s has %d devices on platform %d, limit %d", app, user, count[d.Platform], d.Platform, lim)
		}
	}
}

func ids(ss []*pb.Session) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.LoginId
	}
	return out
}

func normalize(m map[string][]string) map[string][]string {
	out := map[string][]string{}
	for k, v := range m {
		if len(v) > 0 {
			out[k] = v
		}
	}
	return out
}

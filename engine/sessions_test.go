package engine

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// TestSessionsGolden plays the seed rules as datadriven files: each file is
// a list of operations, and each expected block the decision, the sessions
// it ended (with their code and cause) and the user's device table.
// Regenerate with: go test ./engine -run TestSessionsGolden -rewrite
func TestSessionsGolden(t *testing.T) {
	datadriven.Walk(t, "testdata/sessions", func(t *testing.T, path string) {
		h := &goldenHarness{users: map[string]*pb.UserSessions{}, pol: DefaultPolicy()}
		datadriven.RunTest(t, path, h.run)
	})
}

type goldenHarness struct {
	users  map[string]*pb.UserSessions
	pol    *pb.Policy
	offset int64
	op     int
}

func (h *goldenHarness) run(t *testing.T, d *datadriven.TestData) string {
	arg := func(k, def string) string {
		for _, a := range d.CmdArgs {
			if a.Key == k {
				if len(a.Vals) == 0 {
					return "true"
				}
				return a.Vals[0]
			}
		}
		return def
	}
	user := arg("user", "alice")
	h.op++
	ev := &pb.Event{
		App: "app", ClientOpId: fmt.Sprintf("op%d", h.op),
		Actor: &pb.Actor{User: user, LoginId: arg("by", "")}, TimeUnixMs: 1000 * h.offset,
	}
	pos := Position{Offset: h.offset}
	h.offset++
	st := h.users[user]
	if st == nil {
		st = &pb.UserSessions{}
	}
	switch d.Cmd {
	case "login":
		p, _ := strconv.Atoi(arg("p", "1"))
		ev.Kind = pb.Kind_KIND_LOGIN
		ev.Payload = &pb.Event_Login{Login: &pb.Login{
			Platform: int32(p), LoginId: arg("id", ""), DeviceName: arg("name", ""),
			Extension: arg("ext", ""), AutoLogin: arg("auto", "") == "true",
		}}
	case "logout":
		ev.Kind = pb.Kind_KIND_LOGOUT
		ev.Actor.LoginId = arg("id", "")
	case "kick":
		ev.Kind = pb.Kind_KIND_KICK_DEVICE
		ev.Payload = &pb.Event_KickDevice{KickDevice: &pb.KickDevice{LoginId: arg("id", "")}}
	case "kick-all":
		ev.Kind = pb.Kind_KIND_KICK_ALL_DEVICES
	case "password-change":
		ev.Kind = pb.Kind_KIND_PASSWORD_CHANGE
		ev.Payload = &pb.Event_Credential{Credential: &pb.Credential{PasswordHash: "h"}}
	case "user-remove":
		ev.Kind = pb.Kind_KIND_USER_REMOVE
	case "policy":
		ps := &pb.PolicySet{Version: h.pol.Version + 1, Mode: pb.PlatformMode_PLATFORM_MODE_MULTI,
			AutoLogin: pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST}
		ps.DefaultLimit = int32(atoi(t, arg("default", "4")))
		if arg("mode", "multi") == "single" {
			ps.Mode = pb.PlatformMode_PLATFORM_MODE_SINGLE
		}
		if arg("auto", "kick") == "keep" {
			ps.AutoLogin = pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KEEP_CURRENT
		}
		if l := arg("limits", ""); l != "" {
			for _, pair := range strings.Split(l, ",") {
				a, b, _ := strings.Cut(pair, ":")
				ps.Limits = append(ps.Limits, &pb.PlatformLimit{Platform: int32(atoi(t, a)), Limit: int32(atoi(t, b))})
			}
		}
		ev.Kind = pb.Kind_KIND_POLICY_SET
		ev.Payload = &pb.Event_PolicySet{PolicySet: ps}
		if err := Validate(ev); err != nil {
			return fmt.Sprintf("invalid: %v\n", err)
		}
		h.pol, _ = ApplyPolicy(h.pol, ev, pos)
		var b strings.Builder
		fmt.Fprintf(&b, "policy v%d %s default=%d auto=%s\n", h.pol.Version, h.pol.Mode, h.pol.DefaultLimit, h.pol.AutoLogin)
		for _, u := range sortedKeys(h.users) {
			next, ended := EnforcePolicy(u, h.users[u], h.pol, ev, pos)
			h.users[u] = next
			writeEnded(&b, ended)
			writeDevices(&b, u, next)
		}
		return b.String()
	case "devices":
		var b strings.Builder
		writeDevices(&b, user, st)
		return b.String()
	default:
		t.Fatalf("unknown command %q", d.Cmd)
	}
	if err := Validate(ev); err != nil {
		return fmt.Sprintf("invalid: code %d\n", CodeOf(err))
	}
	next, dec := ApplySession(st, h.pol, ev, pos)
	if dec.Code != 0 && next != st {
		t.Fatalf("a refused operation changed state")
	}
	h.users[user] = next
	var b strings.Builder
	if dec.Code == 0 {
		fmt.Fprintf(&b, "accepted")
		if dec.Reconnect {
			fmt.Fprintf(&b, " (reconnect)")
		}
		fmt.Fprintln(&b)
	} else {
		fmt.Fprintf(&b, "refused %d: %s\n", dec.Code, dec.Message)
	}
	writeEnded(&b, dec.Ended)
	writeDevices(&b, user, next)
	return b.String()
}

func writeEnded(b *strings.Builder, ended []*pb.Ended) {
	for _, e := range ended {
		fmt.Fprintf(b, "ended %s (p%d) code=%d reason=%s policy=v%d at=%d", e.Session.LoginId, e.Session.Platform, e.Code, e.Reason, e.PolicyVersion, e.Offset)
		if e.ByLoginId != "" {
			fmt.Fprintf(b, " by=%s name=%q ext=%q", e.ByLoginId, e.ByDeviceName, e.ByExtension)
		}
		fmt.Fprintln(b)
	}
}

func writeDevices(b *strings.Builder, user string, st *pb.UserSessions) {
	fmt.Fprintf(b, "%s:", user)
	for _, s := range st.GetSessions() {
		fmt.Fprintf(b, " %s(p%d@%d)", s.LoginId, s.Platform, s.LoginOffset)
	}
	fmt.Fprintln(b)
}

func sortedKeys(m map[string]*pb.UserSessions) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	for i := 1; i < len(ks); i++ {
		for j := i; j > 0 && ks[j] < ks[j-1]; j-- {
			ks[j], ks[j-1] = ks[j-1], ks[j]
		}
	}
	return ks
}

func atoi(t *testing.T, s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("bad number %q", s)
	}
	return n
}

// TestNextSessionsCopiesEveryField: the state ApplySession starts from
// holds every field of st, the unknown ones too, and shares no slice with
// it; a field added to UserSessions and not copied fails here.
func TestNextSessionsCopiesEveryField(t *testing.T) {
	st := &pb.UserSessions{}
	m := st.ProtoReflect()
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := m.Mutable(fd).List()
			for j := 0; j < 2; j++ {
				l.Append(protoreflect.ValueOfMessage((&pb.Session{LoginId: fmt.Sprint("d", j), Platform: int32(j + 1)}).ProtoReflect()))
			}
		case fd.Kind() == protoreflect.Uint64Kind && !fd.IsList():
			m.Set(fd, protoreflect.ValueOfUint64(7))
		default:
			t.Fatalf("field %s: teach this test (and nextSessions) its kind", fd.Name())
		}
	}
	m.SetUnknown(protoreflect.RawFields{0xf8, 0x01, 0x05}) // field 31, varint 5
	next := nextSessions(st)
	if !proto.Equal(st, next) {
		t.Fatalf("nextSessions(%v) = %v", st, next)
	}
	next.Sessions = append(next.Sessions[:0], &pb.Session{LoginId: "x"})
	if st.Sessions[0].LoginId != "d0" {
		t.Fatal("nextSessions shares st's slice")
	}
	if got := nextSessions(nil); len(got.Sessions) != 0 || got.CredentialEpoch != 0 {
		t.Fatalf("nextSessions(nil) = %v", got)
	}
}

// TestApplySessionLeavesStateAlone: ApplySession never changes the state
// it is given (the projector shares it between batches and decisions),
// for every session kind, a reconnect (which changes a kept session)
// included.
func TestApplySessionLeavesStateAlone(t *testing.T) {
	pol := DefaultPolicy()
	st := &pb.UserSessions{CredentialEpoch: 2, Sessions: []*pb.Session{
		{LoginId: "a", Platform: 1, DeviceName: "old", LoginOffset: 1, LastLoginOffset: 1},
		{LoginId: "b", Platform: 2, LoginOffset: 2, LastLoginOffset: 2},
	}}
	want := proto.Clone(st).(*pb.UserSessions)
	evs := []*pb.Event{
		{Kind: pb.Kind_KIND_LOGIN, Payload: &pb.Event_Login{Login: &pb.Login{LoginId: "a", Platform: 1, DeviceName: "new"}}},
		{Kind: pb.Kind_KIND_LOGIN, Payload: &pb.Event_Login{Login: &pb.Login{LoginId: "c", Platform: 1}}},
		{Kind: pb.Kind_KIND_LOGOUT, Actor: &pb.Actor{User: "u", LoginId: "a"}},
		{Kind: pb.Kind_KIND_KICK_DEVICE, Payload: &pb.Event_KickDevice{KickDevice: &pb.KickDevice{LoginId: "b"}}},
		{Kind: pb.Kind_KIND_KICK_ALL_DEVICES},
		{Kind: pb.Kind_KIND_PASSWORD_CHANGE},
		{Kind: pb.Kind_KIND_USER_REMOVE},
	}
	for i, ev := range evs {
		ev.App = "app"
		if ev.Actor == nil {
			ev.Actor = &pb.Actor{User: "u", LoginId: "b"}
		}
		next, d := ApplySession(st, pol, ev, Position{Offset: int64(10 + i)})
		if d.Code != 0 || next == st {
			t.Fatalf("%v: code %d, changed %v", ev.Kind, d.Code, next != st)
		}
		if !proto.Equal(st, want) {
			t.Fatalf("%v changed the state it was given: %v", ev.Kind, st)
		}
		if ev.Kind == pb.Kind_KIND_LOGIN && ev.GetLogin().LoginId == "a" {
			if !d.Reconnect || next.Sessions[0].DeviceName != "new" || next.Sessions[0].LastLoginOffset != 10 {
				t.Fatalf("reconnect: %v %v", d, next)
			}
		}
	}
}

package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/anishathalye/porcupine"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// The sequential model of one user's login decisions, for porcupine: the
// state is the user's session set (login ID and platform, in login order),
// an input is a login or a kick of one device, an output is the decision's
// code and the login IDs it ended, and a step is engine.ApplySession — the
// projection's own rule — under the run's policy.

type sessionInput struct {
	kind     pb.Kind // KIND_LOGIN or KIND_KICK_DEVICE
	loginID  string  // the new device, or the kicked one
	platform int32   // logins only
}

type sessionOutput struct {
	code  int32
	ended string // login IDs the decision ended, comma-separated, in order
}

// sessionState encodes the session set as "id/platform,…" so that states
// compare with == (porcupine caches visited states).
type sessionState string

func (s sessionState) sessions() *pb.UserSessions {
	st := &pb.UserSessions{}
	if s == "" {
		return st
	}
	for _, f := range strings.Split(string(s), ",") {
		var id string
		var p int32
		i := strings.LastIndexByte(f, '/')
		id = f[:i]
		fmt.Sscan(f[i+1:], &p)
		st.Sessions = append(st.Sessions, &pb.Session{LoginId: id, Platform: p})
	}
	return st
}

func stateOf(st *pb.UserSessions) sessionState {
	var b strings.Builder
	for i, s := range st.GetSessions() {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s/%d", s.LoginId, s.Platform)
	}
	return sessionState(b.String())
}

func endedIDs(d *pb.Decision) string {
	var ids []string
	for _, e := range d.GetEnded() {
		ids = append(ids, e.GetSession().GetLoginId())
	}
	return strings.Join(ids, ",")
}

// sessionModel is the porcupine model of one user's sessions under pol.
func sessionModel(pol *pb.Policy) porcupine.Model {
	return porcupine.Model{
		Init: func() interface{} { return sessionState("") },
		Step: func(state, input, output interface{}) (bool, interface{}) {
			in, out := input.(sessionInput), output.(sessionOutput)
			ev := &pb.Event{App: "m", ClientOpId: "op", Kind: in.kind, Actor: &pb.Actor{User: "u"}}
			switch in.kind {
			case pb.Kind_KIND_LOGIN:
				ev.Payload = &pb.Event_Login{Login: &pb.Login{LoginId: in.loginID, Platform: in.platform}}
			case pb.Kind_KIND_KICK_DEVICE:
				ev.Payload = &pb.Event_KickDevice{KickDevice: &pb.KickDevice{LoginId: in.loginID}}
			}
			next, d := engine.ApplySession(state.(sessionState).sessions(), pol, ev, engine.Position{})
			return d.Code == out.code && endedIDs(d) == out.ended, stateOf(next)
		},
		DescribeOperation: func(input, output interface{}) string {
			in, out := input.(sessionInput), output.(sessionOutput)
			return fmt.Sprintf("%s %s/%d -> %d ended [%s]", engine.KindName(in.kind), in.loginID, in.platform, out.code, out.ended)
		},
	}
}

// The checker is not vacuous: a history that no order of ApplySession can
// produce is refused, and the same operations with outputs some order
// produces are accepted. Limit 2 per platform, kick-oldest.
func TestSessionModelCatchesNonLinearizable(t *testing.T) {
	pol := engine.DefaultPolicy()
	pol.DefaultLimit = 2
	m := sessionModel(pol)
	login := func(id string) sessionInput { return sessionInput{kind: pb.Kind_KIND_LOGIN, loginID: id, platform: 1} }
	op := func(client int, in sessionInput, call, ret int64, code int32, ended string) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: sessionOutput{code, ended}, Return: ret}
	}
	// a, b, c logged in one after the other: c evicts a.
	good := []porcupine.Operation{
		op(0, login("a"), 0, 10, 0, ""),
		op(1, login("b"), 20, 30, 0, ""),
		op(0, login("c"), 40, 50, 0, "a"),
		op(1, sessionInput{kind: pb.Kind_KIND_KICK_DEVICE, loginID: "a"}, 60, 70, int32(engine.CodeNotFound), ""),
	}
	if !porcupine.CheckOperations(m, good) {
		t.Fatal("a sequential history of ApplySession was refused")
	}
	// c, strictly after b, evicted b: the newer device — no order does that.
	bad := append([]porcupine.Operation(nil), good...)
	bad[2] = op(0, login("c"), 40, 50, 0, "b")
	if porcupine.CheckOperations(m, bad) {
		t.Fatal("a history where a login evicted the newest device was accepted")
	}
	// Concurrent logins: either may be second, but not both first.
	conc := []porcupine.Operation{
		op(0, login("a"), 0, 10, 0, ""),
		op(1, login("b"), 20, 50, 0, ""),
		op(2, login("c"), 25, 45, 0, ""),
	}
	if porcupine.CheckOperations(m, conc) {
		t.Fatal("three logins under a limit of 2 that evicted nobody were accepted")
	}
	conc[2] = op(2, login("c"), 25, 45, 0, "a")
	if !porcupine.CheckOperations(m, conc) {
		t.Fatal("b then c (c evicts a) was refused")
	}
	// A kick that found a device the history never logged in.
	ghost := append([]porcupine.Operation(nil), good[:2]...)
	ghost = append(ghost, op(0, sessionInput{kind: pb.Kind_KIND_KICK_DEVICE, loginID: "z"}, 40, 50, 0, "z"))
	if porcupine.CheckOperations(m, ghost) {
		t.Fatal("a kick of a device never logged in was accepted")
	}
}

package node

import (
	"context"
	"fmt"
	"testing"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// An ended session can do nothing (invariant 9): for every operation kind of
// the acceptance table (kindCases), the acting device's session is ended
// first, in one of the four ways the seeds name, and the operation it then
// performs is refused with the code that ended it. Operations on the
// actor's own stream are refused by the projection (a recorded decision);
// those on a group's, thread's or chatroom's stream by the engine before
// the append (nothing appended). Both run on the embedded log and, with
// MDSYNC_NODE_LOG=kafka, on Kafka.

// ending ends the session of <by>.a and returns the code it ended with.
type ending struct {
	name string
	code engine.Code
	end  func(w *kindsWorld, by string)
}

var endings = []ending{
	{"evicted by a fifth login on its platform", engine.CodeLoginOtherDevice, func(w *kindsWorld, by string) {
		for i := 1; i <= 4; i++ { // the default limit is 4 per platform
			w.login(by, fmt.Sprintf("%s.new%d", by, i), 1)
		}
	}},
	{"kicked by its other device", engine.CodeKickedByOtherDevice, func(w *kindsWorld, by string) {
		ev := kev(by, by+".b", pb.Kind_KIND_KICK_DEVICE)
		ev.Payload = &pb.Event_KickDevice{KickDevice: &pb.KickDevice{LoginId: by + ".a"}}
		mustEnd(w, ev)
	}},
	{"its password changed", engine.CodePasswordChanged, func(w *kindsWorld, by string) {
		registerAccount(w, by)
		ev := kev(by, "", pb.Kind_KIND_PASSWORD_CHANGE)
		ev.Payload = &pb.Event_Credential{Credential: &pb.Credential{PasswordHash: "new-hash"}}
		mustEnd(w, ev)
	}},
	{"its user removed", engine.CodeUserRemoved, func(w *kindsWorld, by string) {
		registerAccount(w, by)
		mustEnd(w, kev(by, "", pb.Kind_KIND_USER_REMOVE))
	}},
}

// registerAccount registers user: a password change or a removal needs an
// account (engine.ApplyAccount).
func registerAccount(w *kindsWorld, user string) {
	w.t.Helper()
	ev := kev(user, "", pb.Kind_KIND_USER_REGISTER)
	ev.Payload = &pb.Event_Credential{Credential: &pb.Credential{PasswordHash: "hash"}}
	if d := submit(w.t, w.n, ev); d.Code != 0 {
		w.t.Fatalf("register %s: %v", user, d)
	}
}

func mustEnd(w *kindsWorld, ev *pb.Event) {
	w.t.Helper()
	if d := submit(w.t, w.n, ev); d.Code != 0 || len(d.Ended) == 0 {
		w.t.Fatalf("%s: %v", engine.KindName(ev.Kind), d)
	}
}

// decide submits ev and returns its code: the decision's, or the error's
// for a refusal before the append.
func decide(t *testing.T, n *Node, ev *pb.Event) (engine.Code, bool) {
	t.Helper()
	d, err := n.Engine.Submit(context.Background(), ev)
	if err != nil {
		c := engine.CodeOf(err)
		if c == engine.CodeUnavailable || c == engine.CodeInternal {
			t.Fatalf("%s: %v", engine.KindName(ev.Kind), err)
		}
		return c, false
	}
	return engine.Code(d.Code), true
}

func TestEndedSessionCannotAct(t *testing.T) {
	for i, c := range kindCases {
		e := endings[i%len(endings)]
		t.Run(c.name+"/"+e.name, func(t *testing.T) {
			t.Parallel()
			w := newKindsWorld(t)
			for _, s := range c.pre {
				w.must(s)
			}
			e.end(w, c.by)
			ev := c.op(c.by, c.by+".a")
			before := ends(t, w.n)
			code, decided := decide(t, w.n, ev)
			if code != e.code {
				t.Fatalf("%s by an ended session (%s): code %d, want %d", engine.KindName(ev.Kind), e.name, code, e.code)
			}
			own := engine.StreamKeyFor(ev) == engine.UserStream(ev.App, c.by)
			if decided != own {
				t.Errorf("refused by the projection: %v; the op is on its actor's own stream: %v", decided, own)
			}
			if !own && fmt.Sprint(ends(t, w.n)) != fmt.Sprint(before) {
				t.Errorf("a refusal before the append appended: ends %v → %v", before, ends(t, w.n))
			}
			// The same op from the actor's live device (where there is one)
			// is not refused for its session: the rule is per login ID.
			if e.code == engine.CodeLoginOtherDevice || e.code == engine.CodeKickedByOtherDevice {
				ev2 := c.op(c.by, c.by+".b")
				if code, _ := decide(t, w.n, ev2); code == e.code {
					t.Errorf("the live device %s.b was refused with %d", c.by, code)
				}
			}
		})
	}
	t.Run("never logged in", func(t *testing.T) {
		w := newKindsWorld(t)
		for _, mk := range []maker{message(ctUser, "member"), message(ctGroup, "g"), convOp(pb.Kind_KIND_CONVERSATION_PIN, ctUser, "member")} {
			if code, _ := decide(t, w.n, mk("owner", "owner.ghost")); code != engine.CodeNotFound {
				t.Errorf("an unknown login ID: code %d, want 1005", code)
			}
		}
	})
	t.Run("logged out", func(t *testing.T) {
		w := newKindsWorld(t)
		mustEnd(w, kev("owner", "owner.a", pb.Kind_KIND_LOGOUT))
		if code, _ := decide(t, w.n, message(ctGroup, "g")("owner", "owner.a")); code != engine.CodeNotFound {
			t.Errorf("a logged-out login ID: code %d, want 1005", code)
		}
		if code, _ := decide(t, w.n, kev("owner", "owner.a", pb.Kind_KIND_LOGOUT)); code != engine.CodeNotFound {
			t.Errorf("a second logout: code %d, want 1005", code)
		}
	})
}

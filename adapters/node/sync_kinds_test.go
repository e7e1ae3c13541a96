package node

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// This file is the acceptance table of the sync issue: for every contact,
// group, thread, conversation and chatroom operation kind, every kind of
// message and every receipt, which devices receive which event.
//
// The world every case starts from (newKindsWorld):
//
//	users      owner, admin, member, member2, outsider
//	devices    <user>.a on platform 1 and <user>.b on platform 2
//	group g    owner "owner", admins [admin], members [owner admin member member2]
//	thread t   in g, created by member; members [admin member]
//
// A case may add its own preparation steps (pre). Then the actor performs
// the operation from its ".a" device, the relay delivers every copy, and
// each device's new timeline entries are compared with the table:
//
//   - the acting device (<by>.a) gets nothing;
//   - the actor's other devices get the event with from = actor and
//     multi_device = true (a multi-device event);
//   - every device of each user in `to` gets it with from = actor and
//     multi_device = false (a single-device event);
//   - every other device gets nothing.
//
// silent cases (chatroom join and leave) produce no event for anyone: the
// seeds say chatrooms sync messages only. only names the one device that
// gets a message sent to one of the actor's own devices.

// kindsOpSeq numbers client op ids; atomic because subtests run in parallel.
var kindsOpSeq atomic.Int64

// maker builds an operation performed by user from device login.
type maker func(user, login string) *pb.Event

// step is one operation of a case's preparation.
type step struct {
	by string
	mk maker
}

func kev(user, login string, kind pb.Kind) *pb.Event {
	return &pb.Event{App: "app", ClientOpId: fmt.Sprintf("k%d", kindsOpSeq.Add(1)), Kind: kind,
		Actor: &pb.Actor{User: user, LoginId: login}}
}

func contactOp(kind pb.Kind, peer string) maker {
	return func(user, login string) *pb.Event {
		ev := kev(user, login, kind)
		ev.Payload = &pb.Event_Contact{Contact: &pb.ContactOp{User: peer}}
		return ev
	}
}

func groupOp(kind pb.Kind, group string, users ...string) maker {
	return func(user, login string) *pb.Event {
		ev := kev(user, login, kind)
		ev.Payload = &pb.Event_Group{Group: &pb.GroupOp{GroupId: group, Users: users, Name: group}}
		return ev
	}
}

func attrsOp(group string, users ...string) maker {
	return func(user, login string) *pb.Event {
		ev := groupOp(pb.Kind_KIND_GROUP_MEMBER_ATTRIBUTES_CHANGED, group, users...)(user, login)
		ev.GetGroup().Attributes = []*pb.Attribute{{Key: "nick", Value: "N"}}
		return ev
	}
}

func threadOp(kind pb.Kind, group, thread string, users ...string) maker {
	return func(user, login string) *pb.Event {
		ev := kev(user, login, kind)
		ev.Payload = &pb.Event_Thread{Thread: &pb.ThreadOp{GroupId: group, ThreadId: thread, Name: thread + "-name", Users: users}}
		return ev
	}
}

func convOp(kind pb.Kind, ct pb.ChatType, conv string) maker {
	return func(user, login string) *pb.Event {
		ev := kev(user, login, kind)
		ev.Payload = &pb.Event_Conversation{Conversation: &pb.ConversationRef{ChatType: ct, ConversationId: conv, Mark: 3}}
		return ev
	}
}

func receiptOp(kind pb.Kind, ct pb.ChatType, conv string) maker {
	return func(user, login string) *pb.Event {
		ev := kev(user, login, kind)
		ev.Payload = &pb.Event_Receipt{Receipt: &pb.Receipt{ChatType: ct, ConversationId: conv, MessageId: "m1"}}
		return ev
	}
}

func roomOp(kind pb.Kind, room string) maker {
	return func(user, login string) *pb.Event {
		ev := kev(user, login, kind)
		ev.Payload = &pb.Event_Chatroom{Chatroom: &pb.ChatroomOp{RoomId: room}}
		return ev
	}
}

// message builds a message; for a thread, to is "group/thread".
func message(ct pb.ChatType, to string) maker {
	return func(user, login string) *pb.Event {
		ev := kev(user, login, pb.Kind_KIND_MESSAGE_SEND)
		m := &pb.MessageSend{ChatType: ct, To: to, ClientMsgId: ev.ClientOpId, Body: []byte("hi")}
		if ct == pb.ChatType_CHAT_TYPE_THREAD {
			m.GroupId, m.To, _ = strings.Cut(to, "/")
		}
		ev.Payload = &pb.Event_Message{Message: m}
		return ev
	}
}

// kindsWorld is a node with the users, devices, group and thread above.
type kindsWorld struct {
	t       *testing.T
	n       *Node
	devices []*device // every device, in a fixed order
}

var kindsUsers = []string{"owner", "admin", "member", "member2", "outsider"}

func newKindsWorld(t *testing.T) *kindsWorld {
	t.Helper()
	w := &kindsWorld{t: t, n: openNode(t, 4)}
	for _, u := range kindsUsers {
		w.login(u, u+".a", 1)
		w.login(u, u+".b", 2)
	}
	w.must(step{"owner", groupOp(pb.Kind_KIND_GROUP_CREATE, "g", "admin", "member", "member2")})
	w.must(step{"owner", groupOp(pb.Kind_KIND_GROUP_ADD_ADMIN, "g", "admin")})
	w.must(step{"member", threadOp(pb.Kind_KIND_THREAD_CREATE, "g", "t")})
	w.must(step{"admin", threadOp(pb.Kind_KIND_THREAD_JOIN, "g", "t")})
	return w
}

func (w *kindsWorld) login(user, id string, platform int32) {
	w.t.Helper()
	if d := submit(w.t, w.n, login(user, "login-"+id, id, platform, false)); d.Code != 0 {
		w.t.Fatalf("login %s: %v", id, d)
	}
	w.devices = append(w.devices, &device{app: "app", user: user, login: id})
}

// do performs s from the actor's ".a" device and returns the event and decision.
func (w *kindsWorld) do(s step) (*pb.Event, *pb.Decision) {
	w.t.Helper()
	ev := s.mk(s.by, s.by+".a")
	return ev, submit(w.t, w.n, ev)
}

func (w *kindsWorld) must(s step) {
	w.t.Helper()
	if ev, d := w.do(s); d.Code != 0 {
		w.t.Fatalf("preparation %s by %s refused: %d %s", engine.KindName(ev.Kind), s.by, d.Code, d.Message)
	}
	// The next step may depend on a copy on another partition (an accept
	// needs the request on the accepting user's side).
	settle(w.t, w.n)
}

// settle waits until the relay has delivered every copy and returns each
// device's new entries, keyed by login ID.
func (w *kindsWorld) settle() map[string][]*pb.TimelineEntry {
	w.t.Helper()
	settle(w.t, w.n)
	out := map[string][]*pb.TimelineEntry{}
	for _, d := range w.devices {
		out[d.login] = d.sync(w.t, w.n)
	}
	return out
}

func users(us ...string) []string { return us }

type kindCase struct {
	name string
	pre  []step
	by   string
	op   maker
	// to: the other users whose every device gets a single-device copy.
	to []string
	// silent: nobody, not even the actor's other devices, gets an event.
	silent bool
	// only: the one device that gets the event (a message to an own device).
	only string
}

const (
	ctUser     = pb.ChatType_CHAT_TYPE_USER
	ctGroup    = pb.ChatType_CHAT_TYPE_GROUP
	ctThread   = pb.ChatType_CHAT_TYPE_THREAD
	ctRoom     = pb.ChatType_CHAT_TYPE_CHATROOM
	ctSelfDev  = pb.ChatType_CHAT_TYPE_SELF_DEVICE
	kRequest   = pb.Kind_KIND_CONTACT_REQUEST
	kAccept    = pb.Kind_KIND_CONTACT_ACCEPT
	kBan       = pb.Kind_KIND_CONTACT_BAN
	kApply     = pb.Kind_KIND_GROUP_APPLY
	kInvite    = pb.Kind_KIND_GROUP_INVITE
	kGroupBan  = pb.Kind_KIND_GROUP_BAN
	kGroupMute = pb.Kind_KIND_GROUP_ADD_MUTE
	kRoomJoin  = pb.Kind_KIND_CHATROOM_JOIN
)

var kindCases = []kindCase{
	// Contacts. The peer's devices learn of requests, answers and removals;
	// the block list is private.
	{name: "contact_request", by: "owner", op: contactOp(kRequest, "outsider"), to: users("outsider")},
	{name: "contact_accept", pre: []step{{"outsider", contactOp(kRequest, "owner")}},
		by: "owner", op: contactOp(kAccept, "outsider"), to: users("outsider")},
	{name: "contact_decline", pre: []step{{"outsider", contactOp(kRequest, "owner")}},
		by: "owner", op: contactOp(pb.Kind_KIND_CONTACT_DECLINE, "outsider"), to: users("outsider")},
	{name: "contact_remove", pre: []step{{"outsider", contactOp(kRequest, "owner")}, {"owner", contactOp(kAccept, "outsider")}},
		by: "owner", op: contactOp(pb.Kind_KIND_CONTACT_REMOVE, "outsider"), to: users("outsider")},
	{name: "contact_ban", by: "owner", op: contactOp(kBan, "outsider"), to: users()},
	{name: "contact_allow", pre: []step{{"owner", contactOp(kBan, "outsider")}},
		by: "owner", op: contactOp(pb.Kind_KIND_CONTACT_ALLOW, "outsider"), to: users()},
	{name: "contact_request to a user who banned the actor is dropped by the recipient", pre: []step{{"outsider", contactOp(kBan, "owner")}},
		by: "owner", op: contactOp(kRequest, "outsider"), to: users()},

	// Groups (g: owner, admin [admin], member, member2).
	{name: "group_create", by: "owner", op: groupOp(pb.Kind_KIND_GROUP_CREATE, "g2", "member"), to: users("member")},
	{name: "group_destroy", by: "owner", op: groupOp(pb.Kind_KIND_GROUP_DESTROY, "g"), to: users("admin", "member", "member2")},
	{name: "group_join", by: "outsider", op: groupOp(pb.Kind_KIND_GROUP_JOIN, "g"), to: users("owner", "admin")},
	{name: "group_leave", by: "member", op: groupOp(pb.Kind_KIND_GROUP_LEAVE, "g"), to: users("owner", "admin")},
	{name: "group_apply", by: "outsider", op: groupOp(kApply, "g"), to: users("owner", "admin")},
	{name: "group_apply_accept", pre: []step{{"outsider", groupOp(kApply, "g")}},
		by: "admin", op: groupOp(pb.Kind_KIND_GROUP_APPLY_ACCEPT, "g", "outsider"), to: users("outsider")},
	{name: "group_apply_decline", pre: []step{{"outsider", groupOp(kApply, "g")}},
		by: "admin", op: groupOp(pb.Kind_KIND_GROUP_APPLY_DECLINE, "g", "outsider"), to: users("outsider")},
	{name: "group_invite", by: "member", op: groupOp(kInvite, "g", "outsider"), to: users("outsider")},
	{name: "group_invite_accept", pre: []step{{"member", groupOp(kInvite, "g", "outsider")}},
		by: "outsider", op: groupOp(pb.Kind_KIND_GROUP_INVITE_ACCEPT, "g"), to: users("owner", "admin")},
	{name: "group_invite_decline", pre: []step{{"member", groupOp(kInvite, "g", "outsider")}},
		by: "outsider", op: groupOp(pb.Kind_KIND_GROUP_INVITE_DECLINE, "g"), to: users("owner", "admin")},
	{name: "group_kick", by: "admin", op: groupOp(pb.Kind_KIND_GROUP_KICK, "g", "member"), to: users("member")},
	{name: "group_ban", by: "admin", op: groupOp(kGroupBan, "g", "member"), to: users("member")},
	{name: "group_allow", pre: []step{{"admin", groupOp(kGroupBan, "g", "member")}},
		by: "admin", op: groupOp(pb.Kind_KIND_GROUP_ALLOW, "g", "member"), to: users("member")},
	{name: "group_block", by: "member", op: groupOp(pb.Kind_KIND_GROUP_BLOCK, "g"), to: users()},
	{name: "group_unblock", pre: []step{{"member", groupOp(pb.Kind_KIND_GROUP_BLOCK, "g")}},
		by: "member", op: groupOp(pb.Kind_KIND_GROUP_UNBLOCK, "g"), to: users()},
	{name: "group_assign_owner", by: "owner", op: groupOp(pb.Kind_KIND_GROUP_ASSIGN_OWNER, "g", "member"), to: users("admin", "member", "member2")},
	{name: "group_add_admin", by: "owner", op: groupOp(pb.Kind_KIND_GROUP_ADD_ADMIN, "g", "member"), to: users("member")},
	{name: "group_remove_admin", by: "owner", op: groupOp(pb.Kind_KIND_GROUP_REMOVE_ADMIN, "g", "admin"), to: users("admin")},
	{name: "group_add_mute", by: "admin", op: groupOp(kGroupMute, "g", "member"), to: users("member")},
	{name: "group_remove_mute", pre: []step{{"admin", groupOp(kGroupMute, "g", "member")}},
		by: "admin", op: groupOp(pb.Kind_KIND_GROUP_REMOVE_MUTE, "g", "member"), to: users("member")},
	{name: "group_add_user_allow_list", by: "admin", op: groupOp(pb.Kind_KIND_GROUP_ADD_USER_ALLOW_LIST, "g", "member"), to: users("member")},
	{name: "group_remove_user_allow_list", pre: []step{{"admin", groupOp(pb.Kind_KIND_GROUP_ADD_USER_ALLOW_LIST, "g", "member")}},
		by: "admin", op: groupOp(pb.Kind_KIND_GROUP_REMOVE_USER_ALLOW_LIST, "g", "member"), to: users("member")},
	{name: "group_member_attributes_changed", by: "member", op: attrsOp("g"), to: users("owner", "admin", "member2")},

	// Threads (t in g: created by member, members [admin member]).
	{name: "thread_create", by: "member2", op: threadOp(pb.Kind_KIND_THREAD_CREATE, "g", "t2"), to: users("owner", "admin", "member")},
	{name: "thread_destroy", by: "member", op: threadOp(pb.Kind_KIND_THREAD_DESTROY, "g", "t"), to: users("admin")},
	{name: "thread_join", by: "member2", op: threadOp(pb.Kind_KIND_THREAD_JOIN, "g", "t"), to: users()},
	{name: "thread_leave", by: "admin", op: threadOp(pb.Kind_KIND_THREAD_LEAVE, "g", "t"), to: users()},
	{name: "thread_update", by: "member", op: threadOp(pb.Kind_KIND_THREAD_UPDATE, "g", "t"), to: users("admin")},
	{name: "thread_kick", by: "admin", op: threadOp(pb.Kind_KIND_THREAD_KICK, "g", "t", "member"), to: users("member")},

	// Conversations: the actor's own devices only.
	{name: "conversation_pin", by: "owner", op: convOp(pb.Kind_KIND_CONVERSATION_PIN, ctUser, "member"), to: users()},
	{name: "conversation_unpin", pre: []step{{"owner", convOp(pb.Kind_KIND_CONVERSATION_PIN, ctUser, "member")}},
		by: "owner", op: convOp(pb.Kind_KIND_CONVERSATION_UNPIN, ctUser, "member"), to: users()},
	{name: "conversation_delete", by: "owner", op: convOp(pb.Kind_KIND_CONVERSATION_DELETE, ctUser, "member"), to: users()},
	{name: "conversation_mark", by: "owner", op: convOp(pb.Kind_KIND_CONVERSATION_MARK, ctGroup, "g"), to: users()},
	{name: "conversation_unmark", pre: []step{{"owner", convOp(pb.Kind_KIND_CONVERSATION_MARK, ctGroup, "g")}},
		by: "owner", op: convOp(pb.Kind_KIND_CONVERSATION_UNMARK, ctGroup, "g"), to: users()},
	{name: "remote_messages_remove", pre: []step{{"member", message(ctUser, "owner")}},
		by: "owner", op: convOp(pb.Kind_KIND_REMOTE_MESSAGES_REMOVE, ctUser, "member"), to: users()},

	// Chatrooms: messages only; joining and leaving are not synced.
	{name: "chatroom_join", by: "outsider", op: roomOp(kRoomJoin, "r"), silent: true},
	{name: "chatroom_leave", pre: []step{{"outsider", roomOp(kRoomJoin, "r")}},
		by: "outsider", op: roomOp(pb.Kind_KIND_CHATROOM_LEAVE, "r"), silent: true},

	// Messages.
	{name: "message to a user", by: "owner", op: message(ctUser, "member"), to: users("member")},
	{name: "message to the actor's own user (a note to self)", by: "owner", op: message(ctUser, "owner"), to: users()},
	{name: "message to a group", by: "member", op: message(ctGroup, "g"), to: users("owner", "admin", "member2")},
	{name: "message to a group a member blocked", pre: []step{{"member2", groupOp(pb.Kind_KIND_GROUP_BLOCK, "g")}},
		by: "member", op: message(ctGroup, "g"), to: users("owner", "admin")},
	{name: "message to a thread", by: "member", op: message(ctThread, "g/t"), to: users("admin")},
	{name: "message to a chatroom", pre: []step{{"owner", roomOp(kRoomJoin, "r")}, {"member", roomOp(kRoomJoin, "r")}},
		by: "owner", op: message(ctRoom, "r"), to: users("member")},
	{name: "message to one own device", by: "owner", op: message(ctSelfDev, "owner.b"), only: "owner.b"},
	{name: "message to a user who banned the sender is dropped by the recipient", pre: []step{{"member", contactOp(kBan, "owner")}},
		by: "owner", op: message(ctUser, "member"), to: users()},

	// Receipts. In a one-to-one conversation the peer's devices show them;
	// in a group, only the actor's own devices learn the read state.
	{name: "delivery_receipt", by: "member", op: receiptOp(pb.Kind_KIND_DELIVERY_RECEIPT, ctUser, "owner"), to: users("owner")},
	{name: "read_receipt", by: "member", op: receiptOp(pb.Kind_KIND_READ_RECEIPT, ctUser, "owner"), to: users("owner")},
	{name: "read_receipt in a group", by: "member", op: receiptOp(pb.Kind_KIND_READ_RECEIPT, ctGroup, "g"), to: users()},
	{name: "conversation_read", pre: []step{{"owner", message(ctUser, "member")}},
		by: "member", op: convOp(pb.Kind_KIND_CONVERSATION_READ, ctUser, "owner"), to: users("owner")},
	{name: "conversation_read of a group", pre: []step{{"owner", message(ctGroup, "g")}},
		by: "member", op: convOp(pb.Kind_KIND_CONVERSATION_READ, ctGroup, "g"), to: users()},
}

// TestSyncEveryKindReceivers runs the table: who receives which event.
func TestSyncEveryKindReceivers(t *testing.T) {
	for _, c := range kindCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			w := newKindsWorld(t)
			if c.only != "" {
				w.login(c.by, c.by+".c", 3) // a third device, which must not get it
			}
			for _, s := range c.pre {
				w.must(s)
			}
			w.settle() // every device is now at the end of its timeline
			ev, d := w.do(step{c.by, c.op})
			if d.Code != 0 {
				t.Fatalf("refused: %d %s", d.Code, d.Message)
			}
			got := w.settle()
			var summary []string
			for _, dev := range w.devices {
				es := got[dev.login]
				want := "nothing"
				switch {
				case c.silent || dev.login == c.by+".a":
				case c.only != "":
					if dev.login == c.only {
						want = "multi"
					}
				case dev.user == c.by:
					want = "multi"
				case slices.Contains(c.to, dev.user):
					want = "single"
				}
				summary = append(summary, fmt.Sprintf("%s:%s", dev.login, want))
				if want == "nothing" {
					if len(es) != 0 {
						t.Errorf("%s got %v, want nothing", dev.login, kinds(es))
					}
					continue
				}
				if len(es) != 1 {
					t.Errorf("%s got %v, want exactly one %s", dev.login, kinds(es), engine.KindName(ev.Kind))
					continue
				}
				e := es[0]
				if e.Source.Kind != ev.Kind || e.Source.ClientOpId != ev.ClientOpId || e.EntryId != d.EventId {
					t.Errorf("%s got %s (op %s), want %s (op %s)", dev.login, engine.KindName(e.Source.Kind), e.Source.ClientOpId, engine.KindName(ev.Kind), ev.ClientOpId)
				}
				if e.From != c.by {
					t.Errorf("%s: from = %q, want the actor %q", dev.login, e.From, c.by)
				}
				if e.MultiDevice != (want == "multi") {
					t.Errorf("%s: multi_device = %v, want %v", dev.login, e.MultiDevice, want == "multi")
				}
			}
			if t.Failed() {
				t.Logf("expected: %s", strings.Join(summary, " "))
			}
		})
	}
}

// TestSyncKindTableCoversEveryKind: the table above names every contact,
// group, thread, conversation and chatroom kind, every message kind, and a
// message to every chat type.
func TestSyncKindTableCoversEveryKind(t *testing.T) {
	covered := map[pb.Kind]bool{}
	chatTypes := map[pb.ChatType]bool{}
	for _, c := range kindCases {
		ev := c.op(c.by, c.by+".a")
		covered[ev.Kind] = true
		if m := ev.GetMessage(); m != nil {
			chatTypes[m.ChatType] = true
		}
	}
	for _, r := range refusalCases {
		covered[r.op(r.by, r.by+".a").Kind] = true
	}
	var missing []string
	for _, ki := range engine.Kinds() {
		switch ki.Category {
		case engine.CatContact, engine.CatGroup, engine.CatThread, engine.CatConversation, engine.CatChatroom, engine.CatMessage:
			if !covered[ki.Kind] {
				missing = append(missing, ki.Name)
			}
		}
	}
	for ct := range pb.ChatType_name {
		if ct != 0 && !chatTypes[pb.ChatType(ct)] {
			missing = append(missing, "message to "+pb.ChatType(ct).String())
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Fatalf("no receiver case for: %v", missing)
	}
}

type refusalCase struct {
	name string
	pre  []step
	by   string
	op   maker
	code engine.Code
}

var refusalCases = []refusalCase{
	{name: "only the owner destroys a group (admin)", by: "admin", op: groupOp(pb.Kind_KIND_GROUP_DESTROY, "g"), code: engine.CodeForbidden},
	{name: "only the owner destroys a group (member)", by: "member", op: groupOp(pb.Kind_KIND_GROUP_DESTROY, "g"), code: engine.CodeForbidden},
	{name: "only the owner assigns an owner", by: "admin", op: groupOp(pb.Kind_KIND_GROUP_ASSIGN_OWNER, "g", "member"), code: engine.CodeForbidden},
	{name: "a member does not kick", by: "member", op: groupOp(pb.Kind_KIND_GROUP_KICK, "g", "member2"), code: engine.CodeForbidden},
	{name: "a member does not mute", by: "member", op: groupOp(kGroupMute, "g", "member2"), code: engine.CodeForbidden},
	{name: "an admin does not kick the owner", by: "admin", op: groupOp(pb.Kind_KIND_GROUP_KICK, "g", "owner"), code: engine.CodeForbidden},
	{name: "a non-member cannot post to a group", by: "outsider", op: message(ctGroup, "g"), code: engine.CodeNotMember},
	{name: "a non-member of the thread cannot post to it", by: "member2", op: message(ctThread, "g/t"), code: engine.CodeNotMember},
	{name: "a kicked member cannot post", pre: []step{{"admin", groupOp(pb.Kind_KIND_GROUP_KICK, "g", "member")}},
		by: "member", op: message(ctGroup, "g"), code: engine.CodeNotMember},
	{name: "a muted member cannot post", pre: []step{{"admin", groupOp(kGroupMute, "g", "member")}},
		by: "member", op: message(ctGroup, "g"), code: engine.CodeMuted},
	{name: "a muted member cannot post to a thread", pre: []step{{"admin", groupOp(kGroupMute, "g", "member")}},
		by: "member", op: message(ctThread, "g/t"), code: engine.CodeMuted},
	{name: "accept without a request", by: "owner", op: contactOp(kAccept, "outsider"), code: engine.CodeNotFound},
	{name: "a chatroom message from a non-member", by: "outsider", op: message(ctRoom, "r"), code: engine.CodeNotMember},
	{name: "a message to an own device that is not logged in", by: "owner", op: message(ctSelfDev, "owner.z"), code: engine.CodeNotFound},
	{name: "a message to another user's device as an own device", by: "owner", op: message(ctSelfDev, "member.b"), code: engine.CodeNotFound},
	{name: "a device cannot message itself", by: "owner", op: message(ctSelfDev, "owner.a"), code: engine.CodeInvalidArgument},
}

// TestSyncRefusals: refused operations carry their code, and nobody — not
// even the actor's other devices — receives anything.
func TestSyncRefusals(t *testing.T) {
	for _, c := range refusalCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			w := newKindsWorld(t)
			for _, s := range c.pre {
				w.must(s)
			}
			w.settle()
			ev, d := w.do(step{c.by, c.op})
			if engine.Code(d.Code) != c.code {
				t.Fatalf("%s by %s: code %d (%s), want %d", engine.KindName(ev.Kind), c.by, d.Code, d.Message, c.code)
			}
			for login, es := range w.settle() {
				if len(es) != 0 {
					t.Errorf("%s got %v after a refused operation", login, kinds(es))
				}
			}
		})
	}
}

// groupsOf returns a user's groups and threads as its snapshot shows them.
func (w *kindsWorld) groupsOf(user string) string {
	w.t.Helper()
	settle(w.t, w.n)
	s, err := w.n.Store.Snapshot("app", user)
	if err != nil {
		w.t.Fatal(err)
	}
	return fmt.Sprint(s.Groups.GetGroups(), s.Groups.GetThreads())
}

// The snapshot's groups and threads follow every membership change: a new
// device learns them without replaying the timeline.
func TestSyncMembershipInSnapshot(t *testing.T) {
	w := newKindsWorld(t)
	check := func(step string, want map[string]string) {
		t.Helper()
		for _, u := range kindsUsers {
			if got := w.groupsOf(u); got != want[u] {
				t.Errorf("after %s: %s has %s, want %s", step, u, got, want[u])
			}
		}
	}
	in, gt, none := "[g] []", "[g] [g/t]", "[] []"
	check("setup", map[string]string{"owner": in, "admin": gt, "member": gt, "member2": in, "outsider": none})
	w.must(step{"member2", threadOp(pb.Kind_KIND_THREAD_JOIN, "g", "t")})
	w.must(step{"admin", threadOp(pb.Kind_KIND_THREAD_LEAVE, "g", "t")})
	check("thread join and leave", map[string]string{"owner": in, "admin": in, "member": gt, "member2": gt, "outsider": none})
	w.must(step{"outsider", groupOp(kApply, "g")})
	w.must(step{"admin", groupOp(pb.Kind_KIND_GROUP_APPLY_ACCEPT, "g", "outsider")})
	check("apply accepted", map[string]string{"owner": in, "admin": in, "member": gt, "member2": gt, "outsider": in})
	w.must(step{"admin", groupOp(pb.Kind_KIND_GROUP_KICK, "g", "member")})
	w.must(step{"member2", groupOp(pb.Kind_KIND_GROUP_LEAVE, "g")})
	check("kick and leave", map[string]string{"owner": in, "admin": in, "member": none, "member2": none, "outsider": in})
	w.must(step{"owner", groupOp(pb.Kind_KIND_GROUP_INVITE, "g", "member")})
	w.must(step{"member", groupOp(pb.Kind_KIND_GROUP_INVITE_ACCEPT, "g")})
	w.must(step{"member", threadOp(pb.Kind_KIND_THREAD_JOIN, "g", "t")})
	check("invite accepted", map[string]string{"owner": in, "admin": in, "member": gt, "member2": none, "outsider": in})
	w.must(step{"owner", threadOp(pb.Kind_KIND_THREAD_DESTROY, "g", "t")})
	check("thread destroyed", map[string]string{"owner": in, "admin": in, "member": in, "member2": none, "outsider": in})
	w.must(step{"owner", groupOp(pb.Kind_KIND_GROUP_DESTROY, "g")})
	check("group destroyed", map[string]string{"owner": none, "admin": none, "member": none, "member2": none, "outsider": none})
}

// A timed mute ends by event time (the node's clock), and a member on the
// allow list may post while muted.
func TestSyncTimedMuteAndAllowList(t *testing.T) {
	n, clk := openNodeClock(t, 4)
	w := &kindsWorld{t: t, n: n}
	for _, u := range kindsUsers {
		w.login(u, u+".a", 1)
		w.login(u, u+".b", 2)
	}
	w.must(step{"owner", groupOp(pb.Kind_KIND_GROUP_CREATE, "g", "admin", "member", "member2")})
	mute := func(user, login string) *pb.Event {
		ev := groupOp(kGroupMute, "g", "member", "member2")(user, login)
		ev.GetGroup().MuteMs = 60_000
		return ev
	}
	w.must(step{"owner", mute})
	post := func(by string) engine.Code {
		_, d := w.do(step{by, message(ctGroup, "g")})
		return engine.Code(d.Code)
	}
	if c := post("member"); c != engine.CodeMuted {
		t.Fatalf("muted member posted: code %d", c)
	}
	w.must(step{"owner", groupOp(pb.Kind_KIND_GROUP_ADD_USER_ALLOW_LIST, "g", "member2")})
	if c := post("member2"); c != 0 {
		t.Fatalf("a muted member on the allow list: code %d, want accepted", c)
	}
	clk.Advance(2 * time.Minute)
	if c := post("member"); c != 0 {
		t.Fatalf("after the mute expired: code %d, want accepted", c)
	}
}

// The DELIVER copy of an operation is recorded under the client op id
// "dlv."+source event id on the recipient's stream (engine.DeliverOpID). A
// client chooses its own op ids and can compute that id for its own next
// group message, so it must not be able to take it first: either the op id
// is refused, or the copy still reaches the actor's other devices.
//
// BUG: engine.Validate accepts any client op id, including "dlv.<id>".
// A device that submits any operation on its own stream with op id
// DeliverOpID(EventID(GroupStream(app, g), user, nextOp)) makes the
// projection record a decision under the key the relay's DELIVER copy of
// that later group message uses (decisionKey(u/app/user, user, "dlv."+id)),
// so when the group lives on another partition the copy is dropped as a
// duplicate and the actor's other devices never get the message (observed:
// member.b gets nothing). Expected: client op ids with the reserved "dlv."
// prefix are refused by Validate (1001, nothing appended) — or derived
// copies are keyed apart from client ops — and the copy is delivered.
func TestSyncReservedDeliverOpID(t *testing.T) {
	w := newKindsWorld(t)
	parts := w.n.Log.Partitions()
	userPart := engine.PartitionFor([]byte(engine.UserStream("app", "member")), parts)
	if engine.PartitionFor([]byte(engine.GroupStream("app", "g")), parts) == userPart {
		t.Fatal("test setup: g must live on another partition than member's stream")
	}
	w.settle()
	next := message(ctGroup, "g")("member", "member.a")
	src := engine.EventID(engine.GroupStream("app", "g"), "member", next.ClientOpId)
	squat := convOp(pb.Kind_KIND_CONVERSATION_PIN, ctGroup, "g")("member", "member.a")
	squat.ClientOpId = engine.DeliverOpID(src)
	if _, err := w.n.Engine.Submit(context.Background(), squat); engine.CodeOf(err) != engine.CodeInvalidArgument {
		t.Fatalf("an op id with the reserved prefix: %v, want code 1001", err)
	}
	w.settle()
	if d := submit(t, w.n, next); d.Code != 0 {
		t.Fatalf("group message refused: %v", d)
	}
	got := w.settle()
	for _, dev := range w.devices {
		if dev.login == "member.b" || dev.user == "owner" || dev.user == "admin" || dev.user == "member2" {
			if es := got[dev.login]; len(es) != 1 || es[0].EntryId != src {
				t.Errorf("BUG: %s got %v, want the group message", dev.login, kinds(es))
			}
		}
	}
}

// Removing a conversation's remote (roaming) messages clears its history
// and unread count for the user on every device, not for the peer; later
// messages appear again.
func TestSyncRemoteMessagesRemove(t *testing.T) {
	w := newKindsWorld(t)
	w.must(step{"member", message(ctUser, "owner")})
	w.must(step{"member", message(ctUser, "owner")})
	history := func(user, peer string) int {
		t.Helper()
		h, err := w.n.Store.History("app", user, ctUser, peer, 0, 50)
		if err != nil {
			t.Fatal(err)
		}
		return len(h)
	}
	if a, b := history("owner", "member"), history("member", "owner"); a != 2 || b != 2 {
		t.Fatalf("history before: owner %d, member %d", a, b)
	}
	w.settle()
	w.must(step{"owner", convOp(pb.Kind_KIND_REMOTE_MESSAGES_REMOVE, ctUser, "member")})
	if got := kinds(w.settle()["owner.b"]); fmt.Sprint(got) != "[remote_messages_remove:owner]" {
		t.Fatalf("owner.b got %v", got)
	}
	s, _ := w.n.Store.Snapshot("app", "owner")
	if u, ok := unreadOf(s, ctUser, "member"); !ok || u != 0 {
		t.Fatalf("unread after removal %d (found %v)", u, ok)
	}
	if a, b := history("owner", "member"), history("member", "owner"); a != 0 || b != 2 {
		t.Fatalf("history after removal: owner %d (want 0), member %d (want 2)", a, b)
	}
	w.must(step{"member", message(ctUser, "owner")})
	if a := history("owner", "member"); a != 1 {
		t.Fatalf("history after a new message: %d, want 1", a)
	}
}

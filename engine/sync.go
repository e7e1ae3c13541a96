package engine

import (
	"slices"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// This file is the pure core of the sync half: who may do what to a group,
// thread, chatroom or contact, and who receives which copy of an accepted
// operation. Like sessions.go it reads only its arguments.
//
// Every accepted operation produces Deliver records: one per recipient user.
// The actor's own copy is a multi-device event (from = the actor, never
// shown on the acting device); copies for others are single-device events
// (from = the actor). The projection applies a copy inline when the
// recipient's stream lives on the same partition, and otherwise records it
// in Decision.fanout for the relay to append as a DELIVER event.

// DeliverOpID is the client op id of the DELIVER copy of source: the same
// on every re-derivation, so recipients drop duplicates (invariant 6).
func DeliverOpID(sourceEventID string) string { return ReservedOpIDPrefix + sourceEventID }

// DeliverEvent builds the DELIVER event that carries d to its recipient,
// or to its recipients: its stream is then the first one's, on the
// partition every recipient of d shares. A source has one copy per
// recipient, so no other copy of it has that stream and op id.
func DeliverEvent(d *pb.Deliver) *pb.Event {
	src := d.Source
	first := d.Recipient
	if len(d.Recipients) > 0 {
		first = d.Recipients[0]
	}
	return &pb.Event{
		SchemaVersion: SchemaVersion,
		App:           src.App,
		StreamKey:     UserStream(src.App, first),
		EventId:       EventID(UserStream(src.App, first), src.GetActor().GetUser(), DeliverOpID(src.EventId)),
		ClientOpId:    DeliverOpID(src.EventId),
		Kind:          pb.Kind_KIND_DELIVER,
		Actor:         src.Actor,
		TimeUnixMs:    src.TimeUnixMs,
		Payload:       &pb.Event_Deliver{Deliver: d},
	}
}

func self(ev *pb.Event, pos Position) *pb.Deliver {
	return &pb.Deliver{Recipient: ev.Actor.User, From: ev.Actor.User, MultiDevice: true,
		ExcludeLoginId: ev.Actor.LoginId, Source: ev, SourcePartition: pos.Partition, SourceOffset: pos.Offset}
}

func other(user string, ev *pb.Event, pos Position) *pb.Deliver {
	return &pb.Deliver{Recipient: user, From: ev.Actor.User, Source: ev, SourcePartition: pos.Partition, SourceOffset: pos.Offset}
}

// fanTo returns the actor's own copy plus one copy per other user in users
// (deduplicated, in the order given, the actor skipped).
func fanTo(ev *pb.Event, pos Position, users ...[]string) []*pb.Deliver {
	out := []*pb.Deliver{self(ev, pos)}
	seen := map[string]bool{ev.Actor.User: true}
	for _, list := range users {
		for _, u := range list {
			if !seen[u] {
				seen[u] = true
				out = append(out, other(u, ev, pos))
			}
		}
	}
	return out
}

// Sorted-set helpers: state lists are kept sorted so that encodings, and so
// digests, never depend on the order operations arrived in.
func has(set []string, v string) bool { _, ok := slices.BinarySearch(set, v); return ok }

func add(set []string, vs ...string) []string {
	for _, v := range vs {
		if i, ok := slices.BinarySearch(set, v); !ok {
			set = slices.Insert(set, i, v)
		}
	}
	return set
}

func del(set []string, vs ...string) []string {
	for _, v := range vs {
		if i, ok := slices.BinarySearch(set, v); ok {
			set = slices.Delete(set, i, i+1)
		}
	}
	return set
}

func refused(ev *pb.Event, pos Position, pol *pb.Policy, code Code, format string, args ...any) *pb.Decision {
	return refuse(NewDecision(ev, pos, pol), code, format, args...)
}

// ApplyContact applies a contact operation to the actor's contacts. The
// other user's side changes when its copy is applied (ApplyDelivery).
func ApplyContact(c *pb.Contacts, pol *pb.Policy, ev *pb.Event, pos Position) (*pb.Contacts, *pb.Decision, []*pb.Deliver) {
	peer := ev.GetContact().GetUser()
	next := proto.Clone(c).(*pb.Contacts)
	d := NewDecision(ev, pos, pol)
	notify := []string{peer}
	switch ev.Kind {
	case pb.Kind_KIND_CONTACT_REQUEST:
		if has(c.Friends, peer) {
			return c, refused(ev, pos, pol, CodeConflict, "%s is already a contact", peer), nil
		}
		next.RequestsOut = add(next.RequestsOut, peer)
	case pb.Kind_KIND_CONTACT_ACCEPT, pb.Kind_KIND_CONTACT_DECLINE:
		if !has(c.RequestsIn, peer) {
			return c, refused(ev, pos, pol, CodeNotFound, "no contact request from %s", peer), nil
		}
		next.RequestsIn = del(next.RequestsIn, peer)
		if ev.Kind == pb.Kind_KIND_CONTACT_ACCEPT {
			next.Friends = add(next.Friends, peer)
			next.RequestsOut = del(next.RequestsOut, peer)
		}
	case pb.Kind_KIND_CONTACT_REMOVE:
		if !has(c.Friends, peer) {
			return c, refused(ev, pos, pol, CodeNotFound, "%s is not a contact", peer), nil
		}
		next.Friends = del(next.Friends, peer)
	case pb.Kind_KIND_CONTACT_BAN:
		next.Blocked = add(next.Blocked, peer)
		notify = nil // a block list is private: only the actor's devices learn of it
	case pb.Kind_KIND_CONTACT_ALLOW:
		if !has(c.Blocked, peer) {
			return c, refused(ev, pos, pol, CodeNotFound, "%s is not on the block list", peer), nil
		}
		next.Blocked = del(next.Blocked, peer)
		notify = nil
	default:
		return c, refused(ev, pos, pol, CodeInternal, "%s is not a contact operation", KindName(ev.Kind)), nil
	}
	return next, d, fanTo(ev, pos, notify)
}

func muted(g *pb.Group, user string, now int64) bool {
	if has(g.AllowList, user) {
		return false
	}
	for _, m := range g.Mutes {
		if m.User == user {
			return m.UntilMs == 0 || now < m.UntilMs
		}
	}
	return false
}

func isAdmin(g *pb.Group, user string) bool { return g.Owner == user || has(g.Admins, user) }

func findThread(g *pb.Group, id string) int {
	for i, t := range g.Threads {
		if t.ThreadId == id {
			return i
		}
	}
	return -1
}

// groupRecipients are the members who receive the group's messages: every
// member but those who blocked the group.
func groupRecipients(g *pb.Group) []string {
	out := make([]string, 0, len(g.Members))
	for _, m := range g.Members {
		if !has(g.BlockedBy, m) {
			out = append(out, m)
		}
	}
	return out
}

// ApplyGroup applies a group or thread operation, or a message to a group
// or thread, to the group's state. g is nil when the group does not exist;
// the returned group is nil when it was destroyed.
func ApplyGroup(g *pb.Group, pol *pb.Policy, ev *pb.Event, pos Position) (*pb.Group, *pb.Decision, []*pb.Deliver) {
	actor := ev.Actor.User
	fail := func(code Code, format string, args ...any) (*pb.Group, *pb.Decision, []*pb.Deliver) {
		return g, refused(ev, pos, pol, code, format, args...), nil
	}
	d := NewDecision(ev, pos, pol)
	if ev.Kind == pb.Kind_KIND_GROUP_CREATE {
		if g != nil {
			return fail(CodeConflict, "group %s exists", g.GroupId)
		}
		op := ev.GetGroup()
		members := add(nil, append([]string{actor}, op.Users...)...)
		ng := &pb.Group{GroupId: op.GroupId, Name: op.Name, Owner: actor, Members: members}
		return ng, d, fanTo(ev, pos, op.Users)
	}
	if g == nil {
		return fail(CodeNotFound, "group does not exist")
	}
	if has(g.BlockList, actor) && ev.Kind != pb.Kind_KIND_GROUP_APPLY {
		return fail(CodeForbidden, "%s is on the group's block list", actor)
	}
	member := has(g.Members, actor)

	if ev.Kind == pb.Kind_KIND_MESSAGE_SEND {
		m := ev.GetMessage()
		if !member {
			return fail(CodeNotMember, "%s is not a member of group %s", actor, g.GroupId)
		}
		if muted(g, actor, ev.TimeUnixMs) {
			return fail(CodeMuted, "%s is muted in group %s", actor, g.GroupId)
		}
		recipients := groupRecipients(g)
		if m.ChatType == pb.ChatType_CHAT_TYPE_THREAD {
			i := findThread(g, m.To)
			if i < 0 {
				return fail(CodeNotFound, "thread %s does not exist in group %s", m.To, g.GroupId)
			}
			if !has(g.Threads[i].Members, actor) {
				return fail(CodeNotMember, "%s is not a member of thread %s", actor, m.To)
			}
			recipients = g.Threads[i].Members
		}
		d.MessageId = ev.EventId
		return g, d, fanTo(ev, pos, recipients)
	}
	// A message leaves the group as it is: only operations copy it.
	next := proto.Clone(g).(*pb.Group)
	admins := append([]string{g.Owner}, g.Admins...)

	if ev.GetThread() != nil {
		return applyThread(g, next, pol, ev, pos, d, member, admins)
	}
	op := ev.GetGroup()
	users := op.GetUsers()
	requireAdmin := func() bool { return isAdmin(g, actor) }
	switch ev.Kind {
	case pb.Kind_KIND_GROUP_DESTROY:
		if g.Owner != actor {
			return fail(CodeForbidden, "only the owner destroys a group")
		}
		return nil, d, fanTo(ev, pos, g.Members)
	case pb.Kind_KIND_GROUP_JOIN:
		if member {
			return fail(CodeConflict, "%s is already a member", actor)
		}
		next.Members = add(next.Members, actor)
		next.Applicants, next.Invitees = del(next.Applicants, actor), del(next.Invitees, actor)
		return next, d, fanTo(ev, pos, admins)
	case pb.Kind_KIND_GROUP_LEAVE:
		if !member {
			return fail(CodeNotMember, "%s is not a member", actor)
		}
		if g.Owner == actor {
			return fail(CodeForbidden, "the owner cannot leave; assign a new owner or destroy the group")
		}
		removeMember(next, actor)
		return next, d, fanTo(ev, pos, admins)
	case pb.Kind_KIND_GROUP_APPLY:
		if member {
			return fail(CodeConflict, "%s is already a member", actor)
		}
		if has(g.BlockList, actor) {
			return fail(CodeForbidden, "%s is on the group's block list", actor)
		}
		next.Applicants = add(next.Applicants, actor)
		return next, d, fanTo(ev, pos, admins)
	case pb.Kind_KIND_GROUP_APPLY_ACCEPT, pb.Kind_KIND_GROUP_APPLY_DECLINE:
		if !requireAdmin() {
			return fail(CodeForbidden, "only the owner and admins handle applications")
		}
		for _, u := range users {
			if !has(g.Applicants, u) {
				return fail(CodeNotFound, "%s has not applied", u)
			}
		}
		next.Applicants = del(next.Applicants, users...)
		if ev.Kind == pb.Kind_KIND_GROUP_APPLY_ACCEPT {
			next.Members = add(next.Members, users...)
		}
		return next, d, fanTo(ev, pos, users)
	case pb.Kind_KIND_GROUP_INVITE:
		if !member {
			return fail(CodeNotMember, "only members invite")
		}
		for _, u := range users {
			if has(g.Members, u) {
				return fail(CodeConflict, "%s is already a member", u)
			}
		}
		next.Invitees = add(next.Invitees, users...)
		return next, d, fanTo(ev, pos, users)
	case pb.Kind_KIND_GROUP_INVITE_ACCEPT, pb.Kind_KIND_GROUP_INVITE_DECLINE:
		if !has(g.Invitees, actor) {
			return fail(CodeNotFound, "%s has no invitation", actor)
		}
		next.Invitees = del(next.Invitees, actor)
		if ev.Kind == pb.Kind_KIND_GROUP_INVITE_ACCEPT {
			next.Members = add(next.Members, actor)
		}
		return next, d, fanTo(ev, pos, admins)
	case pb.Kind_KIND_GROUP_KICK, pb.Kind_KIND_GROUP_BAN:
		if !requireAdmin() {
			return fail(CodeForbidden, "only the owner and admins kick or ban")
		}
		for _, u := range users {
			if u == g.Owner || (has(g.Admins, u) && g.Owner != actor) {
				return fail(CodeForbidden, "%s outranks or equals the actor", u)
			}
			if ev.Kind == pb.Kind_KIND_GROUP_KICK && !has(g.Members, u) {
				return fail(CodeNotMember, "%s is not a member", u)
			}
		}
		for _, u := range users {
			removeMember(next, u)
		}
		if ev.Kind == pb.Kind_KIND_GROUP_BAN {
			next.BlockList = add(next.BlockList, users...)
		}
		return next, d, fanTo(ev, pos, users)
	case pb.Kind_KIND_GROUP_ALLOW:
		if !requireAdmin() {
			return fail(CodeForbidden, "only the owner and admins edit the block list")
		}
		next.BlockList = del(next.BlockList, users...)
		return next, d, fanTo(ev, pos, users)
	case pb.Kind_KIND_GROUP_BLOCK, pb.Kind_KIND_GROUP_UNBLOCK:
		if !member {
			return fail(CodeNotMember, "%s is not a member", actor)
		}
		if ev.Kind == pb.Kind_KIND_GROUP_BLOCK {
			next.BlockedBy = add(next.BlockedBy, actor)
		} else {
			next.BlockedBy = del(next.BlockedBy, actor)
		}
		return next, d, fanTo(ev, pos)
	case pb.Kind_KIND_GROUP_ASSIGN_OWNER:
		if g.Owner != actor {
			return fail(CodeForbidden, "only the owner assigns a new owner")
		}
		if !has(g.Members, users[0]) {
			return fail(CodeNotMember, "%s is not a member", users[0])
		}
		next.Owner = users[0]
		next.Admins = del(next.Admins, users[0])
		return next, d, fanTo(ev, pos, g.Members)
	case pb.Kind_KIND_GROUP_ADD_ADMIN, pb.Kind_KIND_GROUP_REMOVE_ADMIN:
		if g.Owner != actor {
			return fail(CodeForbidden, "only the owner changes admins")
		}
		for _, u := range users {
			if !has(g.Members, u) || u == g.Owner {
				return fail(CodeNotMember, "%s is not a member other than the owner", u)
			}
		}
		if ev.Kind == pb.Kind_KIND_GROUP_ADD_ADMIN {
			next.Admins = add(next.Admins, users...)
		} else {
			next.Admins = del(next.Admins, users...)
		}
		return next, d, fanTo(ev, pos, users)
	case pb.Kind_KIND_GROUP_ADD_MUTE, pb.Kind_KIND_GROUP_REMOVE_MUTE:
		if !requireAdmin() {
			return fail(CodeForbidden, "only the owner and admins mute")
		}
		for _, u := range users {
			if !has(g.Members, u) {
				return fail(CodeNotMember, "%s is not a member", u)
			}
			if u == g.Owner {
				return fail(CodeForbidden, "the owner cannot be muted")
			}
		}
		next.Mutes = setMutes(next.Mutes, users, ev.Kind == pb.Kind_KIND_GROUP_ADD_MUTE, op.MuteMs, ev.TimeUnixMs)
		return next, d, fanTo(ev, pos, users)
	case pb.Kind_KIND_GROUP_ADD_USER_ALLOW_LIST, pb.Kind_KIND_GROUP_REMOVE_USER_ALLOW_LIST:
		if !requireAdmin() {
			return fail(CodeForbidden, "only the owner and admins edit the allow list")
		}
		if ev.Kind == pb.Kind_KIND_GROUP_ADD_USER_ALLOW_LIST {
			next.AllowList = add(next.AllowList, users...)
		} else {
			next.AllowList = del(next.AllowList, users...)
		}
		return next, d, fanTo(ev, pos, users)
	case pb.Kind_KIND_GROUP_MEMBER_ATTRIBUTES_CHANGED:
		target := actor
		if len(users) > 0 {
			target = users[0]
		}
		if !has(g.Members, target) {
			return fail(CodeNotMember, "%s is not a member", target)
		}
		if target != actor && !requireAdmin() {
			return fail(CodeForbidden, "only the owner and admins set another member's attributes")
		}
		next.Attributes = setAttributes(next.Attributes, target, op.Attributes)
		return next, d, fanTo(ev, pos, g.Members)
	}
	return fail(CodeInternal, "%s is not a group operation", KindName(ev.Kind))
}

func applyThread(g, next *pb.Group, pol *pb.Policy, ev *pb.Event, pos Position, d *pb.Decision, member bool, admins []string) (*pb.Group, *pb.Decision, []*pb.Deliver) {
	actor := ev.Actor.User
	op := ev.GetThread()
	fail := func(code Code, format string, args ...any) (*pb.Group, *pb.Decision, []*pb.Deliver) {
		return g, refused(ev, pos, pol, code, format, args...), nil
	}
	if !member {
		return fail(CodeNotMember, "%s is not a member of group %s", actor, g.GroupId)
	}
	i := findThread(g, op.ThreadId)
	if ev.Kind == pb.Kind_KIND_THREAD_CREATE {
		if i >= 0 {
			return fail(CodeConflict, "thread %s exists", op.ThreadId)
		}
		t := &pb.Thread{ThreadId: op.ThreadId, Name: op.Name, Owner: actor, Members: []string{actor}, MessageId: op.MessageId}
		j, _ := slices.BinarySearchFunc(next.Threads, op.ThreadId, func(t *pb.Thread, id string) int {
			return cmpString(t.ThreadId, id)
		})
		next.Threads = slices.Insert(next.Threads, j, t)
		return next, d, fanTo(ev, pos, groupRecipients(g))
	}
	if i < 0 {
		return fail(CodeNotFound, "thread %s does not exist", op.ThreadId)
	}
	t, nt := g.Threads[i], next.Threads[i]
	manager := t.Owner == actor || isAdmin(g, actor)
	switch ev.Kind {
	case pb.Kind_KIND_THREAD_DESTROY:
		if !manager {
			return fail(CodeForbidden, "only the thread's creator, the owner and admins destroy a thread")
		}
		next.Threads = slices.Delete(next.Threads, i, i+1)
		return next, d, fanTo(ev, pos, t.Members)
	case pb.Kind_KIND_THREAD_JOIN:
		if has(t.Members, actor) {
			return fail(CodeConflict, "%s is already in thread %s", actor, t.ThreadId)
		}
		nt.Members = add(nt.Members, actor)
		return next, d, fanTo(ev, pos)
	case pb.Kind_KIND_THREAD_LEAVE:
		if !has(t.Members, actor) {
			return fail(CodeNotMember, "%s is not in thread %s", actor, t.ThreadId)
		}
		nt.Members = del(nt.Members, actor)
		return next, d, fanTo(ev, pos)
	case pb.Kind_KIND_THREAD_UPDATE:
		if !manager {
			return fail(CodeForbidden, "only the thread's creator, the owner and admins rename a thread")
		}
		nt.Name = op.Name
		return next, d, fanTo(ev, pos, t.Members)
	case pb.Kind_KIND_THREAD_KICK:
		if !isAdmin(g, actor) {
			return fail(CodeForbidden, "only the owner and admins kick from a thread")
		}
		for _, u := range op.Users {
			if !has(t.Members, u) {
				return fail(CodeNotMember, "%s is not in thread %s", u, t.ThreadId)
			}
		}
		nt.Members = del(nt.Members, op.Users...)
		return next, d, fanTo(ev, pos, op.Users)
	}
	return fail(CodeInternal, "%s is not a thread operation", KindName(ev.Kind))
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func removeMember(g *pb.Group, u string) {
	g.Members = del(g.Members, u)
	g.Admins = del(g.Admins, u)
	g.BlockedBy = del(g.BlockedBy, u)
	g.Mutes = setMutes(g.Mutes, []string{u}, false, 0, 0)
	g.Attributes = setAttributes(g.Attributes, u, nil)
	for _, t := range g.Threads {
		t.Members = del(t.Members, u)
	}
}

func setMutes(ms []*pb.Mute, users []string, on bool, muteMs, now int64) []*pb.Mute {
	out := ms[:0:0]
	for _, m := range ms {
		if !slices.Contains(users, m.User) {
			out = append(out, m)
		}
	}
	if on {
		until := int64(0)
		if muteMs > 0 {
			until = now + muteMs
		}
		for _, u := range users {
			out = append(out, &pb.Mute{User: u, UntilMs: until})
		}
		slices.SortFunc(out, func(a, b *pb.Mute) int { return cmpString(a.User, b.User) })
	}
	return out
}

// setAttributes replaces the attributes of user (nil attrs removes them).
func setAttributes(as []*pb.MemberAttributes, user string, attrs []*pb.Attribute) []*pb.MemberAttributes {
	out := as[:0:0]
	for _, a := range as {
		if a.User != user {
			out = append(out, a)
		}
	}
	if len(attrs) > 0 {
		out = append(out, &pb.MemberAttributes{User: user, Attributes: attrs})
		slices.SortFunc(out, func(a, b *pb.MemberAttributes) int { return cmpString(a.User, b.User) })
	}
	return out
}

// ApplyChatroom applies a chatroom join, leave or message. Chatrooms sync
// messages only: join and leave produce no multi-device events.
func ApplyChatroom(r *pb.Chatroom, pol *pb.Policy, ev *pb.Event, pos Position) (*pb.Chatroom, *pb.Decision, []*pb.Deliver) {
	actor := ev.Actor.User
	d := NewDecision(ev, pos, pol)
	next := proto.Clone(r).(*pb.Chatroom)
	switch ev.Kind {
	case pb.Kind_KIND_CHATROOM_JOIN:
		if next.RoomId == "" {
			next.RoomId = ev.GetChatroom().RoomId
		}
		next.Members = add(next.Members, actor)
		return next, d, nil
	case pb.Kind_KIND_CHATROOM_LEAVE:
		if !has(r.Members, actor) {
			return r, refused(ev, pos, pol, CodeNotMember, "%s is not in the chatroom", actor), nil
		}
		next.Members = del(next.Members, actor)
		return next, d, nil
	case pb.Kind_KIND_MESSAGE_SEND:
		if !has(r.Members, actor) {
			return r, refused(ev, pos, pol, CodeNotMember, "%s is not in chatroom %s", actor, ev.GetMessage().To), nil
		}
		d.MessageId = ev.EventId
		return r, d, fanTo(ev, pos, r.Members)
	}
	return r, refused(ev, pos, pol, CodeInternal, "%s is not a chatroom operation", KindName(ev.Kind)), nil
}

// ApplyUserMessage decides a message to a user or to one of the sender's
// own devices (by login ID; sessions are the sender's active devices).
func ApplyUserMessage(sessions *pb.UserSessions, pol *pb.Policy, ev *pb.Event, pos Position) (*pb.Decision, []*pb.Deliver) {
	m := ev.GetMessage()
	d := NewDecision(ev, pos, pol)
	d.MessageId = ev.EventId
	if m.ChatType == pb.ChatType_CHAT_TYPE_SELF_DEVICE {
		if indexOf(sessions.GetSessions(), m.To) < 0 {
			return refused(ev, pos, pol, CodeNotFound, "device %s is not logged in", m.To), nil
		}
		if m.To == ev.Actor.LoginId {
			return refused(ev, pos, pol, CodeInvalidArgument, "a device cannot message itself"), nil
		}
		s := self(ev, pos)
		s.OnlyLoginId, s.ExcludeLoginId = m.To, ""
		return d, []*pb.Deliver{s}
	}
	if m.To == ev.Actor.User {
		return d, fanTo(ev, pos) // a note to self: the user's other devices
	}
	return d, fanTo(ev, pos, []string{m.To})
}

// ApplyOwnOperation decides operations that change only the actor's own
// state (conversations, receipts): they always succeed here, and their
// effect is applied with the actor's copy (ApplyDelivery). Receipts also go
// to the conversation's peer user, whose devices show them.
func ApplyOwnOperation(pol *pb.Policy, ev *pb.Event, pos Position) (*pb.Decision, []*pb.Deliver) {
	d := NewDecision(ev, pos, pol)
	var peers []string
	if r := ev.GetReceipt(); r != nil && r.ChatType == pb.ChatType_CHAT_TYPE_USER {
		peers = []string{r.ConversationId}
	}
	if c := ev.GetConversation(); ev.Kind == pb.Kind_KIND_CONVERSATION_READ && c.ChatType == pb.ChatType_CHAT_TYPE_USER {
		peers = []string{c.ConversationId} // the peer learns the conversation was read
	}
	return d, fanTo(ev, pos, peers)
}

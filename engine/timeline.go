package engine

import (
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// Timeline retention defaults, used when the policy leaves them at 0.
const (
	DefaultTimelineMaxEntries = 10_000
	DefaultTimelineMaxAgeMs   = int64(30 * 24 * 3600 * 1000)
)

// Retention returns the policy's timeline limits with defaults applied.
func Retention(pol *pb.Policy) (maxEntries, maxAgeMs int64) {
	maxEntries, maxAgeMs = pol.GetTimelineMaxEntries(), pol.GetTimelineMaxAgeMs()
	if maxEntries <= 0 {
		maxEntries = DefaultTimelineMaxEntries
	}
	if maxAgeMs <= 0 {
		maxAgeMs = DefaultTimelineMaxAgeMs
	}
	return maxEntries, maxAgeMs
}

// UserState is the part of one user's state a delivery reads and writes.
// Conv is the conversation the delivery belongs to (ConversationOf), or
// nil when it belongs to none; the caller loads and stores it.
type UserState struct {
	Contacts *pb.Contacts
	Groups   *pb.UserGroups
	Meta     *pb.TimelineMeta
	Conv     *pb.Conversation
}

// ConversationOf returns the conversation a delivery belongs to, seen from
// its recipient, or ok=false.
func ConversationOf(d *pb.Deliver) (pb.ChatType, string, bool) {
	src := d.Source
	own := d.Recipient == src.GetActor().GetUser()
	switch {
	case src.GetMessage() != nil:
		m := src.GetMessage()
		switch m.ChatType {
		case pb.ChatType_CHAT_TYPE_USER:
			if own {
				return m.ChatType, m.To, true
			}
			return m.ChatType, src.Actor.User, true
		case pb.ChatType_CHAT_TYPE_SELF_DEVICE:
			return pb.ChatType_CHAT_TYPE_USER, d.Recipient, true
		default:
			return m.ChatType, m.To, true
		}
	case src.GetReceipt() != nil:
		r := src.GetReceipt()
		if own || r.ChatType != pb.ChatType_CHAT_TYPE_USER {
			return r.ChatType, r.ConversationId, true
		}
		return r.ChatType, src.Actor.User, true
	case src.GetConversation() != nil:
		c := src.GetConversation()
		if own || c.ChatType != pb.ChatType_CHAT_TYPE_USER {
			return c.ChatType, c.ConversationId, true
		}
		return c.ChatType, src.Actor.User, true
	}
	return 0, "", false
}

// affected reports whether a group/thread delivery changes the recipient's
// own membership, and in which direction.
func affected(d *pb.Deliver) (join, leave bool) {
	src := d.Source
	own := d.Recipient == src.Actor.User
	named := false
	for _, u := range append(src.GetGroup().GetUsers(), src.GetThread().GetUsers()...) {
		named = named || u == d.Recipient
	}
	switch src.Kind {
	case pb.Kind_KIND_GROUP_CREATE:
		return true, false
	case pb.Kind_KIND_GROUP_DESTROY, pb.Kind_KIND_THREAD_DESTROY:
		return false, true
	case pb.Kind_KIND_GROUP_JOIN, pb.Kind_KIND_GROUP_INVITE_ACCEPT, pb.Kind_KIND_THREAD_CREATE, pb.Kind_KIND_THREAD_JOIN:
		return own, false
	case pb.Kind_KIND_GROUP_LEAVE, pb.Kind_KIND_THREAD_LEAVE:
		return false, own
	case pb.Kind_KIND_GROUP_APPLY_ACCEPT:
		return named, false
	case pb.Kind_KIND_GROUP_KICK, pb.Kind_KIND_GROUP_BAN, pb.Kind_KIND_THREAD_KICK:
		return false, named
	}
	return false, false
}

// ApplyDelivery applies one delivery to its recipient: the recipient's side
// of contact operations, its group and thread memberships, the state of the
// conversation it belongs to, and the new timeline entry. It returns a nil
// entry when the recipient drops the delivery (a message or request from a
// user on its block list). It never mutates st: the contacts and groups a
// delivery cannot change (a message's) are returned as the same values, so
// a caller tells "unchanged" by identity, and the others are copies.
func ApplyDelivery(st UserState, pol *pb.Policy, d *pb.Deliver) (UserState, *pb.TimelineEntry) {
	if dropped(st.Contacts, d) {
		return st, nil
	}
	next := UserState{Contacts: st.Contacts, Groups: st.Groups, Meta: proto.Clone(st.Meta).(*pb.TimelineMeta)}
	if st.Conv != nil {
		next.Conv = proto.Clone(st.Conv).(*pb.Conversation)
	}
	if touchesContacts(d) {
		next.Contacts = proto.Clone(st.Contacts).(*pb.Contacts)
	}
	if touchesGroups(d) {
		next.Groups = proto.Clone(st.Groups).(*pb.UserGroups)
	}
	e, _ := ApplyDeliveryInPlace(&next, pol, d)
	return next, e
}

// Changed says which of a UserState's contacts and groups a delivery
// applied in place changed (its meta always changes, and its
// conversation whenever it has one).
type Changed struct{ Contacts, Groups bool }

// ApplyDeliveryInPlace is ApplyDelivery for a caller that owns st and
// keeps no other copy of it (the projector's batch, which applies many
// deliveries to one recipient and writes its state once): it applies d to
// st itself, without copying anything. st.Meta, Contacts and Groups must
// not be nil; st.Conv is created when it is nil and the delivery belongs
// to a conversation (ConversationOf). It reports which of Contacts and
// Groups now differ from what they were. A nil entry: the recipient drops
// the delivery, and st is untouched.
func ApplyDeliveryInPlace(st *UserState, pol *pb.Policy, d *pb.Deliver) (*pb.TimelineEntry, Changed) {
	var ch Changed
	if dropped(st.Contacts, d) {
		return nil, ch
	}
	src := d.Source
	actor := src.Actor.User
	if touchesContacts(d) {
		c := st.Contacts
		n := [3]int{len(c.Friends), len(c.RequestsIn), len(c.RequestsOut)}
		switch src.Kind {
		case pb.Kind_KIND_CONTACT_REQUEST:
			c.RequestsIn = add(c.RequestsIn, actor)
		case pb.Kind_KIND_CONTACT_ACCEPT:
			// Both may have asked each other: the accept settles both requests.
			c.Friends = add(c.Friends, actor)
			c.RequestsOut = del(c.RequestsOut, actor)
			c.RequestsIn = del(c.RequestsIn, actor)
		case pb.Kind_KIND_CONTACT_DECLINE:
			c.RequestsOut = del(c.RequestsOut, actor)
		case pb.Kind_KIND_CONTACT_REMOVE:
			c.Friends = del(c.Friends, actor)
		}
		// add and del change a set's length exactly when they change it.
		ch.Contacts = n != [3]int{len(c.Friends), len(c.RequestsIn), len(c.RequestsOut)}
	}
	if touchesGroups(d) {
		g := st.Groups
		n := [2]int{len(g.Groups), len(g.Threads)}
		join, leave := affected(d)
		if t := src.GetThread(); t != nil {
			if join {
				g.Threads = add(g.Threads, t.GroupId+"/"+t.ThreadId)
			} else if leave {
				g.Threads = del(g.Threads, t.GroupId+"/"+t.ThreadId)
			}
		} else if join {
			g.Groups = add(g.Groups, src.GetGroup().GroupId)
		} else if leave {
			g.Groups = del(g.Groups, src.GetGroup().GroupId)
			g.Threads = dropPrefix(g.Threads, src.GetGroup().GroupId+"/")
		}
		ch.Groups = n != [2]int{len(g.Groups), len(g.Threads)}
	}

	m := st.Meta
	e := &pb.TimelineEntry{
		Seq: m.LastSeq + 1, EntryId: src.EventId, From: d.From, MultiDevice: d.MultiDevice,
		ExcludeLoginId: d.ExcludeLoginId, OnlyLoginId: d.OnlyLoginId, Source: src,
		SourcePartition: d.SourcePartition, SourceOffset: d.SourceOffset,
	}
	if m.Epoch == "" {
		m.Epoch, m.FirstSeq, m.FirstTimeUnixMs = src.EventId, 1, src.TimeUnixMs
	}
	m.LastSeq = e.Seq
	if max, _ := Retention(pol); int64(m.LastSeq-m.FirstSeq+1) > max {
		m.FirstSeq = m.LastSeq - uint64(max) + 1
	}
	if ct, id, ok := ConversationOf(d); ok {
		e.ChatType, e.ConversationId = ct, id
		if st.Conv == nil {
			st.Conv = &pb.Conversation{ChatType: ct, ConversationId: id}
		}
		ApplyConversation(st.Conv, d, e)
	}
	return e, ch
}

// ApplyConversation applies delivery d, whose timeline entry is e, to c,
// its recipient's conversation: the conversation step of
// ApplyDeliveryInPlace, for a caller that applied d with a throwaway
// conversation and loads the real one only when it needs it (the
// projector: a group message extending a member's run leaves the stored
// conversation as it is, projections/runs.go).
func ApplyConversation(c *pb.Conversation, d *pb.Deliver, e *pb.TimelineEntry) {
	applyConversation(c, d.Source, e, d.Recipient == d.Source.Actor.User)
}

// dropped reports whether a recipient with contacts c drops d: a message
// or contact request from a user it blocked.
func dropped(c *pb.Contacts, d *pb.Deliver) bool {
	return blockable(d) && has(c.Blocked, d.Source.Actor.User)
}

// blockable reports whether the recipient's block list decides d: a
// one-to-one message or a contact request from another user.
func blockable(d *pb.Deliver) bool {
	src := d.Source
	if d.Recipient == src.Actor.User {
		return false
	}
	switch src.Kind {
	case pb.Kind_KIND_MESSAGE_SEND:
		return src.GetMessage().GetChatType() == pb.ChatType_CHAT_TYPE_USER
	case pb.Kind_KIND_CONTACT_REQUEST:
		return true
	}
	return false
}

// ReadsContacts reports whether applying d reads or changes its
// recipient's contacts (the block list, the other side's contact
// operations). When it does not (a group message), ApplyDeliveryInPlace
// may be given any Contacts, unchanged by it: a caller need not load them.
func ReadsContacts(d *pb.Deliver) bool { return touchesContacts(d) || blockable(d) }

// ReadsGroups reports whether applying d reads or changes its recipient's
// groups and threads; when it does not, ApplyDeliveryInPlace may be given
// any UserGroups, unchanged by it.
func ReadsGroups(d *pb.Deliver) bool { return touchesGroups(d) }

// touchesContacts reports whether d may change its recipient's contacts:
// the other side's contact operations.
func touchesContacts(d *pb.Deliver) bool {
	switch d.Source.Kind {
	case pb.Kind_KIND_CONTACT_REQUEST, pb.Kind_KIND_CONTACT_ACCEPT, pb.Kind_KIND_CONTACT_DECLINE, pb.Kind_KIND_CONTACT_REMOVE:
		return d.Recipient != d.Source.Actor.User
	}
	return false
}

// touchesGroups reports whether d may change its recipient's groups and
// threads: a group or thread operation.
func touchesGroups(d *pb.Deliver) bool {
	return d.Source.GetGroup() != nil || d.Source.GetThread() != nil
}

func applyConversation(c *pb.Conversation, src *pb.Event, e *pb.TimelineEntry, own bool) {
	switch src.Kind {
	case pb.Kind_KIND_MESSAGE_SEND:
		c.LastSeq, c.LastMessageId, c.Deleted = e.Seq, src.EventId, false
		if !own {
			c.Unread++
		} else {
			c.ReadSeq = e.Seq // what the user sent, it has read
		}
	case pb.Kind_KIND_CONVERSATION_READ:
		if own {
			c.Unread, c.ReadSeq = 0, c.LastSeq
		}
	case pb.Kind_KIND_CONVERSATION_PIN:
		c.Pinned, c.PinnedAtMs = true, src.TimeUnixMs
	case pb.Kind_KIND_CONVERSATION_UNPIN:
		c.Pinned, c.PinnedAtMs = false, 0
	case pb.Kind_KIND_CONVERSATION_DELETE:
		c.Deleted, c.Unread, c.ReadSeq = true, 0, c.LastSeq
	case pb.Kind_KIND_CONVERSATION_MARK:
		c.Marks |= 1 << uint(src.GetConversation().Mark)
	case pb.Kind_KIND_CONVERSATION_UNMARK:
		c.Marks &^= 1 << uint(src.GetConversation().Mark)
	case pb.Kind_KIND_REMOTE_MESSAGES_REMOVE:
		c.ClearedSeq, c.Unread, c.ReadSeq = e.Seq, 0, c.LastSeq
	}
}

func dropPrefix(set []string, prefix string) []string {
	out := set[:0:0]
	for _, s := range set {
		if len(s) < len(prefix) || s[:len(prefix)] != prefix {
			out = append(out, s)
		}
	}
	return out
}

// OpenTimeline gives a user's timeline its epoch when its first device logs
// in, before any entry exists, so that the first snapshot a device gets is a
// real position it can acknowledge and later continue from (as events, not
// a second snapshot). m is the current meta (nil or without an epoch when
// there is none); ev is the accepted LOGIN. It returns nil when the timeline
// already has an epoch.
func OpenTimeline(m *pb.TimelineMeta, ev *pb.Event) *pb.TimelineMeta {
	if m.GetEpoch() != "" {
		return nil
	}
	return &pb.TimelineMeta{Epoch: ev.EventId, FirstSeq: 1, LastSeq: 0, FirstTimeUnixMs: ev.TimeUnixMs}
}

// Visible reports whether a timeline entry is shown on device loginID: not
// on the device that performed it, and a message to one own device only
// there.
func Visible(e *pb.TimelineEntry, loginID string) bool {
	if e.OnlyLoginId != "" {
		return e.OnlyLoginId == loginID
	}
	return e.ExcludeLoginId == "" || e.ExcludeLoginId != loginID
}

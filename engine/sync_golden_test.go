package engine

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// TestSyncGolden plays the sync rules (contacts, groups, threads,
// conversations, messages) as datadriven files: each command is an
// operation named by its kind ("contact_request", "group_kick", …) with
// literal arguments, and each expected block the decision, every copy the
// operation fans out (recipient, timeline seq, conversation) and the state
// it changed. Copies are applied at once to their recipients, as if every
// user lived on one partition.
// Regenerate with: go test ./engine -run TestSyncGolden -rewrite
//
// Arguments: user= (the actor, default alice), by= (its login ID), and per
// payload: peer= (contacts); group= users=a,b name= reason= mute= attrs=k:v
// (groups); thread= msg= (threads); type=user|group|thread|chatroom|self
// to= msg= body= group= (messages); conv= type= mark= msg= (conversations
// and receipts); room= (chatrooms). "show user=" prints a user's state,
// "show group=" a group.
func TestSyncGolden(t *testing.T) {
	datadriven.Walk(t, "testdata/sync", func(t *testing.T, path string) {
		w := &syncWorld{pol: DefaultPolicy(), users: map[string]*syncUser{}, groups: map[string]*pb.Group{}, rooms: map[string]*pb.Chatroom{}}
		datadriven.RunTest(t, path, w.run)
	})
}

type syncUser struct {
	sessions *pb.UserSessions
	st       UserState
	convs    map[string]*pb.Conversation // by chat type and id
	timeline []*pb.TimelineEntry
}

type syncWorld struct {
	pol    *pb.Policy
	users  map[string]*syncUser
	groups map[string]*pb.Group
	rooms  map[string]*pb.Chatroom
	offset int64
}

func (w *syncWorld) user(name string) *syncUser {
	u := w.users[name]
	if u == nil {
		u = &syncUser{
			sessions: &pb.UserSessions{},
			st:       UserState{Contacts: &pb.Contacts{}, Groups: &pb.UserGroups{}, Meta: &pb.TimelineMeta{}},
			convs:    map[string]*pb.Conversation{},
		}
		w.users[name] = u
	}
	return u
}

var chatTypes = map[string]pb.ChatType{
	"user": pb.ChatType_CHAT_TYPE_USER, "group": pb.ChatType_CHAT_TYPE_GROUP,
	"thread": pb.ChatType_CHAT_TYPE_THREAD, "chatroom": pb.ChatType_CHAT_TYPE_CHATROOM,
	"self": pb.ChatType_CHAT_TYPE_SELF_DEVICE,
}

func chatTypeName(ct pb.ChatType) string {
	for k, v := range chatTypes {
		if v == ct {
			return k
		}
	}
	return ct.String()
}

func list(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func (w *syncWorld) run(t *testing.T, d *datadriven.TestData) string {
	arg := func(k, def string) string {
		for _, a := range d.CmdArgs {
			if a.Key == k {
				if len(a.Vals) == 0 {
					return "true"
				}
				return strings.Join(a.Vals, ",")
			}
		}
		return def
	}
	if d.Cmd == "show" {
		var b strings.Builder
		if g := arg("group", ""); g != "" {
			writeGroup(&b, g, w.groups[g])
		}
		if u := arg("user", ""); u != "" {
			w.writeUser(&b, u)
		}
		return b.String()
	}
	kind, ok := KindByName(d.Cmd)
	if !ok {
		t.Fatalf("unknown command %q", d.Cmd)
	}
	ki, _ := LookupKind(kind)
	actor := arg("user", "alice")
	pos := Position{Offset: w.offset}
	w.offset++
	opID := fmt.Sprint("op", pos.Offset)
	ev := &pb.Event{SchemaVersion: SchemaVersion, App: "app", ClientOpId: opID, Kind: kind,
		Actor: &pb.Actor{User: actor, LoginId: arg("by", "")}, TimeUnixMs: 1000 * pos.Offset}
	ct := chatTypes[arg("type", "user")]
	switch ki.payload {
	case plLogin:
		p, _ := strconv.Atoi(arg("p", "1"))
		ev.Payload = &pb.Event_Login{Login: &pb.Login{Platform: int32(p), LoginId: arg("id", "")}}
	case plContact:
		ev.Payload = &pb.Event_Contact{Contact: &pb.ContactOp{User: arg("peer", "")}}
	case plGroup:
		op := &pb.GroupOp{GroupId: arg("group", "g1"), Users: list(arg("users", "")), Name: arg("name", ""), Reason: arg("reason", "")}
		op.MuteMs, _ = strconv.ParseInt(arg("mute", "0"), 10, 64)
		for _, kv := range list(arg("attrs", "")) {
			k, v, _ := strings.Cut(kv, ":")
			op.Attributes = append(op.Attributes, &pb.Attribute{Key: k, Value: v})
		}
		ev.Payload = &pb.Event_Group{Group: op}
	case plThread:
		ev.Payload = &pb.Event_Thread{Thread: &pb.ThreadOp{ThreadId: arg("thread", "t1"), GroupId: arg("group", "g1"),
			Name: arg("name", ""), Users: list(arg("users", "")), MessageId: arg("msg", "")}}
	case plMessage:
		ev.Payload = &pb.Event_Message{Message: &pb.MessageSend{ChatType: ct, To: arg("to", ""),
			ClientMsgId: arg("msg", opID), ContentType: "text", Body: []byte(arg("body", "hi")), GroupId: arg("group", "")}}
	case plReceipt:
		ev.Payload = &pb.Event_Receipt{Receipt: &pb.Receipt{ChatType: ct, ConversationId: arg("conv", ""), MessageId: arg("msg", "")}}
	case plConversation:
		mark, _ := strconv.Atoi(arg("mark", "0"))
		ev.Payload = &pb.Event_Conversation{Conversation: &pb.ConversationRef{ChatType: ct, ConversationId: arg("conv", ""), Mark: int32(mark)}}
	case plChatroom:
		ev.Payload = &pb.Event_Chatroom{Chatroom: &pb.ChatroomOp{RoomId: arg("room", "r1")}}
	}
	ev.StreamKey = StreamKeyFor(ev)
	ev.EventId = EventID(ev.StreamKey, actor, opID)
	if err := Validate(ev); err != nil {
		return fmt.Sprintf("invalid: code %d\n", CodeOf(err))
	}

	var (
		dec *pb.Decision
		dls []*pb.Deliver
		gid string
	)
	m := ev.GetMessage()
	a := w.user(actor)
	switch {
	case ki.Category == CatSession:
		a.sessions, dec = ApplySession(a.sessions, w.pol, ev, pos)
	case ki.Category == CatContact:
		var next *pb.Contacts
		next, dec, dls = ApplyContact(a.st.Contacts, w.pol, ev, pos)
		a.st.Contacts = next
	case ki.Category == CatGroup || ki.Category == CatThread ||
		m.GetChatType() == pb.ChatType_CHAT_TYPE_GROUP || m.GetChatType() == pb.ChatType_CHAT_TYPE_THREAD:
		gid = ev.GetGroup().GetGroupId()
		switch {
		case ev.GetThread() != nil:
			gid = ev.GetThread().GroupId
		case m.GetChatType() == pb.ChatType_CHAT_TYPE_GROUP:
			gid = m.To
		case m.GetChatType() == pb.ChatType_CHAT_TYPE_THREAD:
			gid = m.GroupId
		}
		before := w.groups[gid]
		var next *pb.Group
		next, dec, dls = ApplyGroup(before, w.pol, ev, pos)
		if dec.Code != 0 && next != before {
			t.Fatalf("a refused group operation changed the group")
		}
		if next == nil {
			delete(w.groups, gid)
		} else {
			w.groups[gid] = next
		}
	case ki.Category == CatChatroom || m.GetChatType() == pb.ChatType_CHAT_TYPE_CHATROOM:
		rid := ev.GetChatroom().GetRoomId()
		if m != nil {
			rid = m.To
		}
		r := w.rooms[rid]
		if r == nil {
			r = &pb.Chatroom{}
		}
		w.rooms[rid], dec, dls = ApplyChatroom(r, w.pol, ev, pos)
	case m != nil:
		dec, dls = ApplyUserMessage(a.sessions, w.pol, ev, pos)
	default:
		dec, dls = ApplyOwnOperation(w.pol, ev, pos)
	}

	var b strings.Builder
	if dec.Code == 0 {
		b.WriteString("accepted\n")
	} else {
		fmt.Fprintf(&b, "refused %d: %s\n", dec.Code, dec.Message)
		if len(dls) > 0 {
			t.Fatalf("a refused operation fanned out %d copies", len(dls))
		}
	}
	writeEnded(&b, dec.Ended)
	touched := []string{actor}
	for _, dl := range dls {
		u := w.user(dl.Recipient)
		st := u.st
		ck := ""
		if ct, id, ok := ConversationOf(dl); ok {
			ck = chatTypeName(ct) + "/" + id
			st.Conv = u.convs[ck]
		}
		next, e := ApplyDelivery(st, w.pol, dl)
		checkInPlace(t, st, w.pol, dl, next, e)
		fmt.Fprintf(&b, "copy to %s", dl.Recipient)
		if dl.MultiDevice {
			b.WriteString(" (multi-device)")
		} else {
			fmt.Fprintf(&b, " from=%s", dl.From)
		}
		if dl.ExcludeLoginId != "" {
			fmt.Fprintf(&b, " not-on=%s", dl.ExcludeLoginId)
		}
		if dl.OnlyLoginId != "" {
			fmt.Fprintf(&b, " only-on=%s", dl.OnlyLoginId)
		}
		if e == nil {
			b.WriteString(": dropped\n")
			continue
		}
		fmt.Fprintf(&b, ": seq=%d", e.Seq)
		if ck != "" {
			fmt.Fprintf(&b, " conv=%s", ck)
		}
		b.WriteString("\n")
		if ck != "" {
			u.convs[ck] = next.Conv
		}
		next.Conv = nil
		u.st = next
		u.timeline = append(u.timeline, e)
		if !slices.Contains(touched, dl.Recipient) {
			touched = append(touched, dl.Recipient)
		}
	}
	if dec.Code != 0 {
		return b.String()
	}
	switch {
	case gid != "":
		writeGroup(&b, gid, w.groups[gid])
		for _, u := range touched {
			writeGroups(&b, u, w.user(u).st.Groups)
		}
	case ki.Category == CatContact:
		for _, u := range touched {
			writeContacts(&b, u, w.user(u).st.Contacts)
		}
	case ki.Category == CatChatroom || m.GetChatType() == pb.ChatType_CHAT_TYPE_CHATROOM:
		rid := ev.GetChatroom().GetRoomId()
		if m != nil {
			rid = m.To
		}
		fmt.Fprintf(&b, "room %s: members=%v\n", rid, w.rooms[rid].GetMembers())
	case ki.Category == CatSession:
		writeDevices(&b, actor, a.sessions)
	default:
		for _, u := range touched {
			w.writeConvs(&b, u)
		}
	}
	return b.String()
}

func (w *syncWorld) writeUser(b *strings.Builder, name string) {
	u := w.user(name)
	writeContacts(b, name, u.st.Contacts)
	writeGroups(b, name, u.st.Groups)
	w.writeConvs(b, name)
	m := u.st.Meta
	fmt.Fprintf(b, "%s timeline: first=%d last=%d\n", name, m.FirstSeq, m.LastSeq)
	for _, e := range u.timeline {
		fmt.Fprintf(b, "  %d %s by %s from=%s", e.Seq, KindName(e.Source.Kind), e.Source.Actor.User, e.From)
		if e.ConversationId != "" {
			fmt.Fprintf(b, " conv=%s/%s", chatTypeName(e.ChatType), e.ConversationId)
		}
		if e.MultiDevice {
			b.WriteString(" multi-device")
		}
		b.WriteString("\n")
	}
}

func (w *syncWorld) writeConvs(b *strings.Builder, name string) {
	u := w.user(name)
	keys := make([]string, 0, len(u.convs))
	for k := range u.convs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		c := u.convs[k]
		fmt.Fprintf(b, "%s conv %s: last=%d read=%d unread=%d", name, k, c.LastSeq, c.ReadSeq, c.Unread)
		if c.Pinned {
			fmt.Fprintf(b, " pinned@%d", c.PinnedAtMs)
		}
		if c.Marks != 0 {
			fmt.Fprintf(b, " marks=%b", c.Marks)
		}
		if c.Deleted {
			b.WriteString(" deleted")
		}
		if c.ClearedSeq != 0 {
			fmt.Fprintf(b, " cleared=%d", c.ClearedSeq)
		}
		b.WriteString("\n")
	}
}

func writeContacts(b *strings.Builder, name string, c *pb.Contacts) {
	fmt.Fprintf(b, "%s contacts:", name)
	field(b, "friends", c.Friends)
	field(b, "in", c.RequestsIn)
	field(b, "out", c.RequestsOut)
	field(b, "blocked", c.Blocked)
	b.WriteString("\n")
}

func writeGroups(b *strings.Builder, name string, g *pb.UserGroups) {
	fmt.Fprintf(b, "%s groups:", name)
	field(b, "groups", g.Groups)
	field(b, "threads", g.Threads)
	b.WriteString("\n")
}

func writeGroup(b *strings.Builder, id string, g *pb.Group) {
	if g == nil {
		fmt.Fprintf(b, "group %s: none\n", id)
		return
	}
	fmt.Fprintf(b, "group %s: owner=%s", id, g.Owner)
	if g.Name != "" {
		fmt.Fprintf(b, " name=%q", g.Name)
	}
	field(b, "admins", g.Admins)
	field(b, "members", g.Members)
	var mutes []string
	for _, m := range g.Mutes {
		mutes = append(mutes, fmt.Sprintf("%s<%d", m.User, m.UntilMs))
	}
	field(b, "mutes", mutes)
	field(b, "allow", g.AllowList)
	field(b, "block", g.BlockList)
	field(b, "blocked-by", g.BlockedBy)
	field(b, "applicants", g.Applicants)
	field(b, "invitees", g.Invitees)
	var attrs []string
	for _, a := range g.Attributes {
		for _, kv := range a.Attributes {
			attrs = append(attrs, fmt.Sprintf("%s.%s=%s", a.User, kv.Key, kv.Value))
		}
	}
	field(b, "attrs", attrs)
	b.WriteString("\n")
	for _, th := range g.Threads {
		fmt.Fprintf(b, "  thread %s: owner=%s name=%q", th.ThreadId, th.Owner, th.Name)
		if th.MessageId != "" {
			fmt.Fprintf(b, " msg=%s", th.MessageId)
		}
		field(b, "members", th.Members)
		b.WriteString("\n")
	}
}

func field(b *strings.Builder, name string, vs []string) {
	if len(vs) > 0 {
		fmt.Fprintf(b, " %s=[%s]", name, strings.Join(vs, " "))
	}
}

// The group rules on random operations: ApplyGroup never changes the group
// it is given, a refusal returns that same group and no copies, an accepted
// operation's copies start with the actor's own, and the group's lists stay
// sorted sets (encodings, and so digests, do not depend on arrival order).
func TestApplyGroupRandomOperations(t *testing.T) {
	var groupKinds []pb.Kind
	for _, ki := range Kinds() {
		if ki.Category == CatGroup || ki.Category == CatThread {
			groupKinds = append(groupKinds, ki.Kind)
		}
	}
	users := []string{"alice", "bob", "carol", "dave"}
	rng := uint64(20261201)
	pick := func(n int) int { rng = rng*6364136223846793005 + 1442695040888963407; return int(rng>>33) % n }
	pol := DefaultPolicy()
	var g *pb.Group
	accepted := map[pb.Kind]int{}
	for i := range 20_000 {
		actor := users[pick(len(users))]
		kind := groupKinds[pick(len(groupKinds))]
		if g == nil && pick(4) == 0 {
			kind = pb.Kind_KIND_GROUP_CREATE
		}
		ev := &pb.Event{App: "app", ClientOpId: fmt.Sprint("op", i), EventId: fmt.Sprint("ev", i), Kind: kind,
			Actor: &pb.Actor{User: actor}, TimeUnixMs: int64(i) * 1000}
		target := []string{users[pick(len(users))]}
		if ki, _ := LookupKind(kind); ki.Category == CatThread {
			ev.Payload = &pb.Event_Thread{Thread: &pb.ThreadOp{GroupId: "g", ThreadId: fmt.Sprint("t", pick(2)), Name: "n", Users: target}}
		} else {
			ev.Payload = &pb.Event_Group{Group: &pb.GroupOp{GroupId: "g", Users: target, MuteMs: int64(pick(3)) * 5000}}
		}
		if Validate(ev) != nil {
			continue
		}
		before := proto.Clone(g)
		next, d, dls := ApplyGroup(g, pol, ev, Position{Offset: int64(i)})
		if g != nil && !proto.Equal(before, g) {
			t.Fatalf("op %d %s: ApplyGroup changed its input", i, KindName(kind))
		}
		if d.Code != 0 {
			if next != g || len(dls) != 0 {
				t.Fatalf("op %d %s refused (%s) but changed the group or fanned out", i, KindName(kind), d.Message)
			}
			continue
		}
		accepted[kind]++
		if len(dls) == 0 || dls[0].Recipient != actor || !dls[0].MultiDevice {
			t.Fatalf("op %d %s: copies %v do not start with the actor's own", i, KindName(kind), dls)
		}
		for _, l := range [][]string{next.GetMembers(), next.GetAdmins(), next.GetAllowList(), next.GetBlockList(),
			next.GetBlockedBy(), next.GetApplicants(), next.GetInvitees()} {
			if !slices.IsSorted(l) || len(slices.Compact(slices.Clone(l))) != len(l) {
				t.Fatalf("op %d %s: a list is not a sorted set: %v", i, KindName(kind), l)
			}
		}
		if next != nil && !has(next.Members, next.Owner) {
			t.Fatalf("op %d %s: owner %s is not a member %v", i, KindName(kind), next.Owner, next.Members)
		}
		g = next
	}
	// The walk must reach most kinds, or it proves little.
	if len(accepted) < len(groupKinds)*2/3 {
		t.Fatalf("only %d of %d group and thread kinds were ever accepted: %v", len(accepted), len(groupKinds), accepted)
	}
}

// checkInPlace asserts that ApplyDeliveryInPlace, on a copy of st, makes
// what ApplyDelivery made (next, e), reports as changed exactly the parts
// that differ from st, and leaves a dropped delivery's state untouched.
func checkInPlace(t *testing.T, st UserState, pol *pb.Policy, dl *pb.Deliver, next UserState, e *pb.TimelineEntry) {
	t.Helper()
	own := UserState{Contacts: proto.Clone(st.Contacts).(*pb.Contacts), Groups: proto.Clone(st.Groups).(*pb.UserGroups),
		Meta: proto.Clone(st.Meta).(*pb.TimelineMeta)}
	if st.Conv != nil {
		own.Conv = proto.Clone(st.Conv).(*pb.Conversation)
	}
	got, ch := ApplyDeliveryInPlace(&own, pol, dl)
	if e == nil {
		if got != nil || !proto.Equal(own.Meta, st.Meta) || !proto.Equal(own.Contacts, st.Contacts) || !proto.Equal(own.Groups, st.Groups) {
			t.Fatalf("in place: a dropped delivery to %s changed its state or made an entry", dl.Recipient)
		}
		return
	}
	switch {
	case !proto.Equal(got, e):
		t.Fatalf("in place: entry %v, want %v", got, e)
	case !proto.Equal(own.Meta, next.Meta) || !proto.Equal(own.Conv, next.Conv) ||
		!proto.Equal(own.Contacts, next.Contacts) || !proto.Equal(own.Groups, next.Groups):
		t.Fatalf("in place: state %v, want %v", own, next)
	case ch.Contacts == proto.Equal(st.Contacts, next.Contacts) || ch.Groups == proto.Equal(st.Groups, next.Groups):
		t.Fatalf("in place: changed %+v for a delivery of %v to %s", ch, dl.Source.Kind, dl.Recipient)
	}
}

package engine

import (
	"strings"

	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// Category groups kinds by the projection and event handler that own them.
type Category int

const (
	CatSession Category = iota + 1
	CatMessage
	CatContact
	CatGroup
	CatThread
	CatConversation
	CatChatroom
	// CatDerived kinds are appended by mdsync itself (fan-out copies).
	CatDerived
	// CatPresence kinds record a device's connections; the gateway appends
	// them, a client never submits one (docs/design-notes.md, "Device
	// presence").
	CatPresence
)

// payloadCase names the oneof field a kind carries.
type payloadCase int

const (
	plEmpty payloadCase = iota + 1
	plLogin
	plKick
	plPolicy
	plMessage
	plReceipt
	plConversation
	plContact
	plGroup
	plThread
	plChatroom
	plDeliver
	plPresence
)

// KindInfo describes one kind: its names on the wire and what it carries.
type KindInfo struct {
	Kind     pb.Kind
	Category Category
	// Name is the snake_case name used in JSON (replay files, export).
	Name string
	// Event is the `name` of the gateway's event frames of this kind, for
	// multi-device and single-device events alike (docs/protocol.md, "Event
	// names"): the seed Web SDK's onMultiDeviceEvent operation for thread,
	// conversation and remote-message kinds ("chatThreadCreate",
	// "pinnedConversation", "deleteRoaming"); the Web SDK's single-device
	// event for contact kinds (its callback, "onContactInvited") and group
	// kinds (its onGroupEvent operation, "requestToJoin"), since the seeds
	// give a multi-device contact or group event the single-device event's
	// name; else Name.
	Event   string
	payload payloadCase
	// needsUsers: the payload's users list must be non-empty.
	needsUsers bool
}

var kindTable = []KindInfo{
	{pb.Kind_KIND_LOGIN, CatSession, "login", "login", plLogin, false},
	{pb.Kind_KIND_LOGOUT, CatSession, "logout", "logout", plEmpty, false},
	{pb.Kind_KIND_KICK_DEVICE, CatSession, "kick_device", "kick_device", plKick, false},
	{pb.Kind_KIND_KICK_ALL_DEVICES, CatSession, "kick_all_devices", "kick_all_devices", plEmpty, false},
	{pb.Kind_KIND_PASSWORD_CHANGE, CatSession, "password_change", "password_change", plEmpty, false},
	{pb.Kind_KIND_USER_REMOVE, CatSession, "user_remove", "user_remove", plEmpty, false},
	{pb.Kind_KIND_POLICY_SET, CatSession, "policy_set", "policy_set", plPolicy, false},
	{pb.Kind_KIND_DEVICE_CONNECTED, CatPresence, "device_connected", "device_connected", plPresence, false},
	{pb.Kind_KIND_DEVICE_DISCONNECTED, CatPresence, "device_disconnected", "device_disconnected", plPresence, false},

	{pb.Kind_KIND_MESSAGE_SEND, CatMessage, "message_send", "message_send", plMessage, false},
	{pb.Kind_KIND_DELIVERY_RECEIPT, CatMessage, "delivery_receipt", "delivery_receipt", plReceipt, false},
	{pb.Kind_KIND_READ_RECEIPT, CatMessage, "read_receipt", "read_receipt", plReceipt, false},
	{pb.Kind_KIND_CONVERSATION_READ, CatMessage, "conversation_read", "conversation_read", plConversation, false},

	{pb.Kind_KIND_CONTACT_REQUEST, CatContact, "contact_request", "onContactInvited", plContact, false},
	{pb.Kind_KIND_CONTACT_ACCEPT, CatContact, "contact_accept", "onContactAgreed", plContact, false},
	{pb.Kind_KIND_CONTACT_DECLINE, CatContact, "contact_decline", "onContactRefuse", plContact, false},
	{pb.Kind_KIND_CONTACT_REMOVE, CatContact, "contact_remove", "onContactDeleted", plContact, false},
	{pb.Kind_KIND_CONTACT_BAN, CatContact, "contact_ban", "onContactBlocked", plContact, false},
	{pb.Kind_KIND_CONTACT_ALLOW, CatContact, "contact_allow", "onContactUnblocked", plContact, false},

	{pb.Kind_KIND_GROUP_CREATE, CatGroup, "group_create", "create", plGroup, false},
	{pb.Kind_KIND_GROUP_DESTROY, CatGroup, "group_destroy", "destroy", plGroup, false},
	{pb.Kind_KIND_GROUP_JOIN, CatGroup, "group_join", "memberPresence", plGroup, false},
	{pb.Kind_KIND_GROUP_LEAVE, CatGroup, "group_leave", "memberAbsence", plGroup, false},
	{pb.Kind_KIND_GROUP_APPLY, CatGroup, "group_apply", "requestToJoin", plGroup, false},
	{pb.Kind_KIND_GROUP_APPLY_ACCEPT, CatGroup, "group_apply_accept", "acceptRequest", plGroup, true},
	{pb.Kind_KIND_GROUP_APPLY_DECLINE, CatGroup, "group_apply_decline", "joinPublicGroupDeclined", plGroup, true},
	{pb.Kind_KIND_GROUP_INVITE, CatGroup, "group_invite", "inviteToJoin", plGroup, true},
	{pb.Kind_KIND_GROUP_INVITE_ACCEPT, CatGroup, "group_invite_accept", "acceptInvite", plGroup, false},
	{pb.Kind_KIND_GROUP_INVITE_DECLINE, CatGroup, "group_invite_decline", "rejectInvite", plGroup, false},
	{pb.Kind_KIND_GROUP_KICK, CatGroup, "group_kick", "removeMember", plGroup, true},
	{pb.Kind_KIND_GROUP_BAN, CatGroup, "group_ban", "blockMember", plGroup, true},
	{pb.Kind_KIND_GROUP_ALLOW, CatGroup, "group_allow", "unblockMember", plGroup, true},
	{pb.Kind_KIND_GROUP_BLOCK, CatGroup, "group_block", "blockGroup", plGroup, false},
	{pb.Kind_KIND_GROUP_UNBLOCK, CatGroup, "group_unblock", "unblockGroup", plGroup, false},
	{pb.Kind_KIND_GROUP_ASSIGN_OWNER, CatGroup, "group_assign_owner", "changeOwner", plGroup, true},
	{pb.Kind_KIND_GROUP_ADD_ADMIN, CatGroup, "group_add_admin", "setAdmin", plGroup, true},
	{pb.Kind_KIND_GROUP_REMOVE_ADMIN, CatGroup, "group_remove_admin", "removeAdmin", plGroup, true},
	{pb.Kind_KIND_GROUP_ADD_MUTE, CatGroup, "group_add_mute", "muteMember", plGroup, true},
	{pb.Kind_KIND_GROUP_REMOVE_MUTE, CatGroup, "group_remove_mute", "unmuteMember", plGroup, true},
	{pb.Kind_KIND_GROUP_ADD_USER_ALLOW_LIST, CatGroup, "group_add_user_allow_list", "addUserToAllowlist", plGroup, true},
	{pb.Kind_KIND_GROUP_REMOVE_USER_ALLOW_LIST, CatGroup, "group_remove_user_allow_list", "removeAllowlistMember", plGroup, true},
	{pb.Kind_KIND_GROUP_MEMBER_ATTRIBUTES_CHANGED, CatGroup, "group_member_attributes_changed", "memberAttributesUpdate", plGroup, false},

	{pb.Kind_KIND_THREAD_CREATE, CatThread, "thread_create", "chatThreadCreate", plThread, false},
	{pb.Kind_KIND_THREAD_DESTROY, CatThread, "thread_destroy", "chatThreadDestroy", plThread, false},
	{pb.Kind_KIND_THREAD_JOIN, CatThread, "thread_join", "chatThreadJoin", plThread, false},
	{pb.Kind_KIND_THREAD_LEAVE, CatThread, "thread_leave", "chatThreadLeave", plThread, false},
	{pb.Kind_KIND_THREAD_UPDATE, CatThread, "thread_update", "chatThreadNameUpdate", plThread, false},
	{pb.Kind_KIND_THREAD_KICK, CatThread, "thread_kick", "chatThreadKick", plThread, true},

	{pb.Kind_KIND_CONVERSATION_PIN, CatConversation, "conversation_pin", "pinnedConversation", plConversation, false},
	{pb.Kind_KIND_CONVERSATION_UNPIN, CatConversation, "conversation_unpin", "unpinnedConversation", plConversation, false},
	{pb.Kind_KIND_CONVERSATION_DELETE, CatConversation, "conversation_delete", "deleteConversation", plConversation, false},
	{pb.Kind_KIND_CONVERSATION_MARK, CatConversation, "conversation_mark", "markConversation", plConversation, false},
	{pb.Kind_KIND_CONVERSATION_UNMARK, CatConversation, "conversation_unmark", "unMarkConversation", plConversation, false},
	{pb.Kind_KIND_REMOTE_MESSAGES_REMOVE, CatConversation, "remote_messages_remove", "deleteRoaming", plConversation, false},

	{pb.Kind_KIND_CHATROOM_JOIN, CatChatroom, "chatroom_join", "chatroom_join", plChatroom, false},
	{pb.Kind_KIND_CHATROOM_LEAVE, CatChatroom, "chatroom_leave", "chatroom_leave", plChatroom, false},

	{pb.Kind_KIND_DELIVER, CatDerived, "deliver", "deliver", plDeliver, false},
}

var (
	kindByValue = map[pb.Kind]*KindInfo{}
	kindByName  = map[string]*KindInfo{}
)

func init() {
	for i := range kindTable {
		k := &kindTable[i]
		kindByValue[k.Kind] = k
		kindByName[k.Name] = k
	}
}

// Kinds returns every defined kind, in wire-value order.
func Kinds() []KindInfo {
	out := make([]KindInfo, len(kindTable))
	copy(out, kindTable)
	return out
}

// LookupKind returns the description of k, or false for an unknown kind.
func LookupKind(k pb.Kind) (KindInfo, bool) {
	ki, ok := kindByValue[k]
	if !ok {
		return KindInfo{}, false
	}
	return *ki, true
}

// KindByName resolves a JSON kind name ("login", "group_kick", or the proto
// enum name "KIND_LOGIN").
func KindByName(name string) (pb.Kind, bool) {
	if ki, ok := kindByName[name]; ok {
		return ki.Kind, true
	}
	if v, ok := pb.Kind_value[strings.ToUpper(name)]; ok && v != 0 {
		if _, known := kindByValue[pb.Kind(v)]; known {
			return pb.Kind(v), true
		}
	}
	return 0, false
}

// KindName is the JSON name of k ("login"), or the enum string if unknown.
func KindName(k pb.Kind) string {
	if ki, ok := kindByValue[k]; ok {
		return ki.Name
	}
	return k.String()
}

// EventName is the `name` of k's event frames (KindInfo.Event), or the
// enum string for an unknown kind.
func EventName(k pb.Kind) string {
	if ki, ok := kindByValue[k]; ok {
		return ki.Event
	}
	return k.String()
}

// payloadFields names the Event oneof field of each payload case.
var payloadFields = map[payloadCase]string{
	plEmpty: "empty", plLogin: "login", plKick: "kick_device", plPolicy: "policy_set", plMessage: "message",
	plReceipt: "receipt", plConversation: "conversation", plContact: "contact", plGroup: "group",
	plThread: "thread", plChatroom: "chatroom", plDeliver: "deliver",
	plPresence: "presence",
}

// Payload is the name of the Event payload field k carries ("login",
// "group"...; "empty" for kinds that carry none).
func (k KindInfo) Payload() string { return payloadFields[k.payload] }

// NeedsUsers reports whether k's payload must name at least one user.
func (k KindInfo) NeedsUsers() bool { return k.needsUsers }

// Public types of the SDK and the wire shapes of docs/protocol.md. Protobuf
// parts use protobuf's JSON mapping with .proto field names; 64-bit
// integers may arrive as strings.

/** The seeds' chat types. A singleChat to one of the user's own login IDs goes to that device only. */
export type ChatType = "singleChat" | "groupChat" | "chatRoom" | "chatThread";

/** Wire chat types (protobuf enum names). */
export type WireChatType =
  | "CHAT_TYPE_UNSPECIFIED"
  | "CHAT_TYPE_USER"
  | "CHAT_TYPE_GROUP"
  | "CHAT_TYPE_CHATROOM"
  | "CHAT_TYPE_THREAD"
  | "CHAT_TYPE_SELF_DEVICE";

/** A number that protobuf's JSON mapping may write as a string (int64, uint64). */
export type Int64 = number | string;

export interface Actor {
  user?: string;
  login_id?: string;
  admin?: boolean;
}

/** The payload fields of an mdsync.v1.Event; exactly one is set per kind. */
export interface EventPayload {
  login?: { platform?: number; login_id?: string; device_name?: string; extension?: string; auto_login?: boolean };
  kick_device?: { login_id: string };
  message?: { chat_type: WireChatType; to: string; client_msg_id?: string; content_type?: string; body?: string; group_id?: string };
  receipt?: { chat_type: WireChatType; conversation_id: string; message_id?: string };
  conversation?: { chat_type: WireChatType; conversation_id: string; mark?: number };
  contact?: { user: string; ext?: string };
  group?: { group_id: string; users?: string[]; name?: string; reason?: string; attributes?: { key: string; value: string }[]; mute_ms?: Int64 };
  thread?: { thread_id: string; group_id?: string; name?: string; users?: string[]; message_id?: string };
  chatroom?: { room_id: string };
  empty?: Record<string, never>;
}

/** An mdsync.v1.Event as a device submits it (the gateway sets app and actor). */
export interface WireEvent extends EventPayload {
  kind: string;
  client_op_id?: string;
  app?: string;
  actor?: Actor;
  event_id?: string;
  time_unix_ms?: Int64;
}

/** An mdsync.v1.TimelineEntry. */
export interface TimelineEntry {
  seq?: Int64;
  entry_id?: string;
  from?: string;
  multi_device?: boolean;
  exclude_login_id?: string;
  only_login_id?: string;
  source?: WireEvent;
  source_partition?: number;
  source_offset?: Int64;
  conversation_id?: string;
  chat_type?: WireChatType;
}

/** One frame from the server; which fields are set depends on `type`. */
export interface InFrame {
  type: string;
  id?: string;
  code?: number;
  message?: string;
  // login_result
  login_id?: string;
  reconnect?: boolean;
  resumed?: boolean;
  policy_version?: Int64;
  // result
  event_id?: string;
  message_id?: string;
  partition?: number;
  offset?: Int64;
  retry_after_ms?: Int64;
  // self_ids_result, history_result
  login_ids?: string[];
  entries?: TimelineEntry[];
  // event, snapshot
  epoch?: string;
  seq?: Int64;
  name?: string;
  entry?: TimelineEntry;
  resync?: boolean;
  /** snapshot: the part's index, from 0; more parts follow while more is true. */
  part?: Int64;
  more?: boolean;
  contacts?: unknown;
  groups?: unknown;
  conversations?: unknown[];
  /** events: event frames, in order (a catch-up batch). */
  events?: InFrame[];
  // kicked, error
  reason?: string;
  by_login_id?: string;
  by_device_name?: string;
  by_extension?: string;
  addr?: string;
}

/** What open() resolves to. */
export interface LoginResult {
  loginId: string;
  reconnect: boolean;
  resumed: boolean;
  policyVersion: number;
}

/** Credentials of open() and of the REST calls (password or token). */
export interface OpenOptions {
  user: string;
  /** The user's password. */
  pwd?: string;
  /** A user token (POST /v1/apps/{app}/users/{user}/tokens). */
  accessToken?: string;
}

/** A device's session ended (kicked/evicted), or an auto-login was refused (214). */
export interface KickedEvent {
  /** 206, 207, 214, 216 or 217. */
  code: number;
  reason: string;
  /** 206: the new device's login ID, name and login extension. */
  byLoginId: string;
  byDeviceName: string;
  byExtension: string;
}

/** Why onDisconnected was called. */
export interface DisconnectedEvent {
  /** 0 for a plain network drop; else the code (kicks, 1016, 1017...). */
  code: number;
  message: string;
  /** True when the SDK reconnects on its own (auto-login). */
  willReconnect: boolean;
}

/** Fields shared by every delivered event. */
export interface BaseEvent {
  /** The seeds' operation string: the frame's `name` (e.g. "pinnedConversation"). */
  operation: string;
  /** Who acted: the user's own ID for multi-device events, the operator's otherwise. */
  from: string;
  /** True for the user's own operation done on another device. */
  multiDevice: boolean;
  /** The source event's kind (KIND_...). */
  kind: string;
  epoch: string;
  seq: number;
  /** Event time (ms since the epoch). */
  time: number;
  entry: TimelineEntry;
}

/** A message (onMessage, onTextMessage). */
export interface MessageEvent extends BaseEvent {
  /** The server's message ID. */
  id: string;
  type: "txt" | "custom";
  /** Text of a txt message; for custom, the body decoded as UTF-8. */
  msg: string;
  contentType: string;
  to: string;
  chatType: ChatType;
  /** The sender's login ID. */
  fromLoginId: string;
  conversationId: string;
}

/** A receipt (onDeliveredMessage, onReadMessage, onChannelMessage). */
export interface ReceiptEvent extends BaseEvent {
  /** The message it acknowledges (empty for a conversation read). */
  mid: string;
  conversationId: string;
  chatType: ChatType;
}

/** A contact operation (onContactEvent and onContactInvited/Agreed/Refuse/Deleted). */
export interface ContactEvent extends BaseEvent {
  /** The other user of the operation. */
  to: string;
  ext: string;
}

/** A group operation (onGroupEvent). */
export interface GroupEvent extends BaseEvent {
  /** The group ID. */
  id: string;
  users: string[];
  name: string;
}

/** A thread, conversation or remote-message event (onMultiDeviceEvent), or another user's thread operation (onChatThreadChange). */
export interface MultiDeviceEvent extends BaseEvent {
  /** What the operation acted on: the thread, group or conversation ID. */
  target: string;
  conversationId: string;
  chatType: ChatType;
  /** chatThread* events: the thread, its group and name. */
  threadId: string;
  groupId: string;
  name: string;
}

/** A snapshot of the device's state (first login, or a resync). The server sends a large one in parts; onSnapshot gets it once, whole, after its last part. */
export interface SnapshotEvent {
  resync: boolean;
  epoch: string;
  seq: number;
  contacts: unknown;
  groups: unknown;
  conversations: unknown[];
}

/** Callbacks of addEventHandler; all optional. */
export interface EventHandlers {
  onConnected?: () => void;
  onDisconnected?: (e: DisconnectedEvent) => void;
  onReconnected?: () => void;
  /** Every error the SDK reports without a caller to reject (kicks included). */
  onError?: (err: import("./errors.js").MdsyncError) => void;
  /** 206, 207, 214 (auto-login refused), 216, 217. */
  onKicked?: (e: KickedEvent) => void;
  /** Every event after dedup, before the specific callbacks. */
  onEvent?: (e: BaseEvent) => void;
  onSnapshot?: (e: SnapshotEvent) => void;
  onMessage?: (m: MessageEvent) => void;
  onTextMessage?: (m: MessageEvent) => void;
  onCustomMessage?: (m: MessageEvent) => void;
  onDeliveredMessage?: (r: ReceiptEvent) => void;
  onReadMessage?: (r: ReceiptEvent) => void;
  /** A whole conversation was read (KIND_CONVERSATION_READ). */
  onChannelMessage?: (r: ReceiptEvent) => void;
  onContactEvent?: (e: ContactEvent) => void;
  onContactInvited?: (e: ContactEvent) => void;
  onContactAgreed?: (e: ContactEvent) => void;
  onContactRefuse?: (e: ContactEvent) => void;
  onContactDeleted?: (e: ContactEvent) => void;
  onGroupEvent?: (e: GroupEvent) => void;
  onChatThreadChange?: (e: MultiDeviceEvent) => void;
  onChatroomEvent?: (e: BaseEvent) => void;
  onMultiDeviceEvent?: (e: MultiDeviceEvent) => void;
}

/** One logged-in device of a user (fetchLoggedInDevices). */
export interface Device {
  login_id: string;
  platform: number;
  device_name: string;
  extension: string;
  login_time_unix_ms: Int64;
  last_seen_unix_ms: Int64;
  remote_addr: string;
  connected: boolean;
  /** The process serving the connected device (host:port); "" when not connected. */
  process: string;
}

/** An operation's decision (REST). */
export interface Decision {
  app?: string;
  user?: string;
  client_op_id?: string;
  event_id?: string;
  kind?: string;
  code?: number;
  message?: string;
  ended?: Ended[];
  partition?: number;
  offset?: Int64;
  policy_version?: Int64;
  login_id?: string;
  message_id?: string;
}

/** An ended session (audit; the explain view). */
export interface Ended {
  session?: {
    login_id?: string;
    platform?: number;
    device_name?: string;
    extension?: string;
    login_partition?: number;
    login_offset?: Int64;
    login_time_unix_ms?: Int64;
  };
  reason?: string;
  code?: number;
  by_login_id?: string;
  by_device_name?: string;
  by_extension?: string;
  by_actor?: Actor;
  policy_version?: Int64;
  partition?: number;
  offset?: Int64;
  time_unix_ms?: Int64;
  user?: string;
}

export type PlatformMode = "PLATFORM_MODE_UNSPECIFIED" | "PLATFORM_MODE_MULTI" | "PLATFORM_MODE_SINGLE";
export type AutoLoginPolicy = "AUTO_LOGIN_POLICY_UNSPECIFIED" | "AUTO_LOGIN_POLICY_KICK_OLDEST" | "AUTO_LOGIN_POLICY_KEEP_CURRENT";

/** An app's device policy. */
export interface Policy {
  version?: Int64;
  mode?: PlatformMode;
  default_limit?: number;
  limits?: { platform: number; limit: number }[];
  auto_login?: AutoLoginPolicy;
  set_offset?: Int64;
  timeline_max_entries?: Int64;
  timeline_max_age_ms?: Int64;
}

/** One item of the admin live feed (GET /v1/apps/{app}/feed). */
export interface FeedItem {
  /** "login", "login_refused" or "ended". */
  type: string;
  app: string;
  user: string;
  login_id: string;
  code: number;
  reason?: string;
  message?: string;
  reconnect?: boolean;
  platform?: number;
  device_name?: string;
  by_login_id?: string;
  by_device_name?: string;
  by_extension?: string;
  by_user?: string;
  by_admin?: boolean;
  policy_version?: number;
  partition: number;
  offset: number;
  time_unix_ms?: number;
}

// The device connection: docs/protocol.md over the browser's (or Node's)
// WebSocket, with the Go SDK's behaviour (client/): pipelined requests
// resent after a reconnect, events deduplicated by (epoch, seq), acks
// batched, reconnects that resume the session or log in again with
// auto-login (never after a kick), 1019 "busy" retried after its
// retry_after_ms, 1018 followed to the owner's address.

import { Code, MdsyncError, isKickCode } from "./errors.js";
import { base64ToUtf8, utf8ToBase64, newId, type Message } from "./message.js";
import { RestClient, type Credential } from "./rest.js";
import type {
  BaseEvent,
  ChatType,
  ContactEvent,
  Decision,
  Device,
  EventHandlers,
  GroupEvent,
  InFrame,
  Int64,
  KickedEvent,
  LoginResult,
  MessageEvent,
  MultiDeviceEvent,
  OpenOptions,
  ReceiptEvent,
  TimelineEntry,
  WireChatType,
  WireEvent,
} from "./types.js";

/** The WebSocket subprotocol of docs/protocol.md, version 1. */
export const Subprotocol = "mdsync.v1";
/** The largest frame the gateway accepts from a device. */
export const MaxFrameBytes = 64 << 10;

/** A WebSocket constructor (the browser's, Node's global, or a compatible one). */
export type WebSocketCtor = new (url: string, protocols?: string | string[]) => WebSocket;

/** Options of a connection; the defaults are stated on each. */
export interface ConnectionOptions {
  /** The gateway: ws://host:port/v1/ws (http(s)://host:port is accepted too). Default: the page's origin. */
  url?: string;
  /** The app (the seeds' appKey). Required. */
  appKey: string;
  /** Device name, shown to a device this login kicks (206). Default "". */
  deviceName?: string;
  /** Platform (osType), 1-100; limits and kicks are per platform. Default 1. */
  osType?: number;
  /** Login extension, shown to a device this login kicks (206). Default "". */
  loginExtension?: string;
  /**
   * Auto-login: after a dropped connection, reconnect with backoff and
   * resume the session, or log in again with auto_login when it is gone
   * (214 under keep-current stops it). A kicked device never logs itself
   * back in. Default true.
   */
  autoLogin?: boolean;
  /** This device's login ID; default: the server generates one (kept across reconnects). */
  loginId?: string;
  /** REST base URL for fetchLoggedInDevices/kickDevice/kickAllDevices. Default: derived from url. */
  restUrl?: string;
  /** WebSocket implementation. Default globalThis.WebSocket. */
  WebSocket?: WebSocketCtor;
  /** fetch implementation of the REST calls. Default globalThis.fetch. */
  fetch?: typeof fetch;
  /** Ping interval. Default 20000 ms (the gateway closes a connection silent for 60 s). */
  heartbeatIntervalMs?: number;
  /** Automatic acks are batched this often. Default 200 ms. Negative: no automatic acks; call ack(). */
  ackIntervalMs?: number;
  /** Reconnect backoff bounds; each wait is jittered. Default 200 ms and 10000 ms. */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** Bounds one connect-and-login. Default 15000 ms. */
  loginTimeoutMs?: number;
  /** Bounds one request (send, getSelfIdsOnOtherPlatform...). Default 30000 ms. */
  requestTimeoutMs?: number;
}

/** What send() and op() resolve to: the operation's decision. */
export interface OpResult {
  /** The client message ID (send) or client op ID. */
  localMsgId: string;
  /** The server's message ID (send), else "". */
  serverMsgId: string;
  eventId: string;
  partition: number;
  offset: number;
}

/** Credentials of fetchLoggedInDevices/kickDevice/kickAllDevices (no login needed). */
export interface DeviceAuth {
  user: string;
  pwd?: string;
  accessToken?: string;
}

type Timer = ReturnType<typeof setTimeout>;

interface Pending {
  frame: Record<string, unknown>;
  resolve: (f: InFrame) => void;
  reject: (e: MdsyncError) => void;
  timer: Timer;
  retry?: Timer;
  /** Sends refused with 1009 or 1018 and a retry_after_ms so far. */
  retries?: number;
}

/** The most sends of one request refused with 1009, or 1018 without an owner, and a retry_after_ms. */
export const MaxRetryAttempts = 5;

/**
 * retryDelay: how long to wait before sending again a request (or a login)
 * refused with code, or -1 when a retry will not help: 1019 (busy: not
 * decided) always; 1009 and 1018 without an owner's address when the
 * server said when with retry_after_ms, at most MaxRetryAttempts sends.
 * A 1018 naming the owner is a redirect, not a retry.
 */
export function retryDelay(code: number, retryAfterMs: number, addr: string, attempt: number): number {
  if (code === Code.Busy) return Math.max(1, retryAfterMs || 100);
  if ((code === Code.Unavailable || (code === Code.NotOwner && !addr)) && retryAfterMs > 0 && attempt < MaxRetryAttempts) return retryAfterMs;
  return -1;
}

interface Live {
  ws: WebSocket;
  sentEpoch: string;
  sentSeq: number;
  /** A connection-level error frame (1016, 1017...) that explains the close. */
  reason: MdsyncError | null;
}

function unref(t: Timer): Timer {
  const u = t as unknown as { unref?: () => void };
  u.unref?.();
  return t;
}

function num(x: Int64 | undefined): number {
  if (x === undefined || x === null) return 0;
  return typeof x === "string" ? Number(x) : x;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => unref(setTimeout(r, ms)));

export function wsUrlOf(url: string): string {
  const u = new URL(url);
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  if (u.pathname === "/" || u.pathname === "") u.pathname = "/v1/ws";
  return u.toString();
}

export function restUrlOf(wsUrl: string): string {
  const u = new URL(wsUrl);
  return `${u.protocol === "wss:" ? "https:" : "http:"}//${u.host}`;
}

function chatTypeOf(w: WireChatType | undefined): ChatType {
  switch (w) {
    case "CHAT_TYPE_GROUP":
      return "groupChat";
    case "CHAT_TYPE_CHATROOM":
      return "chatRoom";
    case "CHAT_TYPE_THREAD":
      return "chatThread";
  }
  return "singleChat";
}

/** Kinds (protobuf enum names) by the callback they go to. */
const contactCallbacks: Record<string, keyof EventHandlers> = {
  KIND_CONTACT_REQUEST: "onContactInvited",
  KIND_CONTACT_ACCEPT: "onContactAgreed",
  KIND_CONTACT_DECLINE: "onContactRefuse",
  KIND_CONTACT_REMOVE: "onContactDeleted",
};

/**
 * One device of one user: open() logs in, close() ends the connection.
 * Callbacks run in timeline order; a callback that throws is reported to
 * onError and does not stop delivery.
 */
export class Connection {
  readonly appKey: string;
  private readonly o: Required<Omit<ConnectionOptions, "loginId" | "restUrl" | "WebSocket" | "fetch" | "url">>;
  private readonly WS: WebSocketCtor;
  private wsUrl: string;
  private readonly rest: RestClient;

  private handlers = new Map<string, EventHandlers>();
  private creds: OpenOptions | null = null;
  private _loginId: string;
  private live: Live | null = null;
  private pending = new Map<string, Pending>();
  private reqSeq = 0;
  private selfIds = new Set<string>();

  // The acknowledged position: resume starts after it.
  private ackEpoch = "";
  private ackSeq = 0;
  // Dedup: the newest event handled.
  private epoch = "";
  private lastSeq = 0;
  // The parts of a snapshot received so far on this connection.
  private snap: SnapshotParts | null = null;
  // The server's JSON type of seq, echoed in acks and resume.
  private seqAsString = false;
  private _duplicates = 0;

  private stopped = true;
  private kicked: KickedEvent | null = null;
  private loggingOut = false;
  private timers: Timer[] = [];

  constructor(opts: ConnectionOptions) {
    if (!opts || typeof opts.appKey !== "string" || opts.appKey === "") throw new TypeError("mdsync: appKey is required");
    this.appKey = opts.appKey;
    const osType = opts.osType ?? 1;
    if (!Number.isInteger(osType) || osType < 1 || osType > 100) throw new MdsyncError(Code.InvalidArgument, `osType ${osType} is outside 1-100`);
    const base = opts.url ?? (typeof location !== "undefined" ? location.origin : "");
    if (base === "") throw new TypeError("mdsync: url is required outside a browser");
    this.wsUrl = wsUrlOf(base);
    const WS = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
    if (!WS) throw new TypeError("mdsync: no WebSocket implementation (Node.js: run with --experimental-websocket or pass options.WebSocket)");
    this.WS = WS;
    this.o = {
      appKey: opts.appKey,
      deviceName: opts.deviceName ?? "",
      osType,
      loginExtension: opts.loginExtension ?? "",
      autoLogin: opts.autoLogin ?? true,
      heartbeatIntervalMs: opts.heartbeatIntervalMs ?? 20_000,
      ackIntervalMs: opts.ackIntervalMs ?? 200,
      reconnectMinMs: opts.reconnectMinMs ?? 200,
      reconnectMaxMs: Math.max(opts.reconnectMaxMs ?? 10_000, opts.reconnectMinMs ?? 200),
      loginTimeoutMs: opts.loginTimeoutMs ?? 15_000,
      requestTimeoutMs: opts.requestTimeoutMs ?? 30_000,
    };
    this._loginId = opts.loginId ?? "";
    this.rest = new RestClient(opts.restUrl ?? restUrlOf(this.wsUrl), opts.fetch ? { fetch: opts.fetch } : {});
  }

  /** This device's login ID (generated by the server unless given); reconnects keep it. */
  get loginId(): string {
    return this._loginId;
  }

  /** Events dropped because their seq was already seen. */
  get duplicates(): number {
    return this._duplicates;
  }

  /** True while a connection is up and logged in. */
  isOpened(): boolean {
    // A kicked frame ends the session at once, before its socket closes.
    return this.live !== null && this.kicked === null;
  }

  addEventHandler(id: string, handlers: EventHandlers): void {
    this.handlers.set(id, handlers);
  }

  removeEventHandler(id: string): void {
    this.handlers.delete(id);
  }

  /** Log in with the user's password (pwd) or token (accessToken). A refused login rejects with its code (214, 1013...). */
  async open(o: OpenOptions): Promise<LoginResult> {
    if (!o || !o.user) throw new MdsyncError(Code.InvalidArgument, "open: user is required");
    if (!o.pwd && !o.accessToken) throw new MdsyncError(Code.InvalidArgument, "open: pwd or accessToken is required");
    if (!this.stopped) throw new MdsyncError(Code.Conflict, "open: already open");
    this.creds = { ...o };
    this.kicked = null;
    this.loggingOut = false;
    this.stopped = false;
    try {
      const { live, result } = await this.connect(false, this.o.autoLogin && this._loginId !== "");
      this.install(live);
      return result;
    } catch (err) {
      this.stopped = true;
      throw err;
    }
  }

  /** Close the connection: the last acknowledgement is sent, reconnecting stops, pending requests fail with code 1 (Closed). */
  async close(): Promise<void> {
    const live = this.live;
    this.stop(new MdsyncError(Code.Closed, "closed"));
    if (!live) return;
    this.sendAck(live, true);
    await new Promise<void>((resolve) => {
      const done = (): void => resolve();
      live.ws.addEventListener("close", done);
      unref(setTimeout(done, 1000));
      live.ws.close(1000);
    });
  }

  /** End this device's session (LOGOUT); the connection then closes. */
  async logout(): Promise<void> {
    this.loggingOut = true;
    try {
      await this.op({ kind: "KIND_LOGOUT", empty: {} });
    } catch (err) {
      if (!(err instanceof MdsyncError && err.code === Code.Closed)) throw err;
    }
  }

  /** Send a message made by message.create. A retry of the same message creates nothing new. */
  async send(m: Message): Promise<OpResult> {
    let chat: WireChatType = "CHAT_TYPE_USER";
    switch (m.chatType) {
      case "singleChat":
        chat = this.selfIds.has(m.to) ? "CHAT_TYPE_SELF_DEVICE" : "CHAT_TYPE_USER";
        break;
      case "groupChat":
        chat = "CHAT_TYPE_GROUP";
        break;
      case "chatRoom":
        chat = "CHAT_TYPE_CHATROOM";
        break;
      case "chatThread":
        chat = "CHAT_TYPE_THREAD";
        break;
    }
    const message: NonNullable<WireEvent["message"]> = {
      chat_type: chat,
      to: m.to,
      client_msg_id: m.id,
      content_type: m.contentType,
      body: utf8ToBase64(m.msg),
    };
    if (m.groupId) message.group_id = m.groupId;
    return this.op({ kind: "KIND_MESSAGE_SEND", client_op_id: m.id, message });
  }

  /**
   * Perform any operation as this device (docs/protocol.md, op): a kind
   * and its payload. client_op_id is generated when absent; a retry with
   * the same one returns the first decision. A refusal rejects with its code.
   */
  async op(ev: WireEvent): Promise<OpResult> {
    const event: WireEvent = { ...ev, client_op_id: ev.client_op_id || newId() };
    const f = await this.request({ type: "op", event });
    return {
      localMsgId: event.client_op_id ?? "",
      serverMsgId: f.message_id ?? "",
      eventId: f.event_id ?? "",
      partition: f.partition ?? 0,
      offset: num(f.offset),
    };
  }

  /** Login IDs of the user's other logged-in devices; a singleChat message to one goes to that device only. */
  async getSelfIdsOnOtherPlatform(): Promise<{ data: string[] }> {
    const f = await this.request({ type: "self_ids" });
    const ids = f.login_ids ?? [];
    for (const id of ids) this.selfIds.add(id);
    return { data: ids };
  }

  /** A conversation's messages, newest first, before seq `before` (0 = newest), at most limit (1-100). */
  async history(chatType: WireChatType, conversationId: string, before = 0, limit = 20): Promise<TimelineEntry[]> {
    const f = await this.request({ type: "history", chat_type: chatType, conversation_id: conversationId, before, limit });
    return f.entries ?? [];
  }

  /** Record that every event up to seq of timeline epoch is processed (with ackIntervalMs < 0). */
  ack(epoch: string, seq: number): void {
    if (epoch !== this.ackEpoch || seq > this.ackSeq) {
      this.ackEpoch = epoch;
      this.ackSeq = seq;
    }
  }

  /** The user's logged-in devices (fetchLoggedInDevices); no login needed. */
  async fetchLoggedInDevices(a: DeviceAuth): Promise<{ data: Device[] }> {
    return { data: await this.rest.fetchLoggedInDevices(this.appKey, a.user, credOf(a)) };
  }

  /** Log one device out by its login ID (kickDevice); it gets 217. No login needed. */
  async kickDevice(a: DeviceAuth & { resource: string }): Promise<{ data: Decision }> {
    return { data: await this.rest.kickDevice(this.appKey, a.user, a.resource, credOf(a)) };
  }

  /** Log every device of the user out (kickAllDevices); each gets 217. No login needed. */
  async kickAllDevices(a: DeviceAuth): Promise<{ data: Decision }> {
    return { data: await this.rest.kickAllDevices(this.appKey, a.user, credOf(a)) };
  }

  // --- connection lifecycle ---

  private loginFrame(resume: boolean, autoLogin: boolean): Record<string, unknown> {
    const c = this.creds;
    if (!c) throw new MdsyncError(Code.InvalidArgument, "not opened");
    const f: Record<string, unknown> = { type: resume ? "resume" : "login", id: resume ? "resume" : "login", app: this.appKey, user: c.user };
    if (c.pwd) f["password"] = c.pwd;
    if (c.accessToken) f["token"] = c.accessToken;
    if (this._loginId) f["login_id"] = this._loginId;
    f["batch"] = true; // catch-up may come as events frames (onFrame)
    if (resume) {
      if (this.ackEpoch) {
        f["epoch"] = this.ackEpoch;
        f["seq"] = this.seqAsString ? String(this.ackSeq) : this.ackSeq;
      }
    } else {
      f["platform"] = this.o.osType;
      if (this.o.deviceName) f["device_name"] = this.o.deviceName;
      if (this.o.loginExtension) f["extension"] = this.o.loginExtension;
      if (autoLogin) f["auto_login"] = true;
    }
    return f;
  }

  /** connect dials and logs in (or resumes), following 1018 redirects and retrying what retry_after_ms says a retry cures. */
  private async connect(resume: boolean, autoLogin: boolean): Promise<{ live: Live; result: LoginResult }> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.connectOnce(resume, autoLogin);
      } catch (err) {
        if (!(err instanceof MdsyncError) || attempt >= 4 || this.stopped) throw err;
        if (err.code === Code.NotOwner && err.addr) {
          const u = new URL(this.wsUrl);
          u.host = err.addr;
          this.wsUrl = u.toString();
          continue;
        }
        const wait = retryDelay(err.code, err.retryAfterMs, err.addr, attempt + 1);
        if (wait >= 0) {
          // Busy, or unavailable for now (the log, or the user's owner not
          // known yet): log in again after the wait the server asked for.
          await sleep(wait);
          continue;
        }
        throw err;
      }
    }
  }

  private connectOnce(resume: boolean, autoLogin: boolean): Promise<{ live: Live; result: LoginResult }> {
    return new Promise((resolve, reject) => {
      let settled = false;
      let ws: WebSocket;
      try {
        ws = new this.WS(this.wsUrl, [Subprotocol]);
      } catch (err) {
        reject(new MdsyncError(Code.Network, `dial ${this.wsUrl}: ${String(err)}`));
        return;
      }
      const live: Live = { ws, sentEpoch: this.ackEpoch, sentSeq: this.ackSeq, reason: null };
      const fail = (e: MdsyncError): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        try {
          ws.close();
        } catch {
          // already closing
        }
        reject(e);
      };
      const timer = unref(setTimeout(() => fail(new MdsyncError(Code.Network, "login timed out")), this.o.loginTimeoutMs));
      ws.onopen = () => {
        try {
          ws.send(JSON.stringify(this.loginFrame(resume, autoLogin)));
        } catch (err) {
          fail(new MdsyncError(Code.Network, String(err)));
        }
      };
      ws.onerror = () => fail(new MdsyncError(Code.Network, `connection to ${this.wsUrl} failed`));
      ws.onclose = (ev) => fail(new MdsyncError(Code.Network, `connection closed during login (${ev.code})`));
      ws.onmessage = (ev) => {
        if (settled) {
          this.onFrame(live, ev.data);
          return;
        }
        const f = parseFrame(ev.data);
        if (!f || (f.type !== "login_result" && f.type !== "error")) return; // nothing else precedes login_result
        if (f.code) {
          fail(new MdsyncError(f.code, f.message ?? "", { retryAfterMs: num(f.retry_after_ms), addr: f.addr ?? "" }));
          return;
        }
        if (f.type === "error") {
          fail(new MdsyncError(Code.Internal, "error frame with code 0"));
          return;
        }
        settled = true;
        clearTimeout(timer);
        if (f.login_id) this._loginId = f.login_id;
        // Frames after login_result (snapshot, catch-up) go to onFrame
        // through this same listener, in order.
        this.live = live;
        ws.onclose = (ev) => this.onDrop(live, ev.code, ev.reason);
        ws.onerror = () => undefined;
        resolve({
          live,
          result: { loginId: this._loginId, reconnect: !!f.reconnect, resumed: !!f.resumed, policyVersion: num(f.policy_version) },
        });
        this.emit("onConnected");
      };
    });
  }

  /** install starts the connection's timers and resends every request still waiting for an answer. */
  private install(live: Live): void {
    if (this.stopped) {
      live.ws.close(1000);
      return;
    }
    this.live = live;
    this.clearTimers();
    this.timers.push(unref(setInterval(() => this.write(live, { type: "ping" }), this.o.heartbeatIntervalMs)));
    this.timers.push(unref(setInterval(() => this.sendAck(live, false), this.o.ackIntervalMs > 0 ? this.o.ackIntervalMs : 200)));
    for (const p of this.pending.values()) this.write(live, p.frame);
  }

  private clearTimers(): void {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
  }

  private write(live: Live, frame: Record<string, unknown>): boolean {
    if (this.live !== live || live.ws.readyState !== 1) return false;
    try {
      live.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  private sendAck(live: Live, force: boolean): void {
    const e = this.ackEpoch;
    const s = this.ackSeq;
    if (e === "" || (!force && e === live.sentEpoch && s === live.sentSeq)) return;
    if (live.ws.readyState !== 1) return;
    try {
      live.ws.send(JSON.stringify({ type: "ack", epoch: e, seq: this.seqAsString ? String(s) : s }));
      live.sentEpoch = e;
      live.sentSeq = s;
    } catch {
      // the connection is going; the next one resumes from the last ack sent
    }
  }

  private onDrop(live: Live, closeCode: number, closeReason: string): void {
    if (this.live !== live) return;
    this.live = null;
    this.snap = null; // the parts of a snapshot whose connection ended never complete
    this.clearTimers();
    if (this.stopped) return;
    const kicked = this.kicked;
    if (kicked) {
      const err = new MdsyncError(kicked.code, kicked.reason);
      this.emit("onDisconnected", { code: kicked.code, message: kicked.reason, willReconnect: false });
      this.stop(err);
      return;
    }
    if (this.loggingOut) {
      this.emit("onDisconnected", { code: 0, message: "logged out", willReconnect: false });
      this.stop(new MdsyncError(Code.Closed, "logged out"));
      return;
    }
    const reason = live.reason;
    const code = reason?.code ?? 0;
    const message = reason?.message ?? `connection closed (${closeCode}${closeReason ? " " + closeReason : ""})`;
    if (!this.o.autoLogin) {
      this.emit("onDisconnected", { code, message, willReconnect: false });
      this.stop(reason ?? new MdsyncError(Code.Network, message));
      return;
    }
    this.emit("onDisconnected", { code, message, willReconnect: true });
    void this.reconnect();
  }

  /** reconnect retries with jittered exponential backoff until a connection is up or the connection stops. */
  private async reconnect(): Promise<void> {
    let wait = this.o.reconnectMinMs;
    for (;;) {
      await sleep(wait / 2 + Math.random() * (wait / 2));
      if (this.stopped) return;
      wait = Math.min(wait * 2, this.o.reconnectMaxMs);
      try {
        let r: { live: Live; result: LoginResult };
        try {
          r = await this.connect(true, false);
        } catch (err) {
          // The server no longer knows the session: log in again (auto-login).
          if (!(err instanceof MdsyncError) || err.code !== Code.NotFound) throw err;
          r = await this.connect(false, true);
        }
        if (this.stopped) {
          r.live.ws.close(1000);
          return;
        }
        this.install(r.live);
        this.emit("onReconnected");
        return;
      } catch (err) {
        const e = err instanceof MdsyncError ? err : new MdsyncError(Code.Network, String(err));
        if (e.code === Code.Network || e.code === Code.RateLimited || (e.code >= 1009 && e.code !== Code.Unauthenticated)) continue;
        if (isKickCode(e.code) || e.code === Code.TooManyDevices) {
          // The session ended while the device was away (or auto-login was
          // refused): it learns why now and does not log itself back in.
          const k: KickedEvent = { code: e.code, reason: e.message, byLoginId: "", byDeviceName: "", byExtension: "" };
          this.kicked = k;
          this.emit("onKicked", k);
        }
        this.emit("onError", e);
        this.emit("onDisconnected", { code: e.code, message: e.message, willReconnect: false });
        this.stop(e);
        return;
      }
    }
  }

  private stop(err: MdsyncError): void {
    if (this.stopped) return;
    this.stopped = true;
    this.clearTimers();
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      if (p.retry) clearTimeout(p.retry);
      this.pending.delete(id);
      p.reject(err);
    }
    const live = this.live;
    this.live = null;
    if (live && !(err.code === Code.Closed)) {
      try {
        live.ws.close(1000);
      } catch {
        // closing
      }
    }
  }

  // --- requests ---

  private request(frame: Record<string, unknown>): Promise<InFrame> {
    if (this.stopped) return Promise.reject(new MdsyncError(Code.Closed, this.kicked ? `session ended (${this.kicked.code})` : "not open"));
    const id = String(++this.reqSeq);
    const full = { ...frame, id };
    const size = new TextEncoder().encode(JSON.stringify(full)).length;
    if (size > MaxFrameBytes) return Promise.reject(new MdsyncError(Code.TooLarge, `request of ${size} bytes exceeds ${MaxFrameBytes}`));
    return new Promise<InFrame>((resolve, reject) => {
      const timer = unref(
        setTimeout(() => {
          const p = this.pending.get(id);
          if (p?.retry) clearTimeout(p.retry);
          this.pending.delete(id);
          reject(new MdsyncError(Code.Network, `no answer to ${String(frame["type"])} within ${this.o.requestTimeoutMs} ms`));
        }, this.o.requestTimeoutMs),
      );
      this.pending.set(id, { frame: full, resolve, reject, timer });
      if (this.live) this.write(this.live, full);
    });
  }

  private settle(f: InFrame): boolean {
    const id = f.id;
    if (id === undefined) return false;
    const p = this.pending.get(id);
    if (!p) return false;
    const delay = f.code ? retryDelay(f.code, num(f.retry_after_ms), f.addr ?? "", (p.retries ?? 0) + 1) : -1;
    if (delay >= 0) {
      // Busy (not decided), or unavailable for now: send the same frame
      // (same client op id: an op appended after all is answered with its
      // decision, not applied twice) again after the delay the server
      // asked for, within the request's timeout.
      if (f.code !== Code.Busy) p.retries = (p.retries ?? 0) + 1;
      p.retry = unref(
        setTimeout(() => {
          p.retry = undefined;
          if (this.pending.get(id) === p && this.live) this.write(this.live, p.frame);
        }, delay),
      );
      return true;
    }
    clearTimeout(p.timer);
    this.pending.delete(id);
    if (f.code) p.reject(new MdsyncError(f.code, f.message ?? "", { addr: f.addr ?? "", retryAfterMs: num(f.retry_after_ms) }));
    else p.resolve(f);
    return true;
  }

  // --- frames and callbacks ---

  private onFrame(live: Live, data: unknown): void {
    const f = parseFrame(data);
    if (!f) return;
    switch (f.type) {
      case "event":
        this.onEvent(f);
        return;
      case "events":
        // A batch is its event frames, in order: each is taken as if it had come alone.
        for (const e of f.events ?? []) {
          if (e && e.type === "event") this.onEvent(e);
        }
        return;
      case "snapshot":
        this.onSnapshot(f);
        return;
      case "kicked": {
        const k: KickedEvent = {
          code: f.code ?? 0,
          reason: f.reason ?? "",
          byLoginId: f.by_login_id ?? "",
          byDeviceName: f.by_device_name ?? "",
          byExtension: f.by_extension ?? "",
        };
        this.kicked = k;
        this.emit("onKicked", k);
        this.emit("onError", new MdsyncError(k.code, k.reason));
        return;
      }
      case "error":
        if (this.settle(f)) return;
        if (f.code && [Code.TooLarge, Code.Unavailable, Code.Unauthenticated, Code.SlowConsumer, Code.HeartbeatTimeout, Code.NotOwner].includes(f.code as 1004)) {
          live.reason = new MdsyncError(f.code, f.message ?? "", { addr: f.addr ?? "" });
        }
        this.emit("onError", new MdsyncError(f.code ?? 0, f.message ?? ""));
        return;
      default:
        this.settle(f);
    }
  }

  /**
   * onSnapshot takes one part of a snapshot (docs/protocol.md: parts numbered from 0, more on every one but the last,
   * each a slice of the lists) and emits the whole snapshot at its last part. A part 0 starts a new snapshot; a part
   * out of order drops what was held (the server never sends one: the next connection gets a new snapshot).
   */
  private onSnapshot(f: InFrame): void {
    const part = num(f.part ?? 0);
    const seq = num(f.seq);
    const epoch = f.epoch ?? "";
    let s = this.snap;
    if (part === 0) {
      s = this.snap = { resync: !!f.resync, epoch, seq, contacts: {}, groups: {}, conversations: [], next: 0 };
    } else if (!s || part !== s.next || epoch !== s.epoch || seq !== s.seq) {
      this.snap = null;
      this.emit("onError", new MdsyncError(Code.Internal, `snapshot part ${part} out of order`));
      return;
    }
    concatLists(s.contacts, f.contacts);
    concatLists(s.groups, f.groups);
    for (const c of f.conversations ?? []) s.conversations.push(c);
    s.next = part + 1;
    if (f.more) return;
    this.snap = null;
    this.seqAsString = typeof f.seq === "string";
    this.epoch = epoch;
    this.lastSeq = seq;
    this.emit("onSnapshot", { resync: s.resync, epoch, seq, contacts: s.contacts, groups: s.groups, conversations: s.conversations });
    if (this.o.ackIntervalMs >= 0) this.ack(this.epoch, seq);
  }

  /** onEvent drops an event already seen in this epoch (a resend after a reconnect), then routes it by its source kind. */
  private onEvent(f: InFrame): void {
    this.seqAsString = typeof f.seq === "string";
    const epoch = f.epoch ?? "";
    const seq = num(f.seq);
    if (epoch === this.epoch && seq <= this.lastSeq) {
      this._duplicates++;
      return;
    }
    this.epoch = epoch;
    this.lastSeq = seq;
    const entry = f.entry ?? {};
    const src = entry.source ?? { kind: "" };
    const kind = String(src.kind ?? "");
    const base: BaseEvent = {
      operation: f.name ?? "",
      from: entry.from ?? "",
      multiDevice: !!entry.multi_device,
      kind,
      epoch,
      seq,
      time: num(src.time_unix_ms),
      entry,
    };
    this.emit("onEvent", base);
    this.route(base, src);
    if (this.o.ackIntervalMs >= 0) this.ack(epoch, seq);
  }

  private route(base: BaseEvent, src: WireEvent): void {
    const kind = base.kind;
    const entry = base.entry;
    if (kind === "KIND_MESSAGE_SEND") {
      const m = src.message ?? { chat_type: "CHAT_TYPE_USER" as const, to: "" };
      const ct = m.content_type ?? "";
      let text = "";
      try {
        text = m.body ? base64ToUtf8(m.body) : "";
      } catch {
        text = "";
      }
      const ev: MessageEvent = {
        ...base,
        id: src.event_id ?? entry.entry_id ?? "",
        type: ct === "text/plain" || ct === "" ? "txt" : "custom",
        msg: text,
        contentType: ct,
        to: m.to,
        chatType: chatTypeOf(m.chat_type),
        fromLoginId: src.actor?.login_id ?? "",
        conversationId: entry.conversation_id ?? "",
      };
      this.emit("onMessage", ev);
      this.emit(ev.type === "txt" ? "onTextMessage" : "onCustomMessage", ev);
      return;
    }
    if (kind === "KIND_DELIVERY_RECEIPT" || kind === "KIND_READ_RECEIPT" || kind === "KIND_CONVERSATION_READ") {
      const r = src.receipt ?? src.conversation;
      const ev: ReceiptEvent = {
        ...base,
        mid: src.receipt?.message_id ?? "",
        conversationId: entry.conversation_id ?? r?.conversation_id ?? "",
        chatType: chatTypeOf(r?.chat_type),
      };
      this.emit(kind === "KIND_DELIVERY_RECEIPT" ? "onDeliveredMessage" : kind === "KIND_READ_RECEIPT" ? "onReadMessage" : "onChannelMessage", ev);
      return;
    }
    if (kind.startsWith("KIND_CONTACT_")) {
      const ev: ContactEvent = { ...base, to: src.contact?.user ?? "", ext: src.contact?.ext ?? "" };
      this.emit("onContactEvent", ev);
      const cb = contactCallbacks[kind];
      if (cb) this.emit(cb, ev);
      return;
    }
    const md = (target: string): MultiDeviceEvent => ({
      ...base,
      target,
      conversationId: src.conversation?.conversation_id ?? entry.conversation_id ?? "",
      chatType: chatTypeOf(src.conversation?.chat_type ?? entry.chat_type),
      threadId: src.thread?.thread_id ?? "",
      groupId: src.thread?.group_id ?? src.group?.group_id ?? "",
      name: src.thread?.name ?? src.group?.name ?? "",
    });
    if (kind === "KIND_GROUP_MEMBER_ATTRIBUTES_CHANGED" && base.multiDevice) {
      this.emit("onMultiDeviceEvent", md(src.group?.group_id ?? ""));
      return;
    }
    if (kind.startsWith("KIND_GROUP_")) {
      const ev: GroupEvent = { ...base, id: src.group?.group_id ?? "", users: src.group?.users ?? [], name: src.group?.name ?? "" };
      this.emit("onGroupEvent", ev);
      return;
    }
    if (kind.startsWith("KIND_THREAD_")) {
      this.emit(base.multiDevice ? "onMultiDeviceEvent" : "onChatThreadChange", md(src.thread?.thread_id ?? ""));
      return;
    }
    if (kind.startsWith("KIND_CONVERSATION_") || kind === "KIND_REMOTE_MESSAGES_REMOVE") {
      this.emit("onMultiDeviceEvent", md(src.conversation?.conversation_id ?? ""));
      return;
    }
    if (kind.startsWith("KIND_CHATROOM_")) this.emit("onChatroomEvent", base);
  }

  private emit<K extends keyof EventHandlers>(name: K, ...args: Parameters<NonNullable<EventHandlers[K]>>): void {
    for (const h of [...this.handlers.values()]) {
      const fn = h[name] as ((...a: unknown[]) => void) | undefined;
      if (!fn) continue;
      try {
        fn(...args);
      } catch (err) {
        if (name !== "onError") this.emit("onError", new MdsyncError(Code.Internal, `${String(name)} handler threw: ${String(err)}`));
      }
    }
  }
}

function credOf(a: DeviceAuth): Credential {
  if (!a || !a.user) throw new MdsyncError(Code.InvalidArgument, "user is required");
  if (!a.pwd && !a.accessToken) throw new MdsyncError(Code.InvalidArgument, "pwd or accessToken is required");
  const c: Credential = {};
  if (a.pwd) c.pwd = a.pwd;
  if (a.accessToken) c.accessToken = a.accessToken;
  return c;
}

function parseFrame(data: unknown): InFrame | null {
  if (typeof data !== "string") return null;
  try {
    const f = JSON.parse(data) as InFrame;
    return typeof f === "object" && f !== null && typeof f.type === "string" ? f : null;
  } catch {
    return null;
  }
}

/** A snapshot being assembled from its parts. */
interface SnapshotParts {
  resync: boolean;
  epoch: string;
  seq: number;
  contacts: Record<string, unknown>;
  groups: Record<string, unknown>;
  conversations: unknown[];
  next: number;
}

/** concatLists appends each list of a snapshot part's object (contacts, groups) to the lists held so far. */
function concatLists(into: Record<string, unknown>, part: unknown): void {
  if (typeof part !== "object" || part === null) return;
  for (const [k, v] of Object.entries(part as Record<string, unknown>)) {
    const held = into[k];
    if (Array.isArray(v) && Array.isArray(held)) held.push(...(v as unknown[]));
    else if (Array.isArray(v)) into[k] = [...(v as unknown[])];
    else into[k] = v;
  }
}

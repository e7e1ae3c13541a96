// Unit tests of the SDK against a scripted fake WebSocket: dedup by seq,
// seq as a number or a string, batched acks, 1019 retries, 1018 redirects,
// resume after a drop, callbacks by source kind with the frame's name as
// operation, kicks, the message factory.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Connection, message, MdsyncError, Code } from "../dist/mdsync.mjs";
import { FakeWS } from "./fakews.mjs";

// The SDK's timers are unref'd (a real socket keeps Node alive; the fake does not).
const keepAlive = setInterval(() => {}, 1000);
after(() => clearInterval(keepAlive));

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

function newConn(extra = {}) {
  FakeWS.all = [];
  FakeWS.onSend = (ws, f) => {
    if (f.type === "login" || f.type === "resume") {
      queueMicrotask(() => ws.push({ type: "login_result", id: f.id, code: 0, login_id: f.login_id || "L1", resumed: f.type === "resume" }));
    }
  };
  return new Connection({ url: "ws://gw.test/v1/ws", appKey: "demo", WebSocket: FakeWS, ackIntervalMs: 10, reconnectMinMs: 5, reconnectMaxMs: 20, ...extra });
}

const entry = (kind, extra = {}, multi = true) => ({
  from: "alice",
  multi_device: multi,
  source: { kind, actor: { user: "alice", login_id: "L2" }, time_unix_ms: "1700000000000", ...extra },
});

test("message.create validates and defaults", () => {
  const m = message.create({ type: "txt", msg: "hi", to: "bob", chatType: "singleChat" });
  assert.equal(m.contentType, "text/plain");
  assert.match(m.id, /^[0-9a-f]{24}$/);
  assert.throws(() => message.create({ type: "txt", msg: "x", to: "", chatType: "singleChat" }), TypeError);
  assert.throws(() => message.create({ type: "txt", msg: "x", to: "b", chatType: "nope" }), TypeError);
});

test("constructor refuses a platform outside 1-100", () => {
  assert.throws(() => new Connection({ url: "ws://x/v1/ws", appKey: "a", osType: 0, WebSocket: FakeWS }), (e) => e instanceof MdsyncError && e.code === 1001);
  assert.throws(() => new Connection({ url: "ws://x/v1/ws", appKey: "a", osType: 101, WebSocket: FakeWS }), MdsyncError);
});

test("open sends the login frame with the options and resolves the login ID", async () => {
  const c = new Connection({
    url: "http://gw.test",
    appKey: "demo",
    WebSocket: FakeWS,
    osType: 7,
    deviceName: "laptop",
    loginExtension: '{"os":"linux"}',
  });
  FakeWS.all = [];
  FakeWS.onSend = (ws, f) => f.type === "login" && queueMicrotask(() => ws.push({ type: "login_result", id: f.id, code: 0, login_id: "L9", policy_version: "3" }));
  const r = await c.open({ user: "alice", pwd: "pw" });
  assert.deepEqual(r, { loginId: "L9", reconnect: false, resumed: false, policyVersion: 3 });
  const ws = FakeWS.all[0];
  assert.equal(ws.url, "ws://gw.test/v1/ws");
  assert.deepEqual(ws.protocols, ["mdsync.v1"]);
  const login = ws.frames("login")[0];
  assert.deepEqual(login, { type: "login", id: "login", app: "demo", user: "alice", password: "pw", batch: true, platform: 7, device_name: "laptop", extension: '{"os":"linux"}' });
  assert.equal(c.loginId, "L9");
  await c.close();
});

test("a refused login rejects with its code", async () => {
  const c = newConn({ loginId: "old" });
  FakeWS.onSend = (ws, f) => f.type === "login" && queueMicrotask(() => ws.push({ type: "login_result", id: f.id, code: 214, message: "too many devices" }));
  await assert.rejects(c.open({ user: "alice", pwd: "pw" }), (e) => e.code === Code.TooManyDevices);
  assert.equal(FakeWS.all[0].frames("login")[0].auto_login, true, "a login with a login ID and autoLogin is an auto-login");
});

test("1018 at login follows addr", async () => {
  const c = newConn();
  FakeWS.onSend = (ws, f) => {
    if (f.type !== "login") return;
    if (ws.url.includes("gw.test")) queueMicrotask(() => ws.push({ type: "error", id: f.id, code: 1018, message: "owned elsewhere", addr: "other.test:9000" }));
    else queueMicrotask(() => ws.push({ type: "login_result", id: f.id, code: 0, login_id: "L1" }));
  };
  await c.open({ user: "alice", pwd: "pw" });
  assert.equal(FakeWS.all.length, 2);
  assert.equal(FakeWS.all[1].url, "ws://other.test:9000/v1/ws");
  await c.close();
});

test("events: dedup by (epoch, seq), seq as number or string, acks batched in the server's type", async () => {
  const c = newConn();
  const seen = [];
  c.addEventHandler("h", { onEvent: (e) => seen.push(e.seq) });
  await c.open({ user: "alice", pwd: "pw" });
  const ws = FakeWS.all[0];
  ws.push({ type: "snapshot", epoch: "E", seq: 2 });
  for (const s of [3, 4, 4, 3, 5]) ws.push({ type: "event", epoch: "E", seq: s, name: "message_send", entry: entry("KIND_MESSAGE_SEND", {}, false) });
  assert.deepEqual(seen, [3, 4, 5]);
  assert.equal(c.duplicates, 2);
  await tick(40);
  const acks = ws.frames("ack");
  assert.equal(acks.length, 1, "one batched ack for five events");
  assert.deepEqual(acks[0], { type: "ack", epoch: "E", seq: 5 });
  ws.push({ type: "event", epoch: "E", seq: "6", name: "message_send", entry: entry("KIND_MESSAGE_SEND", {}, false) });
  ws.push({ type: "event", epoch: "E", seq: "6", name: "message_send", entry: entry("KIND_MESSAGE_SEND", {}, false) });
  await tick(40);
  assert.deepEqual(seen, [3, 4, 5, 6]);
  assert.deepEqual(ws.frames("ack").at(-1), { type: "ack", epoch: "E", seq: "6" });
  await c.close();
});

test("an events frame is its event frames, taken in order as if each came alone", async () => {
  const c = newConn();
  const got = [];
  c.addEventHandler("h", {
    onEvent: (e) => got.push(["event", e.seq]),
    onTextMessage: (m) => got.push(["txt", m.msg]),
    onMultiDeviceEvent: (e) => got.push(["md", e.operation, e.target]),
  });
  await c.open({ user: "alice", pwd: "pw" });
  const ws = FakeWS.all[0];
  assert.equal(ws.frames("login")[0].batch, true, "the login asks for batches");
  const msg = (seq, text) => ({ type: "event", epoch: "E", seq, name: "message_send",
    entry: { ...entry("KIND_MESSAGE_SEND", { message: { chat_type: "CHAT_TYPE_USER", to: "alice", body: Buffer.from(text).toString("base64") } }, false), from: "bob" } });
  const pin = { type: "event", epoch: "E", seq: 3, name: "pinnedConversation", entry: entry("KIND_CONVERSATION_PIN", { conversation: { chat_type: "CHAT_TYPE_USER", conversation_id: "bob" } }) };
  ws.push({ type: "snapshot", epoch: "E", seq: 0 });
  ws.push({ type: "events", events: [msg(1, "one"), msg(2, "two"), msg(2, "two"), pin] });
  ws.push(msg(4, "four"));
  ws.push({ type: "events", events: [pin, msg(5, "five")] });
  assert.deepEqual(got, [
    ["event", 1], ["txt", "one"],
    ["event", 2], ["txt", "two"],
    ["event", 3], ["md", "pinnedConversation", "bob"],
    ["event", 4], ["txt", "four"],
    ["event", 5], ["txt", "five"],
  ]);
  assert.equal(c.duplicates, 2);
  await tick(40);
  assert.deepEqual(ws.frames("ack").at(-1), { type: "ack", epoch: "E", seq: 5 });
  await c.close();
});

test("callbacks by source kind; operation is the frame's name; from is passed through", async () => {
  const c = newConn();
  const got = [];
  c.addEventHandler("h", {
    onContactEvent: (e) => got.push(["contact", e.operation, e.from, e.to, e.multiDevice]),
    onContactInvited: (e) => got.push(["invited", e.to]),
    onGroupEvent: (e) => got.push(["group", e.operation, e.from, e.id]),
    onMultiDeviceEvent: (e) => got.push(["md", e.operation, e.target]),
    onChatThreadChange: (e) => got.push(["thread", e.operation, e.threadId]),
    onTextMessage: (m) => got.push(["txt", m.msg, m.from, m.chatType]),
    onReadMessage: (r) => got.push(["read", r.mid]),
  });
  await c.open({ user: "alice", pwd: "pw" });
  const ws = FakeWS.all[0];
  let seq = 0;
  const ev = (name, e) => ws.push({ type: "event", epoch: "E", seq: ++seq, name, entry: e });
  ev("contactInvited", entry("KIND_CONTACT_REQUEST", { contact: { user: "bob" } }));
  ev("some_new_name", entry("KIND_GROUP_CREATE", { group: { group_id: "g1" } }));
  ev("memberAttributesUpdate", entry("KIND_GROUP_MEMBER_ATTRIBUTES_CHANGED", { group: { group_id: "g1" } }));
  ev("chatThreadCreate", entry("KIND_THREAD_CREATE", { thread: { thread_id: "t1", group_id: "g1" } }));
  ev("chatThreadKick", { ...entry("KIND_THREAD_KICK", { thread: { thread_id: "t1" } }, false), from: "carol" });
  ev("pinnedConversation", entry("KIND_CONVERSATION_PIN", { conversation: { chat_type: "CHAT_TYPE_USER", conversation_id: "bob" } }));
  ev("deleteRoaming", entry("KIND_REMOTE_MESSAGES_REMOVE", { conversation: { chat_type: "CHAT_TYPE_USER", conversation_id: "bob" } }));
  ev("message_send", { ...entry("KIND_MESSAGE_SEND", { message: { chat_type: "CHAT_TYPE_USER", to: "alice", body: Buffer.from("héllo").toString("base64"), content_type: "text/plain" } }, false), from: "bob" });
  ev("read_receipt", entry("KIND_READ_RECEIPT", { receipt: { chat_type: "CHAT_TYPE_USER", conversation_id: "bob", message_id: "m1" } }, false));
  assert.deepEqual(got, [
    ["contact", "contactInvited", "alice", "bob", true],
    ["invited", "bob"],
    ["group", "some_new_name", "alice", "g1"],
    ["md", "memberAttributesUpdate", "g1"],
    ["md", "chatThreadCreate", "t1"],
    ["thread", "chatThreadKick", "t1"],
    ["md", "pinnedConversation", "bob"],
    ["md", "deleteRoaming", "bob"],
    ["txt", "héllo", "bob", "singleChat"],
    ["read", "m1"],
  ]);
  await c.close();
});

test("a result 1019 is retried after retry_after_ms with the same frame", async () => {
  const c = newConn();
  await c.open({ user: "alice", pwd: "pw" });
  const ws = FakeWS.all[0];
  let ops = 0;
  FakeWS.onSend = (w, f) => {
    if (f.type !== "op") return;
    ops++;
    if (ops === 1) queueMicrotask(() => w.push({ type: "result", id: f.id, code: 1019, message: "busy", retry_after_ms: 30 }));
    else queueMicrotask(() => w.push({ type: "result", id: f.id, code: 0, event_id: "ev1", message_id: "ev1", partition: 1, offset: "42" }));
  };
  const t0 = Date.now();
  const r = await c.send(message.create({ type: "txt", msg: "x", to: "bob", chatType: "singleChat", id: "m-1" }));
  assert.ok(Date.now() - t0 >= 25, "waited for retry_after_ms");
  assert.deepEqual(r, { localMsgId: "m-1", serverMsgId: "ev1", eventId: "ev1", partition: 1, offset: 42 });
  const sent = ws.frames("op");
  assert.equal(sent.length, 2);
  assert.deepEqual(sent[0], sent[1], "the retry is the same frame (same client_op_id)");
  assert.equal(sent[0].event.message.client_msg_id, "m-1");
  await c.close();
});

test("a dropped connection resumes from the last ack and resends pending requests", async () => {
  const c = newConn();
  const events = [];
  let reconnected = 0;
  const disc = [];
  c.addEventHandler("h", { onEvent: (e) => events.push(e.seq), onReconnected: () => reconnected++, onDisconnected: (d) => disc.push(d) });
  await c.open({ user: "alice", pwd: "pw" });
  const ws1 = FakeWS.all[0];
  ws1.push({ type: "event", epoch: "E", seq: 1, name: "message_send", entry: entry("KIND_MESSAGE_SEND", {}, false) });
  await tick(30); // acked
  FakeWS.onSend = (w, f) => {
    if (f.type === "resume") queueMicrotask(() => w.push({ type: "login_result", id: f.id, code: 0, login_id: "L1", resumed: true }));
    if (f.type === "self_ids" && w !== ws1) queueMicrotask(() => w.push({ type: "self_ids_result", id: f.id, code: 0, login_ids: ["L2"] }));
  };
  const ids = c.getSelfIdsOnOtherPlatform();
  ws1.close(1006);
  await tick(5);
  assert.deepEqual(await ids, { data: ["L2"] });
  const ws2 = FakeWS.all[1];
  assert.deepEqual(ws2.frames("resume")[0], { type: "resume", id: "resume", app: "demo", user: "alice", password: "pw", login_id: "L1", batch: true, epoch: "E", seq: 1 });
  // The server resends seq 1 (not a duplicate for the app) then seq 2.
  ws2.push({ type: "event", epoch: "E", seq: 1, name: "message_send", entry: entry("KIND_MESSAGE_SEND", {}, false) });
  ws2.push({ type: "event", epoch: "E", seq: 2, name: "message_send", entry: entry("KIND_MESSAGE_SEND", {}, false) });
  assert.deepEqual(events, [1, 2]);
  assert.equal(reconnected, 1);
  assert.equal(disc[0].willReconnect, true);
  await c.close();
});

test("a kick ends the connection with its code and never logs back in", async () => {
  const c = newConn();
  const kicks = [];
  const disc = [];
  c.addEventHandler("h", { onKicked: (k) => kicks.push(k), onDisconnected: (d) => disc.push(d) });
  await c.open({ user: "alice", pwd: "pw" });
  const ws = FakeWS.all[0];
  ws.push({ type: "kicked", code: 206, reason: "REASON_LOGIN_OTHER_DEVICE", by_login_id: "L5", by_device_name: "phone", by_extension: "{}" });
  ws.close(4000);
  await tick(30);
  assert.deepEqual(kicks, [{ code: 206, reason: "REASON_LOGIN_OTHER_DEVICE", byLoginId: "L5", byDeviceName: "phone", byExtension: "{}" }]);
  assert.equal(disc.length, 1);
  assert.equal(disc[0].willReconnect, false);
  assert.equal(FakeWS.all.length, 1, "no reconnect after a kick");
  await assert.rejects(c.getSelfIdsOnOtherPlatform(), (e) => e instanceof MdsyncError);
});

test("a session ended while away is reported on resume; auto-login after 1005", async () => {
  const c = newConn();
  const kicks = [];
  c.addEventHandler("h", { onKicked: (k) => kicks.push(k.code) });
  await c.open({ user: "alice", pwd: "pw" });
  FakeWS.onSend = (w, f) => {
    if (f.type === "resume") queueMicrotask(() => w.push({ type: "login_result", id: f.id, code: 1005, message: "no such session" }));
    if (f.type === "login") queueMicrotask(() => w.push({ type: "login_result", id: f.id, code: 0, login_id: "L1" }));
  };
  FakeWS.all[0].close(1006);
  await tick(40);
  const login = FakeWS.all.flatMap((w) => w.frames("login")).at(-1);
  assert.equal(login.auto_login, true);
  assert.equal(login.login_id, "L1");
  assert.ok(c.isOpened());
  FakeWS.onSend = (w, f) => f.type === "resume" && queueMicrotask(() => w.push({ type: "login_result", id: f.id, code: 217, message: "kicked" }));
  FakeWS.all.at(-1).close(1006);
  await tick(40);
  assert.deepEqual(kicks, [217]);
  assert.ok(!c.isOpened());
});

test("a singleChat to one of the user's own login IDs is CHAT_TYPE_SELF_DEVICE", async () => {
  const c = newConn();
  await c.open({ user: "alice", pwd: "pw" });
  FakeWS.onSend = (w, f) => {
    if (f.type === "self_ids") queueMicrotask(() => w.push({ type: "self_ids_result", id: f.id, code: 0, login_ids: ["L2"] }));
    if (f.type === "op") queueMicrotask(() => w.push({ type: "result", id: f.id, code: 0, message_id: "m" }));
  };
  const { data } = await c.getSelfIdsOnOtherPlatform();
  await c.send(message.create({ type: "txt", msg: "to my phone", to: data[0], chatType: "singleChat" }));
  await c.send(message.create({ type: "txt", msg: "to bob", to: "bob", chatType: "singleChat" }));
  const ops = FakeWS.all[0].frames("op");
  assert.equal(ops[0].event.message.chat_type, "CHAT_TYPE_SELF_DEVICE");
  assert.equal(ops[1].event.message.chat_type, "CHAT_TYPE_USER");
  await c.close();
});

test("REST calls need pwd or accessToken and send Basic or Bearer", async () => {
  const calls = [];
  const fakeFetch = async (url, init) => {
    calls.push({ url, init });
    return new Response(JSON.stringify({ devices: [{ login_id: "L1" }] }), { status: 200 });
  };
  const c = new Connection({ url: "ws://gw.test:8080/v1/ws", appKey: "demo", WebSocket: FakeWS, fetch: fakeFetch });
  const r = await c.fetchLoggedInDevices({ user: "alice", pwd: "pw" });
  assert.deepEqual(r.data, [{ login_id: "L1" }]);
  assert.equal(calls[0].url, "http://gw.test:8080/v1/apps/demo/users/alice/devices");
  assert.equal(calls[0].init.headers.Authorization, "Basic " + Buffer.from("alice:pw").toString("base64"));
  await c.fetchLoggedInDevices({ user: "alice", accessToken: "mdt1.x" });
  assert.equal(calls[1].init.headers.Authorization, "Bearer mdt1.x");
  await assert.rejects(c.kickAllDevices({ user: "alice" }), (e) => e.code === 1001);
});

test("a snapshot in parts reaches onSnapshot once, whole, after its last part; a part 0 starts over", async () => {
  const c = newConn();
  const snaps = [];
  const errs = [];
  c.addEventHandler("h", { onSnapshot: (s) => snaps.push(s), onError: (e) => errs.push(e.code) });
  await c.open({ user: "alice", pwd: "pw" });
  const ws = FakeWS.all[0];
  ws.push({ type: "snapshot", epoch: "E", seq: 3, part: 0, more: true, contacts: { friends: ["zed"] }, groups: {}, conversations: [] });
  // A part 0 starts over: what was held is dropped.
  ws.push({ type: "snapshot", resync: true, epoch: "E", seq: 7, part: 0, more: true, contacts: { friends: ["a", "b"] }, groups: {}, conversations: [] });
  ws.push({ type: "snapshot", resync: true, epoch: "E", seq: 7, part: 1, more: true, contacts: { friends: ["c"], requests_in: ["d"] }, groups: { groups: ["g1"] }, conversations: [{ conversation_id: "a" }] });
  assert.equal(snaps.length, 0, "nothing before the last part");
  ws.push({ type: "snapshot", resync: true, epoch: "E", seq: 7, part: 2, contacts: {}, groups: { groups: ["g2"], threads: ["g2/t1"] }, conversations: [{ conversation_id: "g2" }] });
  assert.equal(snaps.length, 1);
  assert.deepEqual(snaps[0], {
    resync: true,
    epoch: "E",
    seq: 7,
    contacts: { friends: ["a", "b", "c"], requests_in: ["d"] },
    groups: { groups: ["g1", "g2"], threads: ["g2/t1"] },
    conversations: [{ conversation_id: "a" }, { conversation_id: "g2" }],
  });
  await tick(40);
  assert.deepEqual(ws.frames("ack").at(-1), { type: "ack", epoch: "E", seq: 7 });
  // A part out of order is an error and no snapshot.
  ws.push({ type: "snapshot", epoch: "E", seq: 9, part: 1, contacts: {}, groups: {}, conversations: [] });
  assert.equal(snaps.length, 1);
  assert.deepEqual(errs, [1010]);
  await c.close();
});

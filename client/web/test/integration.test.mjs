// Integration tests: the SDK against a real `mdsync serve` built with
// `go build` and started on 127.0.0.1 with a temporary data directory.
// Every seed scenario, each in its own app so they do not interfere.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Connection, RestClient, message, Code } from "../dist/mdsync.mjs";
import { startServer, waitFor } from "./server.mjs";

let srv;
let rest;
let admin;
const open = [];

before(async () => {
  srv = await startServer();
  rest = new RestClient(srv.url);
  admin = { admin: srv.adminToken };
});

after(async () => {
  await Promise.all(open.map((c) => c.close().catch(() => {})));
  await srv?.stop();
});

let appN = 0;
async function newApp(users = ["alice"], policy) {
  const app = `web${++appN}`;
  for (const u of users) await rest.registerUser(app, u, "password-" + u, admin);
  if (policy) await rest.setPolicy(app, { mode: "PLATFORM_MODE_MULTI", default_limit: 4, limits: [], auto_login: "AUTO_LOGIN_POLICY_KICK_OLDEST", ...policy }, admin);
  return app;
}

/** device opens a connection of user on app; events and kicks are recorded. */
async function device(app, user, opts = {}) {
  const c = new Connection({ url: srv.wsUrl, appKey: app, ackIntervalMs: 50, reconnectMinMs: 50, reconnectMaxMs: 200, ...opts });
  const rec = { kicks: [], events: [], md: [], contact: [], group: [], msgs: [], disconnected: [] };
  c.addEventHandler("rec", {
    onKicked: (k) => rec.kicks.push(k),
    onEvent: (e) => rec.events.push(e),
    onMultiDeviceEvent: (e) => rec.md.push(e),
    onContactEvent: (e) => rec.contact.push(e),
    onGroupEvent: (e) => rec.group.push(e),
    onTextMessage: (m) => rec.msgs.push(m),
    onDisconnected: (d) => rec.disconnected.push(d),
  });
  c.rec = rec;
  if (opts.noOpen) return c;
  await c.open({ user, pwd: "password-" + user });
  open.push(c);
  return c;
}

test("a fifth login on a platform kicks the earliest with the new device's name and extension", async () => {
  const app = await newApp();
  const devs = [];
  for (let i = 1; i <= 4; i++) devs.push(await device(app, "alice", { osType: 1, deviceName: `d${i}` }));
  const fifth = await device(app, "alice", { osType: 1, deviceName: "phone-5", loginExtension: '{"os":"ios"}' });
  await waitFor(() => devs[0].rec.kicks.length === 1, 10_000, "the 206");
  const k = devs[0].rec.kicks[0];
  assert.equal(k.code, Code.LoginOtherDevice);
  assert.equal(k.byDeviceName, "phone-5");
  assert.equal(k.byExtension, '{"os":"ios"}');
  assert.equal(k.byLoginId, fifth.loginId);
  assert.ok(!devs[0].isOpened());
  for (const d of devs.slice(1)) assert.equal(d.rec.kicks.length, 0);
  const { data } = await fifth.fetchLoggedInDevices({ user: "alice", pwd: "password-alice" });
  assert.deepEqual(
    data.map((d) => d.device_name),
    ["d2", "d3", "d4", "phone-5"],
  );
});

test("single-platform mode: a login on another platform kicks the current device", async () => {
  const app = await newApp(["alice"], { mode: "PLATFORM_MODE_SINGLE" });
  const a = await device(app, "alice", { osType: 1, deviceName: "web" });
  await device(app, "alice", { osType: 2, deviceName: "android" });
  await waitFor(() => a.rec.kicks.length === 1, 10_000, "the 206");
  assert.equal(a.rec.kicks[0].code, 206);
  assert.equal(a.rec.kicks[0].byDeviceName, "android");
});

test("auto-login under keep-current is refused with 214 and the current device stays", async () => {
  const app = await newApp(["alice"], { limits: [{ platform: 1, limit: 1 }], auto_login: "AUTO_LOGIN_POLICY_KEEP_CURRENT" });
  const a = await device(app, "alice", { osType: 1 });
  const b = await device(app, "alice", { osType: 1, loginId: "b-before-restart", noOpen: true });
  await assert.rejects(b.open({ user: "alice", pwd: "password-alice" }), (e) => e.code === Code.TooManyDevices);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(a.rec.kicks.length, 0);
  assert.ok(a.isOpened());
});

test("kickDevice and kickAllDevices with the password, while logged out", async () => {
  const app = await newApp();
  const a = await device(app, "alice", { osType: 1, deviceName: "a" });
  const b = await device(app, "alice", { osType: 2, deviceName: "b" });
  const c = await device(app, "alice", { osType: 3, deviceName: "c" });
  const out = new Connection({ url: srv.wsUrl, appKey: app }); // never opened
  const { data } = await out.fetchLoggedInDevices({ user: "alice", pwd: "password-alice" });
  assert.deepEqual(data.map((d) => d.login_id), [a.loginId, b.loginId, c.loginId]);
  assert.ok(data.every((d) => d.connected));
  await out.kickDevice({ user: "alice", pwd: "password-alice", resource: b.loginId });
  await waitFor(() => b.rec.kicks.length === 1, 10_000, "b's 217");
  assert.equal(b.rec.kicks[0].code, Code.KickedByOtherDevice);
  assert.equal(a.rec.kicks.length + c.rec.kicks.length, 0);
  await out.kickAllDevices({ user: "alice", pwd: "password-alice" });
  await waitFor(() => a.rec.kicks.length === 1 && c.rec.kicks.length === 1, 10_000, "a's and c's 217");
  assert.deepEqual([a.rec.kicks[0].code, c.rec.kicks[0].code], [217, 217]);
  assert.deepEqual((await out.fetchLoggedInDevices({ user: "alice", pwd: "password-alice" })).data, []);
  await assert.rejects(out.kickAllDevices({ user: "alice", pwd: "wrong" }), (e) => e.code === Code.Unauthenticated && e.httpStatus === 401);
});

test("getSelfIdsOnOtherPlatform and a message to one own device only", async () => {
  const app = await newApp();
  const a = await device(app, "alice", { osType: 1 });
  const b = await device(app, "alice", { osType: 2 });
  const c = await device(app, "alice", { osType: 3 });
  const res = await a.getSelfIdsOnOtherPlatform();
  assert.deepEqual(new Set(res.data), new Set([b.loginId, c.loginId]));
  const msg = message.create({ type: "txt", msg: "to my tablet", to: b.loginId, chatType: "singleChat" });
  const r = await a.send(msg);
  assert.ok(r.serverMsgId);
  await waitFor(() => b.rec.msgs.length === 1, 10_000, "b's message");
  assert.equal(b.rec.msgs[0].msg, "to my tablet");
  assert.equal(b.rec.msgs[0].fromLoginId, a.loginId);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(c.rec.msgs.length, 0, "the third device does not get it");
});

test("multi-device events carry the seed's operation and from = the user's own ID", async () => {
  const app = await newApp(["alice", "bob"]);
  const a = await device(app, "alice", { osType: 1 });
  const b = await device(app, "alice", { osType: 2 });
  const bob = await device(app, "bob", { osType: 1 });
  const conv = { chat_type: "CHAT_TYPE_USER", conversation_id: "bob" };
  await a.op({ kind: "KIND_CONTACT_REQUEST", contact: { user: "bob" } });
  await a.op({ kind: "KIND_GROUP_CREATE", group: { group_id: "g1", name: "G" } });
  await a.op({ kind: "KIND_GROUP_MEMBER_ATTRIBUTES_CHANGED", group: { group_id: "g1", users: ["alice"], attributes: [{ key: "nick", value: "Al" }] } });
  await a.op({ kind: "KIND_THREAD_CREATE", thread: { thread_id: "t1", group_id: "g1", name: "T" } });
  await a.op({ kind: "KIND_THREAD_UPDATE", thread: { thread_id: "t1", group_id: "g1", name: "T2" } });
  await a.op({ kind: "KIND_THREAD_LEAVE", thread: { thread_id: "t1", group_id: "g1" } });
  await a.op({ kind: "KIND_THREAD_JOIN", thread: { thread_id: "t1", group_id: "g1" } });
  await a.op({ kind: "KIND_THREAD_DESTROY", thread: { thread_id: "t1", group_id: "g1" } });
  await a.op({ kind: "KIND_CONVERSATION_PIN", conversation: conv });
  await a.op({ kind: "KIND_CONVERSATION_UNPIN", conversation: conv });
  await a.op({ kind: "KIND_CONVERSATION_MARK", conversation: { ...conv, mark: 1 } });
  await a.op({ kind: "KIND_CONVERSATION_UNMARK", conversation: { ...conv, mark: 1 } });
  await a.op({ kind: "KIND_REMOTE_MESSAGES_REMOVE", conversation: conv });
  await a.op({ kind: "KIND_CONVERSATION_DELETE", conversation: conv });
  const want = [
    "memberAttributesUpdate",
    "chatThreadCreate",
    "chatThreadNameUpdate",
    "chatThreadLeave",
    "chatThreadJoin",
    "chatThreadDestroy",
    "pinnedConversation",
    "unpinnedConversation",
    "markConversation",
    "unMarkConversation",
    "deleteRoaming",
    "deleteConversation",
  ];
  await waitFor(() => b.rec.md.length >= want.length, 10_000, "b's multi-device events");
  assert.deepEqual(b.rec.md.map((e) => e.operation), want);
  assert.ok(b.rec.md.every((e) => e.from === "alice" && e.multiDevice));
  await waitFor(() => b.rec.contact.length === 1 && b.rec.group.length === 1, 10_000, "contact and group events");
  assert.equal(b.rec.contact[0].from, "alice", "multi-device contact event: from is the user's own ID");
  assert.equal(b.rec.contact[0].to, "bob");
  assert.equal(b.rec.group[0].from, "alice");
  assert.equal(b.rec.group[0].id, "g1");
  assert.equal(a.rec.md.length + a.rec.contact.length, 0, "the acting device gets none");
  await waitFor(() => bob.rec.contact.length === 1, 10_000, "bob's contact request");
  assert.equal(bob.rec.contact[0].from, "alice", "single-device event: from is the operator");
  assert.equal(bob.rec.contact[0].multiDevice, false);
});

test("offline catch-up: exactly once, in order, after a reopen and after a dropped socket", async () => {
  const app = await newApp(["alice", "bob"]);
  const a = await device(app, "alice", { osType: 1 });
  let bob = await device(app, "bob", { osType: 1, deviceName: "bob-web" });
  const loginId = bob.loginId;
  // One message first: a device can acknowledge a position only once its
  // timeline has an epoch (an empty timeline's snapshot has none).
  await a.send(message.create({ type: "txt", msg: "first", to: "bob", chatType: "singleChat" }));
  await waitFor(() => bob.rec.msgs.length === 1, 10_000, "the first message");
  await bob.close(); // sends the final ack
  bob.rec.msgs.length = 0;
  for (let i = 0; i < 20; i++) await a.send(message.create({ type: "txt", msg: `m${i}`, to: "bob", chatType: "singleChat" }));
  bob = await device(app, "bob", { osType: 1, deviceName: "bob-web", loginId });
  await waitFor(() => bob.rec.msgs.length >= 20, 10_000, "catch-up");
  assert.deepEqual(bob.rec.msgs.map((m) => m.msg), Array.from({ length: 20 }, (_, i) => `m${i}`));
  // Drop the socket under the SDK: it resumes and nothing is seen twice.
  await new Promise((r) => setTimeout(r, 150));
  bob["live"].ws.close();
  for (let i = 20; i < 30; i++) await a.send(message.create({ type: "txt", msg: `m${i}`, to: "bob", chatType: "singleChat" }));
  await waitFor(() => bob.rec.msgs.length >= 30, 15_000, "messages after the resume");
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(bob.rec.msgs.map((m) => m.msg), Array.from({ length: 30 }, (_, i) => `m${i}`));
  assert.ok(bob.rec.disconnected.some((d) => d.willReconnect));
  assert.ok(bob.isOpened());
});

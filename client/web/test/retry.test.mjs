// Unit tests of the SDK's retries: what a retry cures (1019 busy, 1009
// unavailable, 1018 without an owner) is sent again after the wait the
// server asked for — retry_after_ms on the WebSocket, Retry-After (or
// retry_after_ms) on REST — a bounded number of times within the call's
// deadline; anything else fails at once.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Connection, RestClient, message, Code } from "../dist/mdsync.mjs";
import { FakeWS } from "./fakews.mjs";

const keepAlive = setInterval(() => {}, 1000);
after(() => clearInterval(keepAlive));

function newConn(extra = {}) {
  FakeWS.all = [];
  FakeWS.onSend = (ws, f) => {
    if (f.type === "login" || f.type === "resume") queueMicrotask(() => ws.push({ type: "login_result", id: f.id, code: 0, login_id: "L1" }));
  };
  return new Connection({ url: "ws://gw.test/v1/ws", appKey: "demo", WebSocket: FakeWS, ackIntervalMs: 10, reconnectMinMs: 5, reconnectMaxMs: 20, ...extra });
}

const txt = (id) => message.create({ type: "txt", msg: "x", to: "bob", chatType: "singleChat", id });

test("a result 1009 or 1018 without addr with retry_after_ms is sent again, at most 5 times", async () => {
  const c = newConn();
  await c.open({ user: "alice", pwd: "pw" });
  const ws = FakeWS.all[0];
  let n = 0;
  FakeWS.onSend = (w, f) => {
    if (f.type !== "op") return;
    n++;
    const code = n % 2 ? 1009 : 1018;
    queueMicrotask(() => w.push({ type: "result", id: f.id, code, message: "later", retry_after_ms: 5 }));
  };
  const t0 = Date.now();
  await assert.rejects(c.send(txt("m-1")), (e) => e.code === Code.Unavailable && e.retryAfterMs === 5);
  assert.equal(ws.frames("op").length, 5, "five sends in all");
  assert.ok(Date.now() - t0 >= 20, "waited retry_after_ms between sends");
  const [first, ...rest] = ws.frames("op");
  for (const f of rest) assert.deepEqual(f, first, "every resend is the same frame (same client_op_id)");

  // Then cured: the op succeeds on a resend.
  n = 0;
  FakeWS.onSend = (w, f) => {
    if (f.type !== "op") return;
    n++;
    if (n === 1) queueMicrotask(() => w.push({ type: "result", id: f.id, code: 1009, message: "log slow", retry_after_ms: 5 }));
    else queueMicrotask(() => w.push({ type: "result", id: f.id, code: 0, event_id: "ev2", message_id: "ev2", partition: 0, offset: 1 }));
  };
  const r = await c.send(txt("m-2"));
  assert.equal(r.serverMsgId, "ev2");
  await c.close();
});

test("a refusal without retry_after_ms, or a 1018 naming the owner, is not sent again", async () => {
  const c = newConn();
  await c.open({ user: "alice", pwd: "pw" });
  const ws = FakeWS.all[0];
  const answers = [
    { code: 1009, message: "no hint" },
    { code: 1018, message: "owned elsewhere", addr: "other.test:9000", retry_after_ms: 5 },
    { code: 1011, message: "refused", retry_after_ms: 5 },
  ];
  for (const a of answers) {
    const before = ws.frames("op").length;
    FakeWS.onSend = (w, f) => f.type === "op" && queueMicrotask(() => w.push({ type: "result", id: f.id, ...a }));
    await assert.rejects(c.send(txt("m-" + a.code)), (e) => e.code === a.code);
    assert.equal(ws.frames("op").length, before + 1, `${a.code}: sent once`);
  }
  await c.close();
});

test("a login refused with 1018 and no owner yet, or 1009, is retried after retry_after_ms", async () => {
  const c = newConn();
  let logins = 0;
  FakeWS.onSend = (ws, f) => {
    if (f.type !== "login") return;
    logins++;
    if (logins === 1) queueMicrotask(() => ws.push({ type: "error", id: f.id, code: 1018, message: "owner not known yet", retry_after_ms: 10 }));
    else if (logins === 2) queueMicrotask(() => ws.push({ type: "login_result", id: f.id, code: 1009, message: "log slow", retry_after_ms: 10 }));
    else queueMicrotask(() => ws.push({ type: "login_result", id: f.id, code: 0, login_id: "L7" }));
  };
  const r = await c.open({ user: "alice", pwd: "pw" });
  assert.equal(r.loginId, "L7");
  assert.equal(logins, 3);
  assert.ok(FakeWS.all.every((w) => w.url === "ws://gw.test/v1/ws"), "no redirect without an addr");
  await c.close();
});

/** A fake fetch answering from a list of [status, body, headers]. */
function scripted(answers) {
  const calls = [];
  const f = async (url, init) => {
    calls.push({ url, method: init.method, at: Date.now() });
    const [status, body, headers] = answers[Math.min(calls.length, answers.length) - 1];
    return new Response(typeof body === "string" ? body : JSON.stringify(body), { status, headers: headers ?? {} });
  };
  return { f, calls };
}

test("REST retries 429/1019 and 503 with Retry-After, then answers", async () => {
  const { f, calls } = scripted([
    [429, { code: 1019, message: "busy", retry_after_ms: 20 }, { "Retry-After": "1" }],
    [503, { code: 1018, message: "owner not known yet" }, { "Retry-After": "1" }],
    [200, { devices: [{ login_id: "L1" }] }],
  ]);
  const rest = new RestClient("http://api.test", { fetch: f });
  const ds = await rest.fetchLoggedInDevices("demo", "alice", { pwd: "pw" });
  assert.deepEqual(ds, [{ login_id: "L1" }]);
  assert.equal(calls.length, 3);
  assert.ok(calls[1].at - calls[0].at >= 15, "retry_after_ms of the body first");
  assert.ok(calls[2].at - calls[1].at >= 900, "Retry-After (seconds) when the body has none");
});

test("REST: a write refused 503/1009 is not repeated; a read's 503 is", async () => {
  let s = scripted([[503, { code: 1009, message: "log slow" }, { "Retry-After": "1" }]]);
  await assert.rejects(new RestClient("http://api.test", { fetch: s.f }).kickAllDevices("demo", "alice", { pwd: "pw" }), (e) => e.code === 1009 && e.httpStatus === 503);
  assert.equal(s.calls.length, 1);
  s = scripted([[503, { code: 1009, message: "store slow", retry_after_ms: 5 }], [200, { devices: [] }]]);
  assert.deepEqual(await new RestClient("http://api.test", { fetch: s.f }).fetchLoggedInDevices("demo", "alice", { pwd: "pw" }), []);
  assert.equal(s.calls.length, 2);
  // 429 for a password rate limit (1014) is not a retry.
  s = scripted([[429, { code: 1014, message: "too many attempts" }, { "Retry-After": "6" }]]);
  await assert.rejects(new RestClient("http://api.test", { fetch: s.f }).fetchLoggedInDevices("demo", "alice", { pwd: "pw" }), (e) => e.code === 1014);
  assert.equal(s.calls.length, 1);
});

test("REST retries at most 5 times, and never past the call's deadline", async () => {
  let s = scripted([[429, { code: 1019, message: "busy", retry_after_ms: 1 }]]);
  await assert.rejects(new RestClient("http://api.test", { fetch: s.f }).kickAllDevices("demo", "alice", { pwd: "pw" }), (e) => e.code === Code.Busy);
  assert.equal(s.calls.length, 5);
  s = scripted([[429, { code: 1019, message: "busy", retry_after_ms: 200 }]]);
  const t0 = Date.now();
  await assert.rejects(new RestClient("http://api.test", { fetch: s.f, timeoutMs: 100 }).kickAllDevices("demo", "alice", { pwd: "pw" }), (e) => e.code === Code.Busy && e.retryAfterMs === 200);
  assert.equal(s.calls.length, 1, "a wait past the deadline is not taken");
  assert.ok(Date.now() - t0 < 150);
});

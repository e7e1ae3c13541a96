// Browser tests in Debian's Chromium (/usr/bin/chromium, driven by
// playwright-core; no browser is downloaded). Pages are served from another
// port than mdsync, so they exercise --allowed-origins: the WebSocket
// handshake and CORS on the user routes, and no CORS on admin routes.
// Screenshots of the console go to client/web/test-artifacts/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { RestClient } from "../dist/mdsync.mjs";
import { startServer, waitFor } from "./server.mjs";
import { servePage, launch, artifacts } from "./browser.mjs";

const devicePage = `<!doctype html><meta charset="utf-8"><title>device</title>
<script src="/mdsync.min.js"></script>
<script>
  window.kicks = [];
  window.start = async (wsUrl, app, user, pwd, name) => {
    const conn = new mdsync.connection({ url: wsUrl, appKey: app, osType: 1, deviceName: name });
    conn.addEventHandler("t", { onKicked: (k) => window.kicks.push(k) });
    window.conn = conn;
    const r = await conn.open({ user, pwd });
    return r.loginId;
  };
</script>`;

let srv, page, browser, rest;
const admin = { admin: "" };

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  page = await servePage(devicePage);
  srv = await startServer(["--allowed-origins", page.origin]);
  admin.admin = srv.adminToken;
  rest = new RestClient(srv.url);
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await page?.close();
  await srv?.stop();
});

test("two pages, one platform with a limit of 1: the first sees 206 with the second's name; the console kicks the second (217)", async () => {
  const app = "browser";
  await rest.registerUser(app, "alice", "password-alice", admin);
  await rest.setPolicy(app, { mode: "PLATFORM_MODE_MULTI", default_limit: 4, limits: [{ platform: 1, limit: 1 }], auto_login: "AUTO_LOGIN_POLICY_KICK_OLDEST" }, admin);

  const ctx = await browser.newContext();
  const p1 = await ctx.newPage();
  const p2 = await ctx.newPage();
  await p1.goto(page.origin);
  await p2.goto(page.origin);
  const id1 = await p1.evaluate(([u, a]) => window.start(u, a, "alice", "password-alice", "first-tab"), [srv.wsUrl, app]);
  assert.ok(id1);
  const id2 = await p2.evaluate(([u, a]) => window.start(u, a, "alice", "password-alice", "second-tab"), [srv.wsUrl, app]);
  await p1.waitForFunction(() => window.kicks.length === 1, null, { timeout: 10_000 });
  const k1 = await p1.evaluate(() => window.kicks[0]);
  assert.equal(k1.code, 206);
  assert.equal(k1.byDeviceName, "second-tab");
  assert.equal(k1.byLoginId, id2);

  // CORS: the page may list the user's devices with the password (a user
  // route), but not read an admin route even with the admin token.
  const listed = await p2.evaluate(async () => (await window.conn.fetchLoggedInDevices({ user: "alice", pwd: "password-alice" })).data.map((d) => d.device_name));
  assert.deepEqual(listed, ["second-tab"]);
  const adminCall = await p2.evaluate(
    async ([base, app, token]) => {
      try {
        await fetch(`${base}/v1/apps/${app}/policy`, { headers: { Authorization: "Bearer " + token } });
        return "read";
      } catch (e) {
        return "blocked";
      }
    },
    [srv.url, app, srv.adminToken],
  );
  assert.equal(adminCall, "blocked");

  // The console, same origin as mdsync: sign in, find alice, kick the device.
  const con = await ctx.newPage();
  await con.setViewportSize({ width: 1100, height: 900 });
  await con.goto(srv.url + "/console/");
  await con.getByLabel("Admin token").fill(srv.adminToken);
  await con.getByLabel("App").fill(app);
  await con.getByRole("button", { name: "Sign in" }).click();
  await con.getByText("live", { exact: true }).waitFor({ timeout: 10_000 });
  await con.getByLabel("User ID").fill("alice");
  await con.keyboard.press("Enter");
  const row = con.locator(`tr[data-login-id="${id2}"]`);
  await row.waitFor({ timeout: 10_000 });
  assert.match(await row.innerText(), /second-tab/);
  assert.match(await con.locator("#explain").innerText(), /REASON_LOGIN_OTHER_DEVICE/);
  assert.match(await con.locator("#policy-form #limits").inputValue(), /1=1/);
  await con.screenshot({ path: join(artifacts, "console-devices.png"), fullPage: true });

  await row.getByRole("button", { name: /Kick/ }).click();
  await p2.waitForFunction(() => window.kicks.length === 1, null, { timeout: 10_000 });
  assert.equal(await p2.evaluate(() => window.kicks[0].code), 217);
  // The live feed (opened after the 206) shows the kick as it happens.
  await con.locator('#feed li[data-type="ended"][data-code="217"]').first().waitFor({ timeout: 10_000 });
  await waitFor(async () => (await con.locator(`tr[data-login-id="${id2}"]`).count()) === 0, 10_000, "the kicked row to go");
  await con.screenshot({ path: join(artifacts, "console-after-kick.png"), fullPage: true });

  // 360 px wide: no horizontal scrolling of the page.
  await con.setViewportSize({ width: 360, height: 800 });
  const overflow = await con.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `page scrolls sideways by ${overflow}px at 360px`);
  await con.screenshot({ path: join(artifacts, "console-360.png"), fullPage: true });
  await ctx.close();
});

test("another origin not in --allowed-origins is refused the WebSocket and CORS", async () => {
  const other = await servePage(devicePage);
  try {
    await rest.registerUser("browser2", "bob", "password-bob", admin);
    const ctx = await browser.newContext();
    const p = await ctx.newPage();
    await p.goto(other.origin);
    const r = await p.evaluate(async ([u]) => {
      try {
        await window.start(u, "browser2", "bob", "password-bob", "x");
        return "open";
      } catch (e) {
        return "refused " + e.code;
      }
    }, [srv.wsUrl]);
    assert.match(r, /^refused/);
    const c = await p.evaluate(async (base) => {
      try {
        await fetch(`${base}/v1/apps/browser2/users/bob/devices`, { headers: { Authorization: "Basic " + btoa("bob:password-bob") } });
        return "read";
      } catch {
        return "blocked";
      }
    }, srv.url);
    assert.equal(c, "blocked");
    await ctx.close();
  } finally {
    await other.close();
  }
});

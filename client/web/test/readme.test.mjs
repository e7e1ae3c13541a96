// Runs README.md's web quickstart page as written (only the server's port
// changes): served from another origin allowed by --allowed-origins, it
// connects, lists the user's other devices, and prints the 206 when a
// second login takes its platform's only slot.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Connection, RestClient } from "../dist/mdsync.mjs";
import { startServer, repo } from "./server.mjs";
import { servePage, launch } from "./browser.mjs";

const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

test("README web quickstart page", async () => {
  const readme = readFileSync(join(repo, "README.md"), "utf8");
  const m = readme.match(/<!-- web quickstart:[^\n]*-->\n```html\n([\s\S]*?)\n```/);
  assert.ok(m, "README.md has the web quickstart block");
  let html = m[1];
  const page = await servePage("placeholder");
  await page.close();
  const srv = await startServer(["--allowed-origins", page.origin]);
  cleanup.push(() => srv.stop());
  html = html.replaceAll("ws://127.0.0.1:8080", `ws://127.0.0.1:${srv.port}`);
  const served = await servePageOn(page.port, html);
  cleanup.push(() => served.close());
  const rest = new RestClient(srv.url);
  await rest.registerUser("demo", "alice", "correct-horse", { admin: srv.adminToken });
  await rest.setPolicy("demo", { mode: "PLATFORM_MODE_MULTI", default_limit: 4, limits: [{ platform: 1, limit: 1 }], auto_login: "AUTO_LOGIN_POLICY_KICK_OLDEST" }, { admin: srv.adminToken });
  const browser = await launch();
  cleanup.push(() => browser.close());
  const p = await browser.newPage();
  await p.goto(page.origin + "/");
  await p.waitForFunction(() => document.getElementById("log").textContent.includes("my other devices: []"), null, { timeout: 10_000 });
  const phone = new Connection({ url: srv.wsUrl, appKey: "demo", osType: 1, deviceName: "phone" });
  await phone.open({ user: "alice", pwd: "correct-horse" });
  cleanup.push(() => phone.close());
  await p.waitForFunction(() => document.getElementById("log").textContent.includes("kicked: 206 by phone"), null, { timeout: 10_000 });
  assert.match(await p.locator("#log").innerText(), /^connected as \S+\nmy other devices: \[\]\nkicked: 206 by phone/);
});

// servePageOn is servePage on a given port (the one --allowed-origins names).
async function servePageOn(port, html) {
  const { createServer } = await import("node:http");
  const bundle = readFileSync(join(repo, "client/web/dist/mdsync.min.js"));
  const s = createServer((req, res) => {
    const js = req.url === "/mdsync.min.js";
    res.writeHead(200, { "Content-Type": js ? "text/javascript" : "text/html; charset=utf-8" });
    res.end(js ? bundle : html);
  });
  await new Promise((r) => s.listen(port, "127.0.0.1", r));
  return { close: () => new Promise((r) => s.close(r)) };
}

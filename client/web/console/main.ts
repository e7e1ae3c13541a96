// The mdsync console (served by `mdsync serve` at /console/): sign in with
// the admin token; per app, a user's devices grouped by platform (kick one,
// kick all), the app's policy, a live feed of logins, evictions and kicks,
// and the explain view of every ended session. Built on the SDK's REST part.

import { RestClient } from "../src/rest.js";
import { MdsyncError } from "../src/errors.js";
import type { Credential } from "../src/rest.js";
import type { Device, Ended, FeedItem, Int64, Policy } from "../src/types.js";

const rest = new RestClient("");
let cred: Credential = {};
let app = "";
let currentUser = "";
let feedAbort: AbortController | null = null;

function el<T extends HTMLElement = HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (!e) throw new Error(`console: #${id} missing`);
  return e as T;
}

function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, ...kids: (Node | string)[]): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const k of kids) e.append(k);
  return e;
}

function when(ms: Int64 | undefined): string {
  const n = typeof ms === "string" ? Number(ms) : (ms ?? 0);
  return n ? new Date(n).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "—";
}

function errText(err: unknown): string {
  return err instanceof MdsyncError ? err.message : String(err);
}

async function signIn(ev: Event): Promise<void> {
  ev.preventDefault();
  const token = el<HTMLInputElement>("token").value.trim();
  const a = el<HTMLInputElement>("app").value.trim();
  el("signin-error").textContent = "";
  try {
    await rest.getPolicy(a, { admin: token }); // checks the token
  } catch (err) {
    el("signin-error").textContent = `Sign-in failed: ${errText(err)}`;
    return;
  }
  cred = { admin: token };
  app = a;
  sessionStorage.setItem("mdsync.console", JSON.stringify({ token, app }));
  el("signin").hidden = true;
  el("app-view").hidden = false;
  el("who").textContent = `app ${app}`;
  await loadPolicy();
  startFeed();
  el<HTMLInputElement>("user").focus();
}

async function findUser(ev?: Event): Promise<void> {
  ev?.preventDefault();
  currentUser = el<HTMLInputElement>("user").value.trim();
  el("user-error").textContent = "";
  if (!currentUser) return;
  try {
    renderDevices(await rest.fetchLoggedInDevices(app, currentUser, cred));
    renderExplain(await rest.audit(app, currentUser, cred));
  } catch (err) {
    el("user-error").textContent = errText(err);
  }
}

function renderDevices(devices: Device[]): void {
  const box = el("devices");
  box.replaceChildren();
  el("kick-all").hidden = devices.length === 0;
  if (devices.length === 0) {
    box.append(h("p", {}, `${currentUser} has no logged-in device.`));
    return;
  }
  const byPlatform = new Map<number, Device[]>();
  for (const d of devices) {
    const list = byPlatform.get(d.platform) ?? [];
    list.push(d); // the API lists devices in login order
    byPlatform.set(d.platform, list);
  }
  for (const [platform, list] of [...byPlatform].sort((x, y) => x[0] - y[0])) {
    box.append(h("h3", {}, `Platform ${platform} (${list.length})`));
    const head = h("tr", {}, ...["Name", "Login ID", "Extension", "Login time", "Last seen", "Address", "Connected", ""].map((t) => h("th", { scope: "col" }, t)));
    const rows = list.map((d) => {
      const kick = h("button", { type: "button", class: "danger", "aria-label": `Kick ${d.device_name || d.login_id}` }, "Kick");
      kick.addEventListener("click", () => void kickOne(d.login_id));
      return h(
        "tr",
        { "data-login-id": d.login_id },
        h("td", {}, d.device_name || "—"),
        h("td", {}, d.login_id),
        h("td", { class: "wrap" }, d.extension || "—"),
        h("td", {}, when(d.login_time_unix_ms)),
        h("td", {}, when(d.last_seen_unix_ms)),
        h("td", {}, d.remote_addr || "—"),
        h("td", {}, d.connected ? "yes" : "no"),
        h("td", {}, kick),
      );
    });
    box.append(h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, head), h("tbody", {}, ...rows))));
  }
}

/** explain renders one ended session as a sentence: who, why, by whom, under which policy, where in the log. */
function explain(e: Ended): string {
  const s = e.session ?? {};
  const who = `${s.device_name || "device"} (${s.login_id ?? "?"}, platform ${s.platform ?? "?"})`;
  let why = `${e.reason ?? "?"} — code ${e.code ?? 0}`;
  if (e.code === 206) why += `: a newer login ${e.by_device_name || ""} (${e.by_login_id ?? ""}) on the same platform took the slot`;
  const by = e.by_actor?.admin ? "the admin" : e.by_actor?.user ? `user ${e.by_actor.user}${e.by_actor.login_id ? ` on ${e.by_actor.login_id}` : ""}` : "—";
  return `${who} ended at ${when(e.time_unix_ms)}; why: ${why}; by: ${by}; policy version ${e.policy_version ?? 0}; log position partition ${e.partition ?? 0}, offset ${e.offset ?? 0}.`;
}

function renderExplain(ended: Ended[]): void {
  const box = el("explain");
  box.replaceChildren();
  if (ended.length === 0) box.append(h("p", {}, "No ended session."));
  for (const e of [...ended].reverse()) box.append(h("p", { class: "explain-item" }, explain(e)));
}

async function kickOne(loginId: string): Promise<void> {
  try {
    await rest.kickDevice(app, currentUser, loginId, cred);
  } catch (err) {
    el("user-error").textContent = errText(err);
  }
  await findUser();
}

async function kickAll(): Promise<void> {
  try {
    await rest.kickAllDevices(app, currentUser, cred);
  } catch (err) {
    el("user-error").textContent = errText(err);
  }
  await findUser();
}

async function loadPolicy(): Promise<void> {
  const p = await rest.getPolicy(app, cred);
  el<HTMLSelectElement>("mode").value = p.mode && p.mode !== "PLATFORM_MODE_UNSPECIFIED" ? p.mode : "PLATFORM_MODE_MULTI";
  el<HTMLInputElement>("default-limit").value = String(p.default_limit || 4);
  el<HTMLInputElement>("limits").value = (p.limits ?? []).map((l) => `${l.platform}=${l.limit}`).join(", ");
  el<HTMLSelectElement>("auto-login").value = p.auto_login && p.auto_login !== "AUTO_LOGIN_POLICY_UNSPECIFIED" ? p.auto_login : "AUTO_LOGIN_POLICY_KICK_OLDEST";
  el("policy-status").textContent = `version ${p.version ?? 0}`;
}

async function savePolicy(ev: Event): Promise<void> {
  ev.preventDefault();
  const limits: { platform: number; limit: number }[] = [];
  for (const part of el<HTMLInputElement>("limits").value.split(",")) {
    if (part.trim() === "") continue;
    const [p, l] = part.split("=").map((x) => Number(x.trim()));
    if (!Number.isInteger(p) || !Number.isInteger(l)) {
      el("policy-status").textContent = `bad limit "${part.trim()}": use platform=limit`;
      return;
    }
    limits.push({ platform: p as number, limit: l as number });
  }
  const policy: Policy = {
    mode: el<HTMLSelectElement>("mode").value as Policy["mode"],
    default_limit: Number(el<HTMLInputElement>("default-limit").value),
    limits,
    auto_login: el<HTMLSelectElement>("auto-login").value as Policy["auto_login"],
  };
  try {
    await rest.setPolicy(app, policy, cred);
    await loadPolicy();
    el("policy-status").textContent += " — saved";
  } catch (err) {
    el("policy-status").textContent = `not saved: ${errText(err)}`;
  }
}

function feedLine(it: FeedItem): string {
  const t = when(it.time_unix_ms) === "—" ? new Date().toISOString().slice(11, 19) : when(it.time_unix_ms);
  switch (it.type) {
    case "login":
      return `${t} login ${it.user} ${it.login_id}${it.reconnect ? " (reconnect)" : ""}`;
    case "login_refused":
      return `${t} login refused ${it.user}: ${it.code} ${it.message ?? ""}`;
    case "ended":
      return `${t} ended ${it.user} ${it.device_name || ""} ${it.login_id}: ${it.code} ${it.reason ?? ""}${it.by_device_name ? ` by ${it.by_device_name}` : ""}${it.by_admin ? " by the admin" : ""}`;
    case "dropped":
      return `${t} (the feed skipped items)`;
  }
  return `${t} ${it.type}`;
}

function startFeed(): void {
  feedAbort?.abort();
  const ac = new AbortController();
  feedAbort = ac;
  const list = el("feed");
  const run = async (): Promise<void> => {
    while (!ac.signal.aborted) {
      try {
        await rest.feed(
          app,
          cred,
          (it) => {
            list.prepend(h("li", { "data-type": it.type, "data-code": String(it.code) }, feedLine(it)));
            while (list.childElementCount > 200) list.lastElementChild?.remove();
            if (it.user === currentUser && it.type !== "dropped") void findUser();
          },
          ac.signal,
          () => (el("feed-status").textContent = "live"),
        );
      } catch (err) {
        el("feed-status").textContent = `disconnected: ${errText(err)}; retrying`;
      }
      await new Promise((r) => setTimeout(r, 2000));
    }
  };
  void run();
}

function init(): void {
  el("signin-form").addEventListener("submit", (e) => void signIn(e));
  el("user-form").addEventListener("submit", (e) => void findUser(e));
  el("kick-all").addEventListener("click", () => void kickAll());
  el("policy-form").addEventListener("submit", (e) => void savePolicy(e));
  const saved = sessionStorage.getItem("mdsync.console");
  if (saved) {
    const s = JSON.parse(saved) as { token: string; app: string };
    el<HTMLInputElement>("token").value = s.token;
    el<HTMLInputElement>("app").value = s.app;
  }
}

init();

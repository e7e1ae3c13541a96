// The REST part of the SDK (docs/openapi.yaml): a user's devices with the
// user's password or token (fetchLoggedInDevices, kickDevice,
// kickAllDevices: no login needed), and the admin routes the console uses.

import { Code, MdsyncError } from "./errors.js";
import type { Decision, Device, Ended, FeedItem, Policy } from "./types.js";

/** Who a REST call authenticates as: the admin token, or a user's password or token. */
export interface Credential {
  admin?: string;
  pwd?: string;
  accessToken?: string;
}

export interface RestOptions {
  /** fetch implementation; default globalThis.fetch. */
  fetch?: typeof fetch;
  /**
   * The deadline of one call, retries included, in ms; default 30,000. A
   * refusal a retry cures (429/1019 busy, 503/1018 no owner known yet,
   * any 503 of a read) is sent again after its Retry-After, at most
   * MaxRestAttempts times, while the wait ends before the deadline.
   */
  timeoutMs?: number;
}

/** The most attempts of one REST call refused with a code a retry cures. */
export const MaxRestAttempts = 5;

/**
 * restRetryable: 429/1019 (busy: not decided) and 503/1018 (no owner known
 * yet: nothing appended) on any route, and any 503 of a read. A write
 * refused with 503/1009 is not: it may have been appended, and only the
 * caller knows whether repeating it is harmless (as client/rest.go).
 */
export function restRetryable(method: string, e: MdsyncError): boolean {
  if (e.code === Code.Busy) return true;
  if (e.code === Code.NotOwner && e.httpStatus === 503) return true;
  return method === "GET" && e.httpStatus === 503;
}

function b64(s: string): string {
  const bytes = new TextEncoder().encode(s);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

function authHeader(user: string, c: Credential): string {
  if (c.admin) return `Bearer ${c.admin}`;
  if (c.accessToken) return `Bearer ${c.accessToken}`;
  if (c.pwd) return `Basic ${b64(`${user}:${c.pwd}`)}`;
  return "";
}

function seg(...parts: string[]): string {
  return parts.map((p) => "/" + encodeURIComponent(p)).join("");
}

function statusCode(status: number): number {
  switch (status) {
    case 401:
      return Code.Unauthenticated;
    case 403:
      return Code.Forbidden;
    case 404:
      return Code.NotFound;
    case 409:
      return Code.Conflict;
    case 413:
      return Code.TooLarge;
    case 429:
      return Code.RateLimited;
  }
  return status >= 500 ? Code.Unavailable : Code.InvalidArgument;
}

/** A client of mdsync's HTTP API. Every failure is an MdsyncError. */
export class RestClient {
  readonly baseUrl: string;
  private readonly f: typeof fetch;
  private readonly timeoutMs: number;

  /** baseUrl: "http://127.0.0.1:8080", or "" for the page's own origin. */
  constructor(baseUrl: string, opts: RestOptions = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.f = opts.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.timeoutMs = opts.timeoutMs ?? 30_000;
  }

  /** request is once, sent again after Retry-After while restRetryable says so (see RestOptions.timeoutMs). */
  private async request(method: string, path: string, auth: string, body?: unknown, headers: Record<string, string> = {}): Promise<Response> {
    const deadline = Date.now() + this.timeoutMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.once(method, path, auth, body, headers);
      } catch (err) {
        if (!(err instanceof MdsyncError) || !restRetryable(method, err) || attempt >= MaxRestAttempts) throw err;
        const wait = Math.min(err.retryAfterMs > 0 ? err.retryAfterMs : 200, 5_000);
        if (Date.now() + wait >= deadline) throw err;
        await new Promise((r) => setTimeout(r, wait));
      }
    }
  }

  private async once(method: string, path: string, auth: string, body?: unknown, headers: Record<string, string> = {}): Promise<Response> {
    const h: Record<string, string> = { ...headers };
    if (auth) h["Authorization"] = auth;
    let payload: string | undefined;
    if (body !== undefined) {
      h["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    let resp: Response;
    try {
      resp = await this.f(this.baseUrl + path, { method, headers: h, body: payload });
    } catch (err) {
      throw new MdsyncError(Code.Network, `${method} ${path}: ${String(err)}`);
    }
    if (resp.status < 200 || resp.status > 299) {
      const text = await resp.text();
      let code = 0;
      let message = "";
      let retryAfterMs = 0;
      try {
        const e = JSON.parse(text) as { code?: number; message?: string; retry_after_ms?: number };
        code = typeof e.code === "number" ? e.code : 0;
        message = e.message ?? "";
        retryAfterMs = typeof e.retry_after_ms === "number" ? e.retry_after_ms : 0;
      } catch {
        // not the API's error body
      }
      if (code === 0) {
        code = statusCode(resp.status);
        message = text.trim() || resp.statusText;
      }
      const sec = Number(resp.headers.get("Retry-After"));
      if (retryAfterMs === 0 && Number.isFinite(sec) && sec > 0) retryAfterMs = sec * 1000;
      throw new MdsyncError(code, message, { httpStatus: resp.status, retryAfterMs });
    }
    return resp;
  }

  private async json<T>(method: string, path: string, auth: string, body?: unknown): Promise<T> {
    const resp = await this.request(method, path, auth, body);
    return (await resp.json()) as T;
  }

  private async decision(method: string, path: string, auth: string, body?: unknown): Promise<Decision> {
    const d = await this.json<Decision>(method, path, auth, body);
    if (d.code) throw new MdsyncError(d.code, d.message ?? "", { httpStatus: 200 });
    return d;
  }

  /** The user's logged-in devices in login order (fetchLoggedInDevices). */
  async fetchLoggedInDevices(app: string, user: string, cred: Credential): Promise<Device[]> {
    const out = await this.json<{ devices?: Device[] }>("GET", "/v1/apps" + seg(app, "users", user, "devices"), authHeader(user, cred));
    return out.devices ?? [];
  }

  /** Log one device out (kickDevice); it gets 217. */
  kickDevice(app: string, user: string, loginId: string, cred: Credential): Promise<Decision> {
    return this.decision("DELETE", "/v1/apps" + seg(app, "users", user, "devices", loginId), authHeader(user, cred));
  }

  /** Log every device of the user out (kickAllDevices); each gets 217. */
  kickAllDevices(app: string, user: string, cred: Credential): Promise<Decision> {
    return this.decision("DELETE", "/v1/apps" + seg(app, "users", user, "devices"), authHeader(user, cred));
  }

  /** Issue a user token (admin or the user's password); ttlSeconds 0 uses the server's default. */
  issueToken(app: string, user: string, cred: Credential, ttlSeconds = 0): Promise<{ token: string; expires_at_unix_ms: number }> {
    return this.json("POST", "/v1/apps" + seg(app, "users", user, "tokens"), authHeader(user, cred), ttlSeconds ? { ttl_seconds: ttlSeconds } : {});
  }

  /** Register a user (admin). */
  async registerUser(app: string, user: string, password: string, cred: Credential): Promise<void> {
    await this.request("POST", "/v1/apps" + seg(app, "users"), authHeader(user, cred), { user, password });
  }

  /** Change a user's password (admin or the current password); every device gets 216. */
  changePassword(app: string, user: string, newPassword: string, cred: Credential): Promise<Decision> {
    return this.decision("PUT", "/v1/apps" + seg(app, "users", user, "password"), authHeader(user, cred), { new_password: newPassword });
  }

  /** Remove a user (admin); every device gets 207. */
  removeUser(app: string, user: string, cred: Credential): Promise<Decision> {
    return this.decision("DELETE", "/v1/apps" + seg(app, "users", user), authHeader(user, cred));
  }

  /** The app's device policy (admin). */
  getPolicy(app: string, cred: Credential): Promise<Policy> {
    return this.json("GET", "/v1/apps" + seg(app, "policy"), authHeader("", cred));
  }

  /** Install a policy (admin); version is assigned by the engine. */
  setPolicy(app: string, policy: Policy, cred: Credential): Promise<Decision> {
    const body: Policy = { ...policy };
    delete body.version;
    delete body.set_offset;
    return this.decision("PUT", "/v1/apps" + seg(app, "policy"), authHeader("", cred), body);
  }

  /** Every ended session of the user in log order (admin): the explain view's rows. */
  async audit(app: string, user: string, cred: Credential): Promise<Ended[]> {
    const resp = await this.request("GET", "/v1/apps" + seg(app, "users", user, "audit"), authHeader(user, cred));
    const text = await resp.text();
    return text
      .split("\n")
      .filter((l) => l.trim() !== "")
      .map((l) => JSON.parse(l) as Ended);
  }

  /**
   * Follow the app's live feed of logins, evictions and kicks (admin,
   * server-sent events). onItem runs for each item until signal aborts or
   * the stream ends; the promise settles then.
   */
  async feed(app: string, cred: Credential, onItem: (item: FeedItem) => void, signal?: AbortSignal, onOpen?: () => void): Promise<void> {
    const h: Record<string, string> = { Accept: "text/event-stream" };
    const auth = authHeader("", cred);
    if (auth) h["Authorization"] = auth;
    let resp: Response;
    try {
      resp = await this.f(this.baseUrl + "/v1/apps" + seg(app, "feed"), { headers: h, signal });
    } catch (err) {
      if (signal?.aborted) return;
      throw new MdsyncError(Code.Network, `feed: ${String(err)}`);
    }
    if (!resp.ok || !resp.body) {
      let code = statusCode(resp.status);
      let message = resp.statusText;
      try {
        const e = (await resp.json()) as { code?: number; message?: string };
        code = e.code ?? code;
        message = e.message ?? message;
      } catch {
        // not JSON
      }
      throw new MdsyncError(code, message, { httpStatus: resp.status });
    }
    onOpen?.();
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += dec.decode(value, { stream: true });
        let i: number;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = block
            .split("\n")
            .filter((l) => l.startsWith("data:"))
            .map((l) => l.slice(5).trimStart())
            .join("\n");
          if (data !== "") onItem(JSON.parse(data) as FeedItem);
        }
      }
    } catch (err) {
      if (signal?.aborted) return;
      throw new MdsyncError(Code.Network, `feed: ${String(err)}`);
    }
  }
}

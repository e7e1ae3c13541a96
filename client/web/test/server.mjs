// Test helper: builds mdsync (once per process) with `go build` and starts
// `mdsync serve` on 127.0.0.1 with a temporary data directory.
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const repo = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
let bin = process.env.MDSYNC_BIN || "";

/** mdsyncBinary builds ./cmd/mdsync into a temporary directory (or uses $MDSYNC_BIN). */
export function mdsyncBinary() {
  if (bin && existsSync(bin)) return bin;
  const dir = mkdtempSync(join(tmpdir(), "mdsync-web-bin-"));
  bin = join(dir, "mdsync");
  execFileSync("go", ["build", "-o", bin, "./cmd/mdsync"], { cwd: repo, stdio: "inherit" });
  process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
  return bin;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * startServer starts `mdsync serve`; stop() ends it (SIGTERM) and removes
 * its data directory. The admin token is fixed: "test-admin-token".
 */
export async function startServer(extraArgs = []) {
  const exe = mdsyncBinary();
  const data = mkdtempSync(join(tmpdir(), "mdsync-web-data-"));
  const port = await freePort();
  const adminToken = "test-admin-token";
  const proc = spawn(exe, ["serve", "--data", data, "--addr", `127.0.0.1:${port}`, "--admin-token", adminToken, "--partitions", "2", ...extraArgs], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  proc.stderr.on("data", (b) => {
    log += b.toString();
    if (log.length > 1 << 20) log = log.slice(-(1 << 19));
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`mdsync serve exited ${proc.exitCode}:\n${log}`);
    try {
      const r = await fetch(url + "/readyz");
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`mdsync serve not ready in 60s:\n${log}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    wsUrl: `ws://127.0.0.1:${port}/v1/ws`,
    port,
    adminToken,
    data,
    log: () => log,
    async stop() {
      if (proc.exitCode === null) {
        const exited = new Promise((r) => proc.once("exit", r));
        proc.kill("SIGTERM");
        await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
        if (proc.exitCode === null) proc.kill("SIGKILL");
      }
      rmSync(data, { recursive: true, force: true });
    },
  };
}

/** waitFor polls cond until it is truthy (or throws after ms). */
export async function waitFor(cond, ms = 10_000, what = "condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

// Browser helpers: a static page server on 127.0.0.1 and Debian's Chromium
// launched by playwright-core (never a downloaded browser).
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { freePort } from "./server.mjs";

const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const webDir = join(import.meta.dirname, "..");
export const artifacts = join(webDir, "test-artifacts");

/** servePage serves html at / and the SDK bundle at /mdsync.min.js on 127.0.0.1. */
export async function servePage(html) {
  const port = await freePort();
  const bundle = readFileSync(join(webDir, "dist", "mdsync.min.js"));
  const srv = createServer((req, res) => {
    if (req.url === "/mdsync.min.js") {
      res.writeHead(200, { "Content-Type": "text/javascript" });
      res.end(bundle);
      return;
    }
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
    res.end(html);
  });
  await new Promise((r) => srv.listen(port, "127.0.0.1", r));
  return { origin: `http://127.0.0.1:${port}`, port, close: () => new Promise((r) => srv.close(r)) };
}

export async function launch() {
  const { chromium } = await import("playwright-core");
  return chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
}


// Runs node's test runner on the given files. Node 20 has WebSocket behind
// --experimental-websocket; later versions have it on by default.
import { spawnSync } from "node:child_process";

const flags = typeof globalThis.WebSocket === "undefined" ? ["--experimental-websocket"] : [];
const files = process.argv.slice(2);
const r = spawnSync(process.execPath, [...flags, "--test", "--test-reporter=spec", "--test-concurrency=1", ...files], { stdio: "inherit" });
process.exit(r.status ?? 1);

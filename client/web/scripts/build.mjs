// Builds the SDK (ESM for Node and bundlers, an IIFE for <script> tags,
// typings) and the console's assets (adapters/console/assets) with esbuild.
// The console's asset manifest records a hash of every source it was built
// from; adapters/console's Go test fails when the committed assets are stale.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, readdirSync, writeFileSync, copyFileSync, rmSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const repo = join(root, "..", "..");
const tsc = join(root, "node_modules", ".bin", "tsc");

// Type-check everything (SDK and console) strictly; emit the SDK's typings.
execFileSync(tsc, ["-p", join(root, "tsconfig.console.json")], { stdio: "inherit" });
rmSync(join(root, "dist"), { recursive: true, force: true });
execFileSync(tsc, ["-p", join(root, "tsconfig.json")], { stdio: "inherit" });

const common = { bundle: true, target: "es2020", sourcemap: false, legalComments: "none", logLevel: "warning" };
await build({ ...common, entryPoints: [join(root, "src/index.ts")], format: "esm", platform: "neutral", outfile: join(root, "dist/mdsync.mjs") });
await build({ ...common, entryPoints: [join(root, "src/browser.ts")], format: "iife", platform: "browser", minify: true, outfile: join(root, "dist/mdsync.min.js") });

// The console: one script, one stylesheet, one page.
const assets = join(repo, "adapters", "console", "assets");
mkdirSync(assets, { recursive: true });
await build({ ...common, entryPoints: [join(root, "console/main.ts")], format: "iife", platform: "browser", minify: true, outfile: join(assets, "console.js") });
copyFileSync(join(root, "console/index.html"), join(assets, "index.html"));
copyFileSync(join(root, "console/console.css"), join(assets, "console.css"));

// The manifest: the sources' hash (the Go test recomputes it) and each asset's.
const files = (dir) =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(join(dir, e.name)) : [join(dir, e.name)]));
const sources = [...files(join(root, "src")), ...files(join(root, "console")), join(root, "scripts/build.mjs"), join(root, "package-lock.json")]
  .map((f) => relative(repo, f).split("\\").join("/"))
  .sort();
const h = createHash("sha256");
for (const f of sources) {
  h.update(f + "\n");
  h.update(readFileSync(join(repo, f)));
  h.update("\n");
}
const sha = (f) => createHash("sha256").update(readFileSync(join(assets, f))).digest("hex");
const manifest = {
  comment: "Written by client/web/scripts/build.mjs (npm run build). Do not edit: adapters/console's test compares it with the sources.",
  sources_sha256: h.digest("hex"),
  sources,
  assets: Object.fromEntries(["console.css", "console.js", "index.html"].map((f) => [f, sha(f)])),
};
writeFileSync(join(assets, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
console.log(`built dist/ and ${relative(repo, assets)}/ (sources ${manifest.sources_sha256.slice(0, 12)})`);

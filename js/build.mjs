// Bundles each view into ../nbinterp/static/<view>.js (ES module, everything
// inlined: nothing is fetched at run time). With --tests, bundles the Node
// tests instead, so `node --test` runs them without a TypeScript loader.
import { build } from "esbuild";
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
// Every top-level .ts file is one view (js/attention.ts -> static/attention.js);
// the shared drawing code lives in lib/. scripts/hatch_build.py uses the same rule.
const views = readdirSync(here).filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts")).map((f) => f.slice(0, -3));

if (process.argv.includes("--tests")) {
  const tests = readdirSync(join(here, "test")).filter((f) => f.endsWith(".test.ts"));
  await build({
    entryPoints: tests.map((f) => join(here, "test", f)),
    outdir: join(here, "node_modules", ".cache", "nbinterp-tests"),
    outExtension: { ".js": ".mjs" },
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    logLevel: "warning",
  });
} else {
  await build({
    entryPoints: views.map((v) => join(here, `${v}.ts`)),
    outdir: join(here, "..", "nbinterp", "static"),
    bundle: true,
    format: "esm",
    target: "es2020",
    minify: true,
    sourcemap: false,
    logLevel: "warning",
  });
}

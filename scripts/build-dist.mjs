// `npm run build:dist` (and `npm pack`, through prepack): the Node-side code compiled into dist/ for
// the npm package, with declarations (tsconfig.build.json says how and why with tsc). Plain
// JavaScript, so that it runs before anything is built.
//
// Beyond tsc:
//  - dist/ starts empty, so nothing a source no longer makes (a deleted module) is packed;
//  - flash/eslint-espruino.js, plain JavaScript that tsc does not take in, goes next to the compiled
//    flash/ modules that import it;
//  - the web fleet view's page (gateway/web/static/: HTML, its script and stylesheet, no build step)
//    goes next to the compiled server, which finds it beside itself;
//  - the declarations' relative imports end in .js: tsc rewrites ".ts" in the JavaScript only, and a
//    user's TypeScript without allowImportingTsExtensions takes a ".js" import in a .d.ts as it should.
import { execFileSync } from "node:child_process";
import { copyFileSync, cpSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const dist = path.join(root, "dist");

rmSync(dist, { recursive: true, force: true });
execFileSync(process.execPath, [path.join(root, "node_modules", "typescript", "bin", "tsc"), "-p", path.join(root, "tsconfig.build.json")], { stdio: "inherit" });

for (const f of ["eslint-espruino.js", "eslint-espruino.d.ts"]) copyFileSync(path.join(root, "flash", f), path.join(dist, "flash", f));
cpSync(path.join(root, "gateway", "web", "static"), path.join(dist, "gateway", "web", "static"), { recursive: true });

/** `from "./x.ts"`, `import("./x.ts")` and `import "./x.ts"` with a relative path: the ones tsc leaves. */
const RELATIVE_TS_IMPORT = /((?:from|import)\s*\(?\s*["'])(\.\.?\/[^"']*?)\.ts(["'])/g;
for (const entry of readdirSync(dist, { recursive: true, withFileTypes: true })) {
  if (!entry.isFile() || !entry.name.endsWith(".d.ts")) continue;
  const file = path.join(entry.parentPath, entry.name);
  const text = readFileSync(file, "utf8");
  const rewritten = text.replace(RELATIVE_TS_IMPORT, "$1$2.js$3");
  if (rewritten !== text) writeFileSync(file, rewritten);
}

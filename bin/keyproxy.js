#!/usr/bin/env node
// keyproxy's command line. In a git checkout (and the container image, which copies one) it runs the
// TypeScript sources through tsx, so that a change shows at once and `npm test` needs no build. An
// installed package has no sources (package.json "files") and runs the JavaScript compiled into dist/
// (npm run build:dist). The sources decide rather than dist/: a checkout that once ran build:dist must
// not go on running its stale dist/.
import { existsSync } from "node:fs";

let main;
if (existsSync(new URL("../cli/main.ts", import.meta.url))) {
  const { register } = await import("tsx/esm/api");
  register();
  ({ main } = await import("../cli/main.ts"));
} else {
  // A variable, not a literal: a checkout has no dist/, and tools that follow this file's imports
  // there (test/deploy.test.ts, the container's runtime graph) must not stop at it.
  const compiled = "../dist/cli/main.js";
  ({ main } = await import(compiled));
}
process.exitCode = await main(process.argv.slice(2));

// Where keyproxy's own files are (package.json, the firmware sources), from a git checkout and from an
// installed package alike. In a checkout this module runs as gateway/package/root.ts, two folders
// below the root; in the package as dist/gateway/package/root.js, three below (npm run build:dist).
// So the root is found, not assumed: the nearest folder above this file that holds a package.json
// (dist/ has none).
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

function findPackageRoot(from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, "package.json"))) return dir;
    if (path.dirname(dir) === dir) throw new Error(`keyproxy: no package.json above ${from}: the installation is incomplete`);
  }
}

/** The folder holding keyproxy's package.json and firmware/. */
export const PACKAGE_ROOT: string = findPackageRoot(path.dirname(fileURLToPath(import.meta.url)));

/** The version package.json gives: the CLI's --version, the gateway's status, the firmware id. */
export const PACKAGE_VERSION: string = JSON.parse(readFileSync(path.join(PACKAGE_ROOT, "package.json"), "utf8")).version;

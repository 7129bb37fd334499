// ESLint flat config.
// - Firmware stays inside the Espruino subset (design.md §5). The rules live in
//   flash/eslint-espruino.js so that `keyproxy build` (flash/lint.ts) and `npx eslint` agree.
// - Node-side code (gateway, cli, sdk, ...) may use all of Node 20, but never lose a promise: the
//   registry is asynchronous (SQLite or PostgreSQL), and a forgotten `await` is a check that always
//   passes (`if (!policy.permits(...))` on a promise) or a write that may fail unseen. Type-aware.

import tseslint from "typescript-eslint";
import { espruinoLintConfig } from "./flash/eslint-espruino.js";

const nodeSide = ["gateway/**/*.ts", "cli/**/*.ts", "sdk/**/*.ts", "emulator/**/*.ts", "flash/**/*.ts", "bench/**/*.ts", "test/**/*.ts", "examples/*.ts", "fuzz/**/*.ts", "interpreter/**/*.ts"];

export default [
  ...espruinoLintConfig(["firmware/**/*.ts"]),
  {
    files: nodeSide,
    languageOptions: { parser: tseslint.parser, parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    plugins: { "@typescript-eslint": tseslint.plugin },
    rules: {
      // node:test's test() and describe() return promises the runner itself awaits.
      "@typescript-eslint/no-floating-promises": ["error", { ignoreVoid: true, allowForKnownSafeCalls: [{ from: "package", package: "node:test", name: ["test", "describe", "it", "suite", "before", "after", "beforeEach", "afterEach"] }] }],
      "@typescript-eslint/no-misused-promises": ["error", { checksVoidReturn: false }],
      "@typescript-eslint/await-thenable": "error",
    },
  },
];

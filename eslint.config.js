// ESLint flat config: firmware stays inside the Espruino subset (design.md §5). The rules live in
// flash/eslint-espruino.js so that `keyproxy build` (flash/lint.ts) and `npx eslint` agree.
// Only firmware is linted here; Node-side code (gateway, flash, test) may use all of Node 20.

import { espruinoLintConfig } from "./flash/eslint-espruino.js";

export default [...espruinoLintConfig(["firmware/**/*.ts"])];

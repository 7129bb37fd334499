#!/usr/bin/env node
// keyproxy's command line. The sources are TypeScript; tsx loads them directly.
import { register } from "tsx/esm/api";

register();
const { main } = await import("../cli/main.ts");
process.exitCode = await main(process.argv.slice(2));

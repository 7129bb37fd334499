// Types for flash/eslint-espruino.js (plain JavaScript so that eslint.config.js can load it unaided).
import type { ESLint, Linter } from "eslint";

export declare const FORBIDDEN_GLOBALS: Readonly<Record<string, string>>;
export declare const FORBIDDEN_MEMBERS: Readonly<Record<string, readonly string[]>>;
export declare const FORBIDDEN_ANY_MEMBERS: readonly string[];
export declare const PUBLIC_KEY_PACKAGES: readonly string[];
export declare const PUBLIC_KEY_NAME: RegExp;
export declare const ESX_CONSTRUCTS: Readonly<Record<string, string>>;
export declare const espruinoPlugin: ESLint.Plugin;
export declare function espruinoLintConfig(files: string[]): Linter.Config[];
declare const plugin: ESLint.Plugin;
export default plugin;

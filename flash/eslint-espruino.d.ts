// Types for flash/eslint-espruino.js (plain JavaScript so that eslint.config.js can load it unaided).
import type { ESLint, Linter } from "eslint";

export declare const FORBIDDEN_GLOBALS: Readonly<Record<string, string>>;
export declare const FORBIDDEN_MEMBERS: Readonly<Record<string, readonly string[]>>;
export declare const FORBIDDEN_ANY_MEMBERS: readonly string[];
export declare const PUBLIC_KEY_PACKAGES: readonly string[];
export declare const PUBLIC_KEY_NAME: RegExp;
export declare function regexProblem(pattern: string, flags: string): string | undefined;
export declare function hasWideChar(s: string): boolean;
export declare const HOLLOW_PROTOTYPES: readonly string[];
export declare function hollowPrototypeMessage(owner: string): string;
export declare const WIDE_CHAR_MESSAGE: string;
export declare const ARGUMENTS_MESSAGE: string;
export declare const ERROR_SUBCLASS_MESSAGE: string;
export declare const LENGTH_ASSIGN_MESSAGE: string;
export declare const ESX_CONSTRUCTS: Readonly<Record<string, string>>;
export declare const espruinoPlugin: ESLint.Plugin;
export declare function espruinoLintConfig(files: string[]): Linter.Config[];
declare const plugin: ESLint.Plugin;
export default plugin;

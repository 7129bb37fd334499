// What the firmware may use of the Espruino interpreter's own globals. Anything not declared here
// does not exist on the device; the lint (flash/lint) and the emulator enforce the same list.

/** Espruino's require, for its built-in modules only ("crypto", "Storage", "net").
 *  Written as espruinoRequire in source because esbuild rewrites a bare require; the build turns it
 *  back into require (flash/build.ts). */
declare function espruinoRequire(name: string): any;

interface EspruinoE {
  hwRand(): number;
  CRC32(data: Uint8Array | string): number;
  toUint8Array(data: string | Uint8Array | ArrayBuffer | number[]): Uint8Array;
  toString(data: Uint8Array | ArrayBuffer): string;
  /** The device the console (REPL) is on: "Serial1", "USB", "Bluetooth", "LoopbackA", ...; undefined when none. */
  getConsole(): string | undefined;
  /** Moves the console; null takes it away altogether. */
  setConsole(device: string | null, options?: { force?: boolean }): void;
}
declare const E: EspruinoE;
declare function getTime(): number;
declare function print(...args: unknown[]): void;
declare const console: { log(...args: unknown[]): void };
declare function setTimeout(fn: () => void, ms: number): number;
declare function clearTimeout(id: number): void;
declare function setInterval(fn: () => void, ms: number): number;
declare function clearInterval(id: number): void;
declare const process: { memory(): { free: number; usage: number; total: number }; env: { VERSION?: string; BOARD?: string } };
/** BLE UART on nRF52 boards (Puck.js, Bangle.js 2). */
declare const Bluetooth: {
  on(ev: "data", cb: (s: string) => void): void;
  write(data: string | Uint8Array): void;
  /** Moves the console (the REPL) to Bluetooth. */
  setConsole(): void;
  /** Bytes as if they had come from the central: to the REPL while the console is on Bluetooth. */
  inject(data: string): void;
};
declare const NRF: { on(ev: "connect" | "disconnect", cb: (x?: unknown) => void): void; setAdvertising(data: object, options: { name: string }): void };
/** Bangle.js 2 only: native AES-CCM (no additional data). */
declare const AES: {
  ccmEncrypt(msg: Uint8Array, key: Uint8Array, nonce: Uint8Array, tagLen: number): { data: ArrayBuffer; tag: ArrayBuffer };
  ccmDecrypt(msg: Uint8Array, key: Uint8Array, nonce: Uint8Array, tag: Uint8Array): ArrayBuffer;
};
/** Espruino's global object. */
declare const global: any;

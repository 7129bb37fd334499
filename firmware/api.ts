// The device API for applications: what an application bundled with the firmware by
// `keyproxy build --app <file>` gets, as TypeScript types. Types only: nothing here reaches a bundle.
//
// An application is a module whose default export is a function. The build puts the board's runtime
// first in the bundle and the application after it, and calls that function with the handset (the
// global KP) once the runtime has made it. On a device that is not provisioned there is no handset:
// the function is not called (firmware/app.ts), and the device boots as it would without it.
//
//   import type { Device } from "../../firmware/api.ts";
//   export default function main(kp: Device): void {
//     kp.onRequest = (from, app) => app === "chat";
//     kp.onMessage = (data, spi, peer) => print(peer + ": " + E.toString(data));
//   }
//
// The application is held to the same Espruino subset as the firmware (design.md §5): the same lint
// over its TypeScript sources, esbuild's supported table and the gate over the bundle. Besides KP it
// may use Espruino's globals as firmware/espruino.d.ts and firmware/api-globals.d.ts declare them
// (espruinoRequire("Storage") for Espruino's require). Its bytes count in the board's budget.

import type { Handset } from "./handset.ts";

/** What KP.status() answers. */
export interface Status {
  /** "down", "joining", "linked", ... */
  state: string;
  registered: boolean;
  /** Seconds the registration has left (0 when not registered). */
  expiresIn: number;
  certId: Uint8Array | null;
  /** Joins since boot. */
  joins: number;
  /** Frames dropped (bad CRC, tag or sequence). */
  dropped: number;
  /** Security associations (end-to-end sessions) held. */
  sas: number;
}

/** The handset as an application sees it: the global KP (docs/PROTOCOL.md §6). */
export interface Device {
  /** Asks for an end-to-end session with a peer ("name", or "name@domain" behind another gateway)
   *  for an application name the gateway's policy allows (`keyproxy policy allow`). False when the
   *  request could not be sent now (not linked, or another request is outstanding). onConnect fires
   *  when both ends hold the keys; a refusal leaves lastCode set (2 unknown or not allowed,
   *  6 no common suite, 7 declined). */
  connect(peer: string, app: string): boolean;
  /** Sends bytes to the peer of a session, or to every other member of a group (a group SA's spi:
   *  the gateway installs it in each member, onConnect(spi, "name@domain", app, replaces); firmware
   *  built with `keyproxy build --groups`). False when there is no such session or it is used up. */
  send(spi: number, data: Uint8Array): boolean;
  /** Ends a session: the peer gets onClose(spi, 1). */
  close(spi: number): boolean;
  /** Registers again (renews) for `lifetime` seconds (default: the provisioned one); 0 deregisters. */
  register(lifetime?: number): boolean;
  /** Asks the gateway for a peer's certificate. */
  certQuery(name: string): boolean;
  status(): Status;
  /** Type and error code of the gateway's last answer. */
  lastType: number;
  lastCode: number;

  /** An incoming session request: true accepts it. Without this hook every request is refused. */
  onRequest?: (from: string, app: string) => boolean;
  /** A session is up (as caller or callee). `replaces` is the SPI it replaces after a rekey, else 0:
   *  the old SPI keeps working for send(). */
  onConnect?: (spi: number, peer: string, app: string, replaces: number) => void;
  /** Bytes from the peer of a session. */
  onMessage?: (data: Uint8Array, spi: number, peer: string, app: string) => void;
  /** A session ended: reason 1 bye, 2 peer gone, 6 revoked. */
  onClose?: (spi: number, reason: number) => void;
}

/** An application: its module's default export. */
export type App = (kp: Device) => void;

/** The runtime's handset offers all of Device (a type error here if it ever stops doing so). */
type Satisfies<T extends U, U> = T;
export type HandsetIsDevice = Satisfies<Handset, Device>;

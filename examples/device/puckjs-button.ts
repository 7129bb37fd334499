// A Puck.js whose button sends a message to its peer over an end-to-end session, and which shows
// (on the console) what its peer sends back.
//
//   keyproxy build --board puckjs --app examples/device/puckjs-button.ts
//   keyproxy flash --port /dev/ttyUSB0 --board puckjs --bundle build/puckjs.js
//
// The peer's name is in Storage, in button.json (on the device's console:
// require("Storage").writeJSON("button.json", {peer: "kitchen"})); the gateway's policy must allow
// the application "button" between the two (keyproxy policy allow --from <this> --to <peer> --app button).
// The peer accepts sessions for "button" from anyone its gateway lets through: two Pucks with this
// bundle can press at each other.

import type { Device } from "../../firmware/api.ts";

const APP = "button";

export default function main(kp: Device): void {
  const settings = espruinoRequire("Storage").readJSON("button.json", true) || {};
  const peer: string = settings.peer || "peer";
  let spi = 0;
  let presses = 0;
  /** A press before the session is up: sent once it is. */
  let waiting = "";

  kp.onRequest = (from, app) => app === APP;
  kp.onConnect = (s, who, app) => {
    if (app !== APP) return;
    if (who === peer) spi = s;
    if (waiting !== "" && who === peer) {
      kp.send(s, E.toUint8Array(waiting));
      waiting = "";
    }
  };
  kp.onMessage = (data, s, who, app) => {
    if (app === APP) print("button: " + who + " says " + E.toString(data));
  };
  kp.onClose = (s) => {
    if (s === spi) spi = 0;
  };

  setWatch(() => {
    presses++;
    const text = "press " + presses;
    if (spi !== 0 && kp.send(spi, E.toUint8Array(text))) return;
    spi = 0;
    waiting = text;
    if (!kp.connect(peer, APP)) print("button: not connected yet, press again later");
  }, BTN, { edge: "rising", repeat: true, debounce: 50 });
  print("button: ready, peer " + peer);
}

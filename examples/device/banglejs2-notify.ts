// A Bangle.js 2 that shows on its screen what its peers send it, buzzes, and answers "seen" to the
// last sender when its button is pressed.
//
//   keyproxy build --board banglejs2 --app examples/device/banglejs2-notify.ts
//   keyproxy flash --port <tty> --board banglejs2 --bundle build/banglejs2.js
//
// It accepts sessions for the application "notify"; the gateway's policy says who may call it
// (keyproxy policy allow --from <sender> --to <this watch> --app notify).

import type { Device } from "../../firmware/api.ts";

const APP = "notify";

export default function main(kp: Device): void {
  let last = 0;

  const show = (title: string, text: string) => {
    g.clear();
    g.setFontAlign(0, 0);
    g.setFont("6x8", 2);
    g.drawString(title, g.getWidth() / 2, g.getHeight() / 3);
    g.drawString(text, g.getWidth() / 2, (2 * g.getHeight()) / 3);
    g.flip();
  };

  kp.onRequest = (from, app) => app === APP;
  kp.onMessage = (data, spi, peer, app) => {
    if (app !== APP) return;
    last = spi;
    Bangle.setLCDPower(true);
    show(peer, E.toString(data));
    Bangle.buzz(200);
  };
  kp.onClose = (spi) => {
    if (spi === last) last = 0;
  };

  setWatch(() => {
    if (last !== 0 && kp.send(last, E.toUint8Array("seen"))) show("sent", "seen");
  }, BTN1, { edge: "rising", repeat: true, debounce: 50 });
  show("keyproxy", "waiting");
}

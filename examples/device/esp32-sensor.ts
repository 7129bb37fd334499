// An ESP32 that reads a sensor every minute and sends the reading to its peer over an end-to-end
// session: here the voltage on pin D36 (an ADC input: wire a potentiometer, an LDR divider or a
// thermistor divider to it), as text, "D36=0.512".
//
//   keyproxy build --board esp32 --app examples/device/esp32-sensor.ts
//   keyproxy flash --port /dev/ttyUSB0 --board esp32 --bundle build/esp32.js
//
// The peer's name and the period are in Storage, in sensor.json (on the device's console:
// require("Storage").writeJSON("sensor.json", {peer: "logger", every: 60})); the gateway's policy must
// allow the application "sensor" (keyproxy policy allow --from <this> --to <peer> --app sensor).

import type { Device } from "../../firmware/api.ts";

const APP = "sensor";
const PIN = "D36";

export default function main(kp: Device): void {
  const settings = espruinoRequire("Storage").readJSON("sensor.json", true) || {};
  const peer: string = settings.peer || "peer";
  const every: number = settings.every || 60;
  let spi = 0;

  kp.onConnect = (s, who, app) => {
    if (app === APP && who === peer) spi = s;
  };
  kp.onClose = (s) => {
    if (s === spi) spi = 0;
  };

  setInterval(() => {
    const reading = PIN + "=" + analogRead(PIN).toFixed(3);
    if (spi !== 0 && kp.send(spi, E.toUint8Array(reading))) return;
    spi = 0;
    // No session (yet, or any more): ask for one; this reading is lost, the next one goes out.
    if (kp.status().registered) kp.connect(peer, APP);
  }, every * 1000);
  print("sensor: every " + every + "s to " + peer);
}

// Puck.js: native AES (ECB/CBC) and SHA-256, BLE UART. No secretbox: it does not fit 2,630 variables.
import { DeviceCrypto } from "../crypto/device.ts";
import { SUITE_AES_CCM_16_64_128 } from "../crypto/types.ts";
import { startHandset } from "../platform/espruino.ts";

const h = startHandset(new DeviceCrypto({ crypto: espruinoRequire("crypto"), aes: undefined, E: E }), [SUITE_AES_CCM_16_64_128]);
if (h) {
  // BLE UART: the gateway's BLE central connects to us; Bluetooth.write takes the frame bytes as they are.
  Bluetooth.on("data", (s: string) => h.receive(E.toUint8Array(s)));
  NRF.on("connect", () => h.up(Bluetooth));
  NRF.on("disconnect", () => h.down());
}

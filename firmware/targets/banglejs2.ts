// Bangle.js 2: native AES-CCM only (global AES), SHA-256, BLE UART; room for secretbox.
import { DeviceCrypto } from "../crypto/device.ts";
import { secretboxSuite } from "../crypto/secretbox.ts";
import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305 } from "../crypto/types.ts";
import { startHandset } from "../platform/espruino.ts";

const h = startHandset(new DeviceCrypto({ crypto: espruinoRequire("crypto"), aes: AES, E: E }, [secretboxSuite]), [SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305]);
if (h) {
  // BLE UART: the gateway's BLE central connects to us; Bluetooth.write takes the frame bytes as they are.
  Bluetooth.on("data", (s: string) => h.receive(E.toUint8Array(s)));
  NRF.on("connect", () => h.up(Bluetooth));
  NRF.on("disconnect", () => h.down());
}

// Puck.js: native AES (ECB/CBC) and SHA-256, BLE UART. No secretbox: it does not fit 2,630 variables.
import { DeviceCrypto } from "../crypto/device.ts";
import { SUITE_AES_CCM_16_64_128 } from "../crypto/types.ts";
import { startBle, startHandset } from "../platform/espruino.ts";

const h = startHandset(new DeviceCrypto({ crypto: espruinoRequire("crypto"), aes: undefined, E: E }), [SUITE_AES_CCM_16_64_128]);
if (h) startBle(h);

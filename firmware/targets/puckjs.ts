// Puck.js: native AES (ECB/CBC) and SHA-256, BLE UART. No secretbox: it does not fit 2,630 variables.
import { deviceCrypto } from "../crypto/device.ts";
import { espruinoNatives } from "../crypto/natives.ts";
import { SUITE_AES_CCM_16_64_128 } from "../crypto/types.ts";
import { loadConfig, makeHandset, startBleUart } from "../platform/espruino.ts";

const cfg = loadConfig();
if (cfg) startBleUart(makeHandset(cfg, deviceCrypto(espruinoNatives(espruinoRequire("crypto"), undefined, E), []), [SUITE_AES_CCM_16_64_128]));

// Bangle.js 2: native AES-CCM only (global AES), SHA-256, BLE UART; room for secretbox.
import { deviceCrypto } from "../crypto/device.ts";
import { espruinoNatives } from "../crypto/natives.ts";
import { secretboxSuite } from "../crypto/secretbox.ts";
import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305 } from "../crypto/types.ts";
import { loadConfig, makeHandset, startBleUart } from "../platform/espruino.ts";

const cfg = loadConfig();
if (cfg) startBleUart(makeHandset(cfg, deviceCrypto(espruinoNatives(espruinoRequire("crypto"), AES, E), [secretboxSuite]), [SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305]));

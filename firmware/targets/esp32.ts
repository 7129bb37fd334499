// ESP32: native AES (ECB/CBC) and SHA-256, TCP over Wi-Fi (joined to the network beforehand).
import { deviceCrypto } from "../crypto/device.ts";
import { espruinoNatives } from "../crypto/natives.ts";
import { secretboxSuite } from "../crypto/secretbox.ts";
import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305 } from "../crypto/types.ts";
import { loadConfig, makeHandset, startTcp } from "../platform/espruino.ts";

const cfg = loadConfig();
if (cfg && cfg.gw) startTcp(makeHandset(cfg, deviceCrypto(espruinoNatives(espruinoRequire("crypto"), undefined, E), [secretboxSuite]), [SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305]), cfg.gw);

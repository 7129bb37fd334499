// ESP32: native AES (ECB/CBC) and SHA-256, TCP over Wi-Fi (joined to the network beforehand).
import { DeviceCrypto } from "../crypto/device.ts";
import { secretboxSuite } from "../crypto/secretbox.ts";
import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305 } from "../crypto/types.ts";
import { startHandset, startTcp } from "../platform/espruino.ts";

const h = startHandset(new DeviceCrypto({ crypto: espruinoRequire("crypto"), aes: undefined, E: E }, [secretboxSuite]), [SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305]);
if (h) startTcp(h);

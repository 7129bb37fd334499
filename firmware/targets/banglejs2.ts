// Bangle.js 2: native AES-CCM only (global AES), SHA-256, BLE UART; room for secretbox.
import { DeviceCrypto } from "../crypto/device.ts";
import { secretboxSuite } from "../crypto/secretbox.ts";
import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305 } from "../crypto/types.ts";
import { startBle, startHandset } from "../platform/espruino.ts";

const h = startHandset(new DeviceCrypto({ crypto: espruinoRequire("crypto"), aes: AES, E: E }, [secretboxSuite]), [SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305]);
if (h) startBle(h);

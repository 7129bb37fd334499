// The name a handset advertises over Bluetooth LE, one definition for both ends: the firmware sets it
// (startBle in firmware/platform/espruino.ts) and a keyproxy central looks for it (gateway/ble/).
// Espruino shortens a name that does not fit the advertisement (a "short local name"), so a long id
// is advertised cut; the central only needs the prefix, and the link's join names the device.
export const BLE_NAME_PREFIX = "kp-";

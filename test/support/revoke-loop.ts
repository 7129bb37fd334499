// One of several processes revoking devices in the same fleet directory at once (test/fleet-revoke-
// concurrent.test.ts): argv[2] the fleet directory, argv[3] this process's name, argv[4] how many.
import { Fleet } from "../../gateway/fleet/fleet.ts";

const [dir, who, count] = [process.argv[2], process.argv[3], Number(process.argv[4])];
// Start together: wait for the instant the test gave (argv[5], ms since the epoch).
const start = Number(process.argv[5]);
while (Date.now() < start) { /* spin: the processes race from the same instant */ }
for (let i = 0; i < count; i++) Fleet.open(dir).revoke({ devices: [`${who}-${i}@a.example`] }, Math.floor(Date.now() / 1000));

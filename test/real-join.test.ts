// The real-interpreter tier: join and register, on every board, the unmodified bundle flashed and
// provisioned as a user does it, against a gateway process.
import assert from "node:assert/strict";
import { realRig, realTest, REAL_BOARDS } from "./support/real.ts";

for (const board of REAL_BOARDS) {
  realTest(`${board}: the unmodified bundle joins and registers with a gateway process`, [board], async () => {
    const rig = await realRig();
    try {
      const dev = await rig.handset(board, `r-${board}`);
      await dev.waitFor(/^KP registered for 3600s$/, 30_000);
      const st = await dev.eval<{ state: string; registered: boolean; joins: number }>("KP.status()");
      assert.equal(st.state, "linked");
      assert.equal(st.registered, true);
      assert.equal(st.joins, 1);
      const reg = rig.gw.events("registered").find((e) => e.device === `r-${board}`);
      assert.ok(reg, "the gateway logged the registration");
      assert.match(String(reg.firmware), /^0\.1\.0-[0-9a-f]{8}$/);
      assert.ok(Number(reg.memoryUsed) > 0, "the device reports the variables it uses");
    } finally {
      await rig.stop();
    }
  });
}

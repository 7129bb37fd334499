// A process that queues audit records in a store, waits until they are committed, says so on its
// IPC channel and then waits to be killed (test/store-audit.test.ts: a crash after the commit).
import { Store } from "../../gateway/registry/store.ts";

const [file, count] = [process.argv[2], Number(process.argv[3])];
const store = await Store.open(file);
for (let i = 0; i < count; i++) store.auditBatched(1_800_000_000 + i, `dev-${i}`, "session-up", `spi=${i}`);
await store.auditCommitted();
process.send!("committed");
setInterval(() => {}, 1 << 30);

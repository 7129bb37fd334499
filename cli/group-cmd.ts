// `keyproxy group`: the group SAs whose home is this gateway (docs/PROTOCOL.md §5d, docs/OPERATIONS.md
// "Groups"). Membership is operator policy kept in the registry; a running gateway notices a change
// within GROUP_POLL_MS and replaces the group's key, so a member taken out cannot read what follows.
import { openStore } from "../gateway/gateway.ts";
import { GroupError, KeyGroups } from "../gateway/registry/key-groups.ts";
import { GROUP_POLL_MS } from "../gateway/sessions/groups.ts";
import { DEFAULT_DATA_DIR } from "./config.ts";
import { existingRegistry } from "./device-cmd.ts";
import { parse, printJson, UsageError } from "./args.ts";

const HELP = `usage: keyproxy group <command> [options] [--data-dir <dir>]

Groups of handsets that share one group key: a member sends one message and
every other member gets it. This gateway is the group's home: the group is
name@<this gateway's domain>, and its members may be devices of any domain.
Whenever the members change, the group gets a new key: a member taken out
cannot read what follows, a new one cannot read what came before. (Not the
policy's groups: those are for permission rules, keyproxy policy group.)

  create --group <name> --app <name>
                          a new group, for an application name
  add --group <name> --device <who>
                          a member: a device id, or name@domain
  remove --group <name> --device <who>
                          take a member out (its key is closed at once)
  delete --group <name>   the group and its membership
  list [--json]           the groups and their members

  --data-dir <dir>  the gateway's data directory (default ${DEFAULT_DATA_DIR}); a
                    running gateway applies a change within ${GROUP_POLL_MS / 1000} s`;

export async function groupCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === "--help" || sub === "-h") {
    console.log(HELP);
    return 0;
  }
  if (!sub) throw new UsageError("a command is required: create, add, remove, delete or list");
  const o = parse(rest, {
    group: { type: "string" },
    app: { type: "string" },
    device: { type: "string" },
    "data-dir": { type: "string" },
    db: { type: "string" },
    json: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (o.help) {
    console.log(HELP);
    return 0;
  }
  if (!["create", "add", "remove", "delete", "list"].includes(sub)) throw new UsageError(`unknown subcommand "${sub}"`);
  if (o.json && sub !== "list") throw new UsageError("--json is for list");
  if (sub !== "list" && !o.group) throw new UsageError("--group <name> is required");
  if (sub === "create" && !o.app) throw new UsageError("--app <name> is required");
  if ((sub === "add" || sub === "remove") && !o.device) throw new UsageError("--device <who> is required");
  const dataDir = o["data-dir"] ?? DEFAULT_DATA_DIR;
  const store = sub === "list" ? await existingRegistry(dataDir, o.db) : await openStore(dataDir, o.db);
  try {
    const groups = new KeyGroups(store);
    const now = Math.floor(Date.now() / 1000);
    const group = o.group as string;
    if (sub === "create") {
      await groups.create(group, o.app as string, now);
      console.log(`group ${group}: created for ${o.app}`);
    } else if (sub === "add") {
      const added = await groups.add(group, o.device as string, now);
      console.log(`group ${group}: ${o.device} ${added ? "added" : "was a member already"}`);
    } else if (sub === "remove") {
      if (!(await groups.remove(group, o.device as string))) throw new Error(`${o.device} is not a member of group ${group}`);
      console.log(`group ${group}: ${o.device} removed`);
    } else if (sub === "delete") {
      if (!(await groups.delete(group))) throw new Error(`no group ${group}`);
      console.log(`group ${group}: deleted`);
    } else if (o.json) {
      printJson({ dataDir, groups: await groups.list() });
    } else {
      const all = await groups.list();
      if (!all.length) console.log("(no groups)");
      for (const g of all) console.log(`${g.name}  app ${g.app}  members ${g.members.join(", ") || "(none)"}`);
    }
  } catch (e) {
    if (e instanceof GroupError) throw new UsageError(e.message);
    throw e;
  } finally {
    await store.close();
  }
  return 0;
}

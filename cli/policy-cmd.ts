import { openStore } from "../gateway/gateway.ts";
import { Policy, type Action } from "../gateway/registry/policy.ts";
import { DEFAULT_DATA_DIR } from "./config.ts";
import { existingRegistry } from "./device-cmd.ts";
import { parse, printJson, UsageError } from "./args.ts";
import { noteNewDataDir } from "./git-worktree.ts";
import { forTerminal } from "../gateway/log/terminal.ts";

const HELP = `usage: keyproxy policy <command> [options] [--data-dir <dir>]

Who may talk to whom. Every connection and certificate request is checked; a
matching deny beats a matching allow, and with no matching rule the default
decides (deny unless set otherwise). A denied request gets exactly the answer an
unknown name gets.

  allow --from <who> --to <who> [--app <name>]
                          add an allow rule; who: a device id, name@domain,
                          *@domain, group:<name> or *. Without --app it allows
                          every application (and says so on stderr)
  deny --from <who> --to <who> [--app <name>]
                          add a deny rule (--app defaults to *)
  list [--json]           the rules and the default (--json: one JSON document)
  remove --id <n>         delete a rule
  default <allow|deny>    what happens when no rule matches
  group add --device <id> --group <name>
                          put a device in a group
  group remove --device <id> --group <name>
                          take a device out of a group

  --data-dir <dir>  the gateway's data directory (default ${DEFAULT_DATA_DIR});
                    changes apply to the next request, no restart needed; list
                    needs a registry there and creates nothing`;

/** The warning for an allow rule without --app: it lets the two sides run any application at all. */
export function everyAppWarning(from: string, to: string): string {
  return `keyproxy policy: warning: this rule allows every application from ${from} to ${to}; narrow it with --app <name>`;
}

export async function policyCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === "--help" || sub === "-h") {
    console.log(HELP);
    return 0;
  }
  if (!sub) throw new UsageError("a command is required: allow, deny, list, remove, default or group");
  const groupSub = sub === "group" ? rest.shift() : undefined;
  const positional = sub === "default" ? rest.shift() : undefined;
  const o = parse(rest, {
    from: { type: "string" },
    to: { type: "string" },
    app: { type: "string" },
    id: { type: "string" },
    device: { type: "string" },
    group: { type: "string" },
    "data-dir": { type: "string" },
    db: { type: "string" },
    json: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (o.help) {
    console.log(HELP);
    return 0;
  }
  if (!["allow", "deny", "list", "remove", "default", "group"].includes(sub)) throw new UsageError(`unknown subcommand "${sub}"`);
  if (o.json && sub !== "list") throw new UsageError("--json is for list");
  const dataDir = o["data-dir"] ?? DEFAULT_DATA_DIR;
  // Only list is read-only. The others may make the registry: rules are set before a gateway's first
  // run (after "keyproxy fleet issue-gateway --data-dir"), as the README shows.
  const warnIfNew = noteNewDataDir(dataDir);
  const store = sub === "list" ? await existingRegistry(dataDir, o.db) : await openStore(dataDir, o.db);
  try {
    const policy = new Policy(store);
    if (sub === "allow" || sub === "deny") {
      if (!o.from || !o.to) throw new UsageError("--from and --to are required");
      const id = await policy.add(o.from, o.to, o.app ?? "*", sub as Action);
      console.log(`rule ${id}: ${sub} ${o.from} -> ${o.to} app ${o.app ?? "*"}`);
      // After the rule is in: the names are checked by then, and the rule is what the operator asked for.
      if (sub === "allow" && o.app === undefined) console.error(forTerminal(everyAppWarning(o.from, o.to)));
    } else if (sub === "list" && o.json) {
      printJson({ dataDir, default: await policy.defaultAction(), rules: (await policy.rules()).map((r) => ({ id: r.id, action: r.action, from: r.subject, to: r.object, app: r.app })) });
    } else if (sub === "list") {
      console.log(`default: ${await policy.defaultAction()}`);
      for (const r of await policy.rules()) console.log(`${String(r.id).padStart(4)}  ${r.action.padEnd(5)} ${r.subject} -> ${r.object}  app ${r.app}`);
    } else if (sub === "remove") {
      const id = Number(o.id);
      if (!Number.isInteger(id)) throw new UsageError("--id <n> is required");
      if (!(await policy.remove(id))) throw new Error(`no rule ${id}`);
      console.log(`removed rule ${id}`);
    } else if (sub === "default") {
      if (positional !== "allow" && positional !== "deny") throw new UsageError("default takes allow or deny");
      await policy.setDefault(positional);
      console.log(`default: ${positional}`);
    } else if (sub === "group") {
      if (!o.device || !o.group) throw new UsageError("--device and --group are required");
      if (groupSub === "add") await policy.addToGroup(o.device, o.group);
      else if (groupSub === "remove") {
        if (!(await policy.removeFromGroup(o.device, o.group))) throw new Error(`${o.device} is not in group ${o.group}`);
      } else throw new UsageError('group takes "add" or "remove"');
      console.log(`${o.device}: groups ${(await policy.groups(o.device)).join(", ") || "(none)"}`);
    } else throw new UsageError(`unknown subcommand "${sub}"`);
  } catch (e) {
    if (e instanceof UsageError) throw e;
    if (/must be/.test((e as Error).message)) throw new UsageError((e as Error).message);
    throw e;
  } finally {
    await store.close();
  }
  warnIfNew();
  return 0;
}

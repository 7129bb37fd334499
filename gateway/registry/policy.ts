// Who may talk to whom (seed 002 claims 5 and 15): a permission table of rules by device, group and
// application, checked on every connection and certificate request. A rule's subject (the caller)
// and object (the callee) are a device id, "group:<name>", "*", a device of another domain
// ("name@domain") or every device of one ("*@domain"); its app is a name or "*". A
// matching deny beats a matching allow; with no matching rule the configured default decides
// (deny unless set otherwise).

import type { Store } from "./store.ts";

export type Action = "allow" | "deny";
export interface Rule {
  id: number;
  subject: string;
  object: string;
  app: string;
  action: Action;
}

// A device id, optionally "@domain" (a device behind another gateway), or "*@domain".
const PATTERN = /^(\*|group:[A-Za-z0-9._-]{1,64}|(\*|[A-Za-z0-9._-]{1,64})@[A-Za-z0-9._-]{1,190}|[A-Za-z0-9._-]{1,64})$/;

/** Devices whose groups a policy cache keeps at most (emptied when full: a miss is one read). */
const MAX_CACHED_DEVICES = 10_000;

/** The policy as read at one version: its rules and default, and the groups of the devices asked about. */
interface Cached {
  version: string;
  rules: Rule[];
  defaultAction: Action;
  groups: Map<string, string[]>;
}

export class Policy {
  private cached: Cached | undefined;

  /** The tables are the registry's own (migrations.ts, versions 3 and 7). */
  constructor(private store: Store) {}

  static check(pattern: string, what: string): void {
    if (!PATTERN.test(pattern)) throw new Error(`${what} "${pattern}" must be a device id, name@domain, *@domain, group:<name> or *`);
  }

  async defaultAction(): Promise<Action> {
    return (await this.store.getMeta("policy_default")) === "allow" ? "allow" : "deny";
  }

  async setDefault(a: Action): Promise<void> {
    await this.store.setMeta("policy_default", a);
  }

  async add(subject: string, object: string, app: string, action: Action): Promise<number> {
    Policy.check(subject, "--from");
    Policy.check(object, "--to");
    if (!/^(\*|[A-Za-z0-9._-]{1,64})$/.test(app)) throw new Error(`--app "${app}" must be an application name or *`);
    const r = await this.store.row("INSERT INTO policy_rules (subject, object, app, action) VALUES (?, ?, ?, ?) RETURNING id", [subject, object, app, action]);
    return Number(r?.id);
  }

  async remove(id: number): Promise<boolean> {
    return (await this.store.query("DELETE FROM policy_rules WHERE id = ?", [id])).changes === 1;
  }

  async rules(): Promise<Rule[]> {
    return (await this.store.query("SELECT id, subject, object, app, action FROM policy_rules ORDER BY id")).rows as unknown as Rule[];
  }

  async addToGroup(deviceId: string, group: string): Promise<void> {
    Policy.check(`group:${group}`, "--group");
    await this.store.query("INSERT INTO device_groups (device_id, grp) VALUES (?, ?) ON CONFLICT DO NOTHING", [deviceId, group]);
  }

  async removeFromGroup(deviceId: string, group: string): Promise<boolean> {
    return (await this.store.query("DELETE FROM device_groups WHERE device_id = ? AND grp = ?", [deviceId, group])).changes === 1;
  }

  async groups(deviceId: string): Promise<string[]> {
    return (await this.store.query("SELECT grp FROM device_groups WHERE device_id = ? ORDER BY grp", [deviceId])).rows.map((r) => r.grp as string);
  }

  /** May caller reach callee for app? Deny wins over allow; no match: the default. `keyproxy policy`
   *  changes the rules from another process, or another instance of the domain, while the gateway
   *  runs: every check reads the policy's version, which the database renews (a random value, never
   *  one seen before) in the same transaction as any change to the policy (triggers, migrations.ts
   *  version 7), and reads the policy again when it changed. So a check never uses a policy older
   *  than a direct read would see, at one statement instead of four. */
  async permits(caller: string, callee: string, app: string): Promise<boolean> {
    const matches = (pattern: string, id: string, groups: string[]) =>
      pattern === "*" ||
      pattern === id ||
      (pattern.startsWith("*@") && id.endsWith(pattern.slice(1))) ||
      (pattern.startsWith("group:") && groups.includes(pattern.slice(6)));
    const p = await this.current();
    const [cg, eg] = await Promise.all([this.groupsAt(p, caller), this.groupsAt(p, callee)]);
    let allowed = false;
    for (const r of p.rules) {
      if (!matches(r.subject, caller, cg) || !matches(r.object, callee, eg) || (r.app !== "*" && r.app !== app)) continue;
      if (r.action === "deny") return false;
      allowed = true;
    }
    return allowed || p.defaultAction === "allow";
  }

  /** The policy at the registry's version now. The version is read first: what is read after it is
   *  that version or newer, and a newer one is read again at the next check. */
  private async current(): Promise<Cached> {
    const version = await this.store.getMeta("policy_version");
    const c = this.cached;
    // No version (a registry this code did not migrate): read every time, as before.
    if (c && version !== undefined && c.version === version) return c;
    const [rules, defaultAction] = await Promise.all([this.rules(), this.defaultAction()]);
    const fresh: Cached = { version: version ?? "", rules, defaultAction, groups: new Map() };
    if (version !== undefined) this.cached = fresh;
    return fresh;
  }

  private async groupsAt(p: Cached, deviceId: string): Promise<string[]> {
    const known = p.groups.get(deviceId);
    if (known) return known;
    const groups = await this.groups(deviceId);
    if (p.groups.size >= MAX_CACHED_DEVICES) p.groups.clear();
    p.groups.set(deviceId, groups);
    return groups;
  }
}

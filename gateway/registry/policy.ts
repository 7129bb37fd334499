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

/** The policy as read at one version: its rules and default. */
interface Cached {
  version: string;
  rules: Rule[];
  defaultAction: Action;
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
   *  one seen before) in the same transaction as any change to the policy or to a group (triggers,
   *  migrations.ts version 7), together with both devices' groups, in one statement, so one snapshot;
   *  and it reads the rules again when the version moved. So a check never uses a policy older than a
   *  direct read would see, at one round trip to the database instead of four. */
  async permits(caller: string, callee: string, app: string): Promise<boolean> {
    const { version, groups } = await this.versionAndGroups(caller, callee);
    const p = await this.at(version);
    const [cg, eg] = [groups.get(caller) ?? [], groups.get(callee) ?? []];
    const matches = (pattern: string, id: string, gs: string[]) =>
      pattern === "*" ||
      pattern === id ||
      (pattern.startsWith("*@") && id.endsWith(pattern.slice(1))) ||
      (pattern.startsWith("group:") && gs.includes(pattern.slice(6)));
    let allowed = false;
    for (const r of p.rules) {
      if (!matches(r.subject, caller, cg) || !matches(r.object, callee, eg) || (r.app !== "*" && r.app !== app)) continue;
      if (r.action === "deny") return false;
      allowed = true;
    }
    return allowed || p.defaultAction === "allow";
  }

  /** The policy's version and the groups of a and b, read by one statement (one snapshot: the groups
   *  are those of that version). A registry without a version (not migrated by this code) has its
   *  groups read alone. */
  private async versionAndGroups(a: string, b: string): Promise<{ version: string | undefined; groups: Map<string, string[]> }> {
    const { rows } = await this.store.query(
      "SELECT m.v AS version, g.device_id AS device, g.grp AS grp FROM meta m LEFT JOIN device_groups g ON g.device_id IN (?, ?) WHERE m.k = 'policy_version' ORDER BY g.grp",
      [a, b],
    );
    const groups = new Map<string, string[]>();
    if (!rows.length) {
      const [ga, gb] = await Promise.all([this.groups(a), this.groups(b)]);
      return { version: undefined, groups: groups.set(a, ga).set(b, gb) };
    }
    for (const r of rows) {
      if (typeof r.device !== "string") continue; // the version's row, with no group joined
      const list = groups.get(r.device) ?? [];
      list.push(r.grp as string);
      groups.set(r.device, list);
    }
    return { version: rows[0].version as string, groups };
  }

  /** The rules and default at a version just read: what is read after it is that version or newer,
   *  and a newer one is read again at the next check. Without a version, read every time. */
  private async at(version: string | undefined): Promise<Cached> {
    const c = this.cached;
    if (c && version !== undefined && c.version === version) return c;
    const [rules, defaultAction] = await Promise.all([this.rules(), this.defaultAction()]);
    const fresh: Cached = { version: version ?? "", rules, defaultAction };
    if (version !== undefined) this.cached = fresh;
    return fresh;
  }
}

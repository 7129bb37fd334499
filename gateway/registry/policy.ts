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

const SCHEMA = `
CREATE TABLE IF NOT EXISTS policy_rules (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  subject TEXT NOT NULL,
  object TEXT NOT NULL,
  app TEXT NOT NULL,
  action TEXT NOT NULL CHECK (action IN ('allow', 'deny'))
);
CREATE TABLE IF NOT EXISTS device_groups (
  device_id TEXT NOT NULL,
  grp TEXT NOT NULL,
  PRIMARY KEY (device_id, grp)
);
`;

// A device id, optionally "@domain" (a device behind another gateway), or "*@domain".
const PATTERN = /^(\*|group:[A-Za-z0-9._-]{1,64}|(\*|[A-Za-z0-9._-]{1,64})@[A-Za-z0-9._-]{1,190}|[A-Za-z0-9._-]{1,64})$/;

export class Policy {
  constructor(private store: Store) {
    store.db.exec(SCHEMA);
  }

  static check(pattern: string, what: string): void {
    if (!PATTERN.test(pattern)) throw new Error(`${what} "${pattern}" must be a device id, name@domain, *@domain, group:<name> or *`);
  }

  get defaultAction(): Action {
    return this.store.getMeta("policy_default") === "allow" ? "allow" : "deny";
  }

  setDefault(a: Action): void {
    this.store.setMeta("policy_default", a);
  }

  add(subject: string, object: string, app: string, action: Action): number {
    Policy.check(subject, "--from");
    Policy.check(object, "--to");
    if (!/^(\*|[A-Za-z0-9._-]{1,64})$/.test(app)) throw new Error(`--app "${app}" must be an application name or *`);
    return Number(this.store.statement("INSERT INTO policy_rules (subject, object, app, action) VALUES (?, ?, ?, ?)").run(subject, object, app, action).lastInsertRowid);
  }

  remove(id: number): boolean {
    return this.store.statement("DELETE FROM policy_rules WHERE id = ?").run(id).changes === 1;
  }

  rules(): Rule[] {
    return this.store.statement("SELECT id, subject, object, app, action FROM policy_rules ORDER BY id").all() as Rule[];
  }

  addToGroup(deviceId: string, group: string): void {
    Policy.check(`group:${group}`, "--group");
    this.store.statement("INSERT OR IGNORE INTO device_groups (device_id, grp) VALUES (?, ?)").run(deviceId, group);
  }

  removeFromGroup(deviceId: string, group: string): boolean {
    return this.store.statement("DELETE FROM device_groups WHERE device_id = ? AND grp = ?").run(deviceId, group).changes === 1;
  }

  groups(deviceId: string): string[] {
    return (this.store.statement("SELECT grp FROM device_groups WHERE device_id = ? ORDER BY grp").all(deviceId) as { grp: string }[]).map((r) => r.grp);
  }

  /** May caller reach callee for app? Deny wins over allow; no match: the default. Read from the
   *  registry on every check (prepared statements, made once): `keyproxy policy` changes the rules
   *  from another process while the gateway runs. */
  permits(caller: string, callee: string, app: string): boolean {
    const matches = (pattern: string, id: string, groups: string[]) =>
      pattern === "*" ||
      pattern === id ||
      (pattern.startsWith("*@") && id.endsWith(pattern.slice(1))) ||
      (pattern.startsWith("group:") && groups.includes(pattern.slice(6)));
    const cg = this.groups(caller);
    const eg = this.groups(callee);
    let allowed = false;
    for (const r of this.rules()) {
      if (!matches(r.subject, caller, cg) || !matches(r.object, callee, eg) || (r.app !== "*" && r.app !== app)) continue;
      if (r.action === "deny") return false;
      allowed = true;
    }
    return allowed || this.defaultAction === "allow";
  }
}

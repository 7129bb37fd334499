// Group SAs' membership (issue 14, scope 3; docs/PROTOCOL.md §5d): which devices are in which group,
// as operator policy. A group is named "name" here and "name@<this gateway's domain>" everywhere
// else; this gateway is its home: it owns the membership and the key. Members are devices of this
// gateway ("alice") or of another domain ("bob@other.example").
//
// Not the policy's groups (`keyproxy policy group`, "group:<name>" in rules): those name sets of
// devices for permission rules; these are the sets of devices that share one group key.
//
// Every change bumps a version in the registry's meta table, so a running gateway notices a change
// `keyproxy group` made from another process (GroupKeeper polls it) and rekeys.

import type { Store } from "./store.ts";
import { MAX_SENDERS } from "../../firmware/proto/keys.ts";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS key_groups (
  name TEXT PRIMARY KEY,
  app TEXT NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS key_group_members (
  grp TEXT NOT NULL REFERENCES key_groups(name) ON DELETE CASCADE,
  member TEXT NOT NULL,
  added_at INTEGER NOT NULL,
  PRIMARY KEY (grp, member)
);
`;

/** The meta key that changes whenever a group or its membership does. */
const VERSION_KEY = "key_groups_version";

/** A group's own name (its domain is the home gateway's) and an application name. */
const NAME = /^[A-Za-z0-9._-]{1,32}$/;
/** A member: a device of this gateway, or name@domain. */
const MEMBER = /^[A-Za-z0-9._-]{1,64}(@[A-Za-z0-9._-]{1,190})?$/;

/** At most this many members: each member's sender index must fit the device's bound. */
export const MAX_GROUP_MEMBERS = MAX_SENDERS;

export interface KeyGroup {
  name: string;
  app: string;
  createdAt: number;
  /** Sorted. */
  members: string[];
}

/** A refused change, with what to do instead; nothing was written. */
export class GroupError extends Error {}

export class KeyGroups {
  constructor(private store: Store) {
    store.db.exec(SCHEMA);
  }

  /** Changes with every write (a counter, never reused while the registry lives). */
  version(): number {
    return Number(this.store.getMeta(VERSION_KEY) ?? "0");
  }

  create(name: string, app: string, now: number): void {
    if (!NAME.test(name)) throw new GroupError(`group name "${name}" must be 1 to 32 of A-Z a-z 0-9 . _ -`);
    if (!NAME.test(app)) throw new GroupError(`application "${app}" must be 1 to 32 of A-Z a-z 0-9 . _ -`);
    this.store.atomically(() => {
      if (this.get(name)) throw new GroupError(`group ${name} exists already`);
      this.store.statement("INSERT INTO key_groups (name, app, created_at) VALUES (?, ?, ?)").run(name, app, now);
      this.bump();
    });
  }

  /** Deletes a group and its membership. False when there was no such group. */
  delete(name: string): boolean {
    return this.store.atomically(() => {
      const gone = this.store.statement("DELETE FROM key_groups WHERE name = ?").run(name).changes === 1;
      if (gone) {
        this.store.statement("DELETE FROM key_group_members WHERE grp = ?").run(name);
        this.bump();
      }
      return gone;
    });
  }

  /** Adds a member ("alice", or "bob@other.example" behind another gateway). False when it was in. */
  add(name: string, member: string, now: number): boolean {
    if (!MEMBER.test(member)) throw new GroupError(`member "${member}" must be a device id or name@domain`);
    return this.store.atomically(() => {
      const g = this.get(name);
      if (!g) throw new GroupError(`no group ${name} (keyproxy group create first)`);
      if (g.members.includes(member)) return false;
      if (g.members.length >= MAX_GROUP_MEMBERS) throw new GroupError(`group ${name} has ${MAX_GROUP_MEMBERS} members, the most a group SA can have`);
      this.store.statement("INSERT INTO key_group_members (grp, member, added_at) VALUES (?, ?, ?)").run(name, member, now);
      this.bump();
      return true;
    });
  }

  /** Takes a member out. False when it was not in. */
  remove(name: string, member: string): boolean {
    return this.store.atomically(() => {
      const gone = this.store.statement("DELETE FROM key_group_members WHERE grp = ? AND member = ?").run(name, member).changes === 1;
      if (gone) this.bump();
      return gone;
    });
  }

  /** Takes a member out of every group it is in (a revoked device); the groups it left. */
  removeEverywhere(member: string): string[] {
    return this.store.atomically(() => {
      const groups = (this.store.statement("SELECT grp FROM key_group_members WHERE member = ? ORDER BY grp").all(member) as { grp: string }[]).map((r) => r.grp);
      if (groups.length) {
        this.store.statement("DELETE FROM key_group_members WHERE member = ?").run(member);
        this.bump();
      }
      return groups;
    });
  }

  get(name: string): KeyGroup | undefined {
    const r = this.store.statement("SELECT name, app, created_at FROM key_groups WHERE name = ?").get(name) as { name: string; app: string; created_at: number } | undefined;
    if (!r) return undefined;
    const members = (this.store.statement("SELECT member FROM key_group_members WHERE grp = ? ORDER BY member").all(name) as { member: string }[]).map((m) => m.member);
    return { name: r.name, app: r.app, createdAt: r.created_at, members };
  }

  list(): KeyGroup[] {
    const names = (this.store.statement("SELECT name FROM key_groups ORDER BY name").all() as { name: string }[]).map((r) => r.name);
    return names.map((n) => this.get(n) as KeyGroup);
  }

  private bump(): void {
    this.store.setMeta(VERSION_KEY, String(this.version() + 1));
  }
}

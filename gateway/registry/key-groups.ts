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
  /** The tables are the registry's own (migrations.ts, version 4). */
  constructor(private store: Store) {}

  /** Changes with every write (a counter, never reused while the registry lives). */
  async version(): Promise<number> {
    return Number((await this.store.getMeta(VERSION_KEY)) ?? "0");
  }

  async create(name: string, app: string, now: number): Promise<void> {
    if (!NAME.test(name)) throw new GroupError(`group name "${name}" must be 1 to 32 of A-Z a-z 0-9 . _ -`);
    if (!NAME.test(app)) throw new GroupError(`application "${app}" must be 1 to 32 of A-Z a-z 0-9 . _ -`);
    await this.store.atomically(async () => {
      if (await this.get(name)) throw new GroupError(`group ${name} exists already`);
      await this.store.query("INSERT INTO key_groups (name, app, created_at) VALUES (?, ?, ?)", [name, app, now]);
      await this.bump();
    });
  }

  /** Deletes a group and its membership. False when there was no such group. */
  async delete(name: string): Promise<boolean> {
    return this.store.atomically(async () => {
      const gone = (await this.store.query("DELETE FROM key_groups WHERE name = ?", [name])).changes === 1;
      if (gone) {
        await this.store.query("DELETE FROM key_group_members WHERE grp = ?", [name]);
        await this.bump();
      }
      return gone;
    });
  }

  /** Adds a member ("alice", or "bob@other.example" behind another gateway). False when it was in. */
  async add(name: string, member: string, now: number): Promise<boolean> {
    if (!MEMBER.test(member)) throw new GroupError(`member "${member}" must be a device id or name@domain`);
    return this.store.atomically(async () => {
      const g = await this.get(name);
      if (!g) throw new GroupError(`no group ${name} (keyproxy group create first)`);
      if (g.members.includes(member)) return false;
      if (g.members.length >= MAX_GROUP_MEMBERS) throw new GroupError(`group ${name} has ${MAX_GROUP_MEMBERS} members, the most a group SA can have`);
      await this.store.query("INSERT INTO key_group_members (grp, member, added_at) VALUES (?, ?, ?)", [name, member, now]);
      await this.bump();
      return true;
    });
  }

  /** Takes a member out. False when it was not in. */
  async remove(name: string, member: string): Promise<boolean> {
    return this.store.atomically(async () => {
      const gone = (await this.store.query("DELETE FROM key_group_members WHERE grp = ? AND member = ?", [name, member])).changes === 1;
      if (gone) await this.bump();
      return gone;
    });
  }

  /** Takes a member out of every group it is in (a revoked device); the groups it left. */
  async removeEverywhere(member: string): Promise<string[]> {
    return this.store.atomically(async () => {
      const groups = (await this.store.query("SELECT grp FROM key_group_members WHERE member = ? ORDER BY grp", [member])).rows.map((r) => r.grp as string);
      if (groups.length) {
        await this.store.query("DELETE FROM key_group_members WHERE member = ?", [member]);
        await this.bump();
      }
      return groups;
    });
  }

  async get(name: string): Promise<KeyGroup | undefined> {
    const r = (await this.store.row("SELECT name, app, created_at FROM key_groups WHERE name = ?", [name])) as { name: string; app: string; created_at: number } | undefined;
    if (!r) return undefined;
    const members = (await this.store.query("SELECT member FROM key_group_members WHERE grp = ? ORDER BY member", [name])).rows.map((m) => m.member as string);
    return { name: r.name, app: r.app, createdAt: r.created_at, members };
  }

  async list(): Promise<KeyGroup[]> {
    const names = (await this.store.query("SELECT name FROM key_groups ORDER BY name")).rows.map((r) => r.name as string);
    const groups: KeyGroup[] = [];
    for (const n of names) groups.push((await this.get(n)) as KeyGroup);
    return groups;
  }

  /** In one statement, so that two writers (two instances, or an instance and `keyproxy group`)
   *  never both read the same version and write the same next one. */
  private async bump(): Promise<void> {
    await this.store.query("INSERT INTO meta (k, v) VALUES (?, '1') ON CONFLICT(k) DO UPDATE SET v = CAST(CAST(meta.v AS INTEGER) + 1 AS TEXT)", [VERSION_KEY]);
  }
}

/**
 * Rooms in Postgres: who is in which room, as intervals of room positions
 * (see the rooms migration). Every change is one transaction that locks the
 * room's row first, so concurrent changes of one room run one after another
 * and a limit checked inside one holds when it commits. Refusals are answers
 * (`ok: false`), not errors: only storage failures throw.
 */
import { QueryTypes, type Sequelize, type Transaction } from 'sequelize';
import { asQueryFailure, createSelect, storageWhere, type StorageProblem } from './store';

/** Code points of a room name. */
export const MAX_ROOM_NAME_CHARS = 100;

/**
 * Adds that raise a user's room count take this advisory lock class with the
 * user's hashtext, after the room's row lock (never before): one user joining
 * two rooms at once cannot pass MAX_ROOMS_PER_USER. The two-key form keeps it
 * apart from SEQ_LOCK_KEY's one-key lock.
 */
const USER_LOCK_CLASS = 7_345_812;

export type RoomRefusalCode = 'not_found' | 'forbidden' | 'too_large' | 'bad_request';

export interface RoomRefusal {
  ok: false;
  code: RoomRefusalCode;
  /** one line: what was wrong and what to do */
  message: string;
}

export interface RoomInfo {
  room: string;
  name: string;
  /** null once the room has ended */
  owner: string | null;
  /** current members, by the time they joined, then by id */
  members: string[];
  version: number;
}

export interface RoomChange {
  ok: true;
  /** false when the request changed nothing (adding a member, removing a non-member) */
  changed: boolean;
  info: RoomInfo;
  /** the owner after an owner left */
  newOwner?: string;
  /** the last member left: the room has ended */
  ended?: boolean;
  /** the room position the change took effect at */
  position: number;
}

export type RoomResult = RoomChange | RoomRefusal;

export type RoomView = { ok: true; ended: boolean } & RoomInfo;

export interface RoomSummary {
  room: string;
  name: string;
  owner: string | null;
  memberCount: number;
}

export interface RoomLimits {
  /** MAX_ROOM_MEMBERS */
  maxRoomMembers: number;
  /** MAX_ROOMS_PER_USER: current memberships of one user */
  maxRoomsPerUser: number;
}

export interface RoomsDeps {
  sequelize: Sequelize;
  /** a fresh, never reused room id (`r_` + ULID) */
  newRoomId(): string;
  limits: RoomLimits;
  onFailure?(problem: StorageProblem): void;
}

export interface CreateRoom {
  name: string;
  owner: string;
  members: readonly string[];
  /** accepted for symmetry: a new room has no messages, so every member starts at position 0 */
  position?: number | null | undefined;
}

export interface MemberChange {
  room: string;
  userId: string;
  /** the acting user, or null for the server API (no owner check) */
  by: string | null;
  /** the room's highest position as the gateway knows it; null: the highest storage handed out */
  position: number | null;
}

export interface Leave {
  room: string;
  userId: string;
  position: number | null;
}

export interface Rooms {
  create(r: CreateRoom): Promise<RoomResult>;
  add(r: MemberChange): Promise<RoomResult>;
  remove(r: MemberChange): Promise<RoomResult>;
  leave(r: Leave): Promise<RoomResult>;
  /** An ended room answers with `ended: true` (and no members): callers say not_found. */
  get(room: string): Promise<RoomView | RoomRefusal>;
  /** The user's current rooms ordered by id, after `after`. */
  listForUser(userId: string, after?: string, limit?: number): Promise<{ rooms: RoomSummary[]; more: boolean }>;
  isMember(room: string, userId: string): Promise<boolean>;
}

export const DEFAULT_ROOMS_PAGE = 200;

const LOCK_ROOM_SQL = `SELECT id, name, owner, version::text AS version, ended_at IS NOT NULL AS ended FROM rooms WHERE id = $1 FOR UPDATE`;
const ROOM_SQL = `SELECT id, name, owner, version::text AS version, ended_at IS NOT NULL AS ended FROM rooms WHERE id = $1`;
const MEMBERS_SQL = `SELECT user_id FROM room_members WHERE room_id = $1 AND to_position IS NULL ORDER BY joined_at, user_id`;
const MEMBER_COUNT_SQL = `SELECT count(*)::int AS n FROM room_members WHERE room_id = $1 AND to_position IS NULL`;
const OPEN_INTERVAL_SQL = `SELECT from_position::text AS from_position FROM room_members WHERE room_id = $1 AND user_id = $2 AND to_position IS NULL`;
const IS_MEMBER_SQL = `SELECT EXISTS (SELECT 1 FROM room_members m JOIN rooms r ON r.id = m.room_id WHERE m.room_id = $1 AND m.user_id = $2 AND m.to_position IS NULL AND r.ended_at IS NULL) AS yes`;
// Sorted by lock key so two transactions locking overlapping sets cannot wait on each other.
const LOCK_USERS_SQL = `SELECT count(pg_advisory_xact_lock(${USER_LOCK_CLASS}, k)) FROM (SELECT DISTINCT hashtext(u) AS k FROM unnest($1::text[]) AS u ORDER BY k) AS keys`;
const ROOM_COUNTS_SQL = `
  SELECT user_id, count(*)::int AS n FROM room_members
  WHERE user_id = ANY($1::text[]) AND to_position IS NULL
  GROUP BY user_id ORDER BY user_id`;
const RESERVED_SQL = `SELECT reserved::text AS reserved FROM conversation_positions WHERE conversation_id = $1`;
// A rejoin starts no earlier than the end of the user's last interval: intervals never overlap, so sync never returns a message twice.
const LAST_END_SQL = `SELECT max(to_position)::text AS last_end FROM room_members WHERE room_id = $1 AND user_id = $2`;
const INSERT_ROOM_SQL = `INSERT INTO rooms (id, name, owner, version) VALUES ($1, $2, $3, 1)`;
const INSERT_MEMBERS_SQL = `INSERT INTO room_members (room_id, user_id, joined_at, from_position) SELECT $1, u, now(), $3 FROM unnest($2::text[]) AS u`;
const CLOSE_INTERVAL_SQL = `
  UPDATE room_members SET to_position = greatest($3::int8, from_position)
  WHERE room_id = $1 AND user_id = $2 AND to_position IS NULL`;
const BUMP_SQL = `UPDATE rooms SET version = version + 1, owner = $2 WHERE id = $1 RETURNING version::text AS version`;
const END_SQL = `UPDATE rooms SET version = version + 1, owner = NULL, ended_at = now() WHERE id = $1 RETURNING version::text AS version`;
const NEXT_OWNER_SQL = `SELECT user_id FROM room_members WHERE room_id = $1 AND to_position IS NULL ORDER BY joined_at, user_id LIMIT 1`;
const LIST_SQL = `
  SELECT r.id AS room, r.name, r.owner,
         (SELECT count(*) FROM room_members c WHERE c.room_id = r.id AND c.to_position IS NULL)::int AS "memberCount"
  FROM room_members m JOIN rooms r ON r.id = m.room_id
  WHERE m.user_id = $1 AND m.to_position IS NULL AND m.room_id > $2
  ORDER BY m.room_id LIMIT $3`;

interface RoomRow {
  id: string;
  name: string;
  owner: string | null;
  version: string;
  ended: boolean;
}

const refuse = (code: RoomRefusalCode, message: string): RoomRefusal => ({ ok: false, code, message });
const noRoom = (room: string): RoomRefusal => refuse('not_found', `room ${room} does not exist; check the room id`);
const ended = (room: string): RoomRefusal => refuse('not_found', `room ${room} has ended (its last member left); create a new room`);

export function createRooms(deps: RoomsDeps): Rooms {
  const { sequelize, limits } = deps;
  const where = storageWhere(sequelize);

  async function q<T extends object>(t: Transaction | undefined, sql: string, bind: unknown[]): Promise<T[]> {
    return sequelize.query<T>(sql, { bind, type: QueryTypes.SELECT, ...(t ? { transaction: t } : {}) });
  }

  /** One transaction; a storage failure becomes the same errors as the store's. */
  async function inTransaction<T>(fn: (t: Transaction) => Promise<T>): Promise<T> {
    try {
      return await sequelize.transaction(fn);
    } catch (err) {
      throw asQueryFailure(err, where, deps.onFailure);
    }
  }

  const read = createSelect(sequelize, deps.onFailure);

  async function membersOf(t: Transaction | undefined, room: string): Promise<string[]> {
    return (await q<{ user_id: string }>(t, MEMBERS_SQL, [room])).map((r) => r.user_id);
  }

  async function infoOf(t: Transaction, row: RoomRow, overrides: { owner?: string | null; version?: string } = {}): Promise<RoomInfo> {
    return {
      room: row.id,
      name: row.name,
      owner: overrides.owner !== undefined ? overrides.owner : row.owner,
      members: await membersOf(t, row.id),
      version: Number(overrides.version ?? row.version),
    };
  }

  /** The position a change takes effect at: the gateway's, else the highest storage handed out, else 0. */
  async function positionOf(t: Transaction, room: string, position: number | null): Promise<number> {
    if (position !== null) return position;
    const [row] = await q<{ reserved: string }>(t, RESERVED_SQL, [room]);
    return row ? Number(row.reserved) : 0;
  }

  /** The first user (in `users`' sorted order) who cannot join one more room, as a refusal. */
  async function fullUser(t: Transaction, users: string[]): Promise<RoomRefusal | undefined> {
    await q(t, LOCK_USERS_SQL, [users]);
    const counts = await q<{ user_id: string; n: number }>(t, ROOM_COUNTS_SQL, [users]);
    const full = counts.find((c) => c.n >= limits.maxRoomsPerUser);
    if (!full) return undefined;
    return refuse('too_large', `user ${full.user_id} is in ${full.n} rooms (MAX_ROOMS_PER_USER ${limits.maxRoomsPerUser}); it must leave a room before joining another`);
  }

  async function lockRoom(t: Transaction, room: string): Promise<RoomRow | RoomRefusal> {
    const [row] = await q<RoomRow>(t, LOCK_ROOM_SQL, [room]);
    if (!row) return noRoom(room);
    if (row.ended) return ended(room);
    return row;
  }

  /**
   * Closes userId's open interval at `position`; when it owned the room, ownership passes to
   * the member who joined earliest (ties: smallest id), and the room ends with its last member.
   */
  async function closeMembership(t: Transaction, row: RoomRow, userId: string, position: number): Promise<RoomChange> {
    await q(t, CLOSE_INTERVAL_SQL, [row.id, userId, position]);
    const [next] = await q<{ user_id: string }>(t, NEXT_OWNER_SQL, [row.id]);
    if (!next) {
      const [bumped] = await q<{ version: string }>(t, END_SQL, [row.id]);
      return { ok: true, changed: true, info: await infoOf(t, row, { owner: null, version: bumped?.version }), ended: true, position };
    }
    const handsOver = row.owner === userId;
    const owner = handsOver ? next.user_id : row.owner;
    const [bumped] = await q<{ version: string }>(t, BUMP_SQL, [row.id, owner]);
    const info = await infoOf(t, row, { owner, version: bumped?.version });
    return { ok: true, changed: true, info, ...(handsOver ? { newOwner: next.user_id } : {}), position };
  }

  return {
    async create(r) {
      const chars = [...r.name].length;
      if (chars === 0) return refuse('bad_request', `the room name is empty; give 1-${MAX_ROOM_NAME_CHARS} characters`);
      if (chars > MAX_ROOM_NAME_CHARS) return refuse('too_large', `the room name has ${chars} characters; give at most ${MAX_ROOM_NAME_CHARS}`);
      const members = [...new Set([r.owner, ...r.members])];
      if (members.length > limits.maxRoomMembers) {
        return refuse('too_large', `a room may have ${limits.maxRoomMembers} members (MAX_ROOM_MEMBERS ${limits.maxRoomMembers}) and ${members.length} were given; create it with fewer`);
      }
      return inTransaction(async (t) => {
        const full = await fullUser(t, [...members].sort());
        if (full) return full;
        const room = deps.newRoomId();
        await q(t, INSERT_ROOM_SQL, [room, r.name, r.owner]);
        await q(t, INSERT_MEMBERS_SQL, [room, members, 0]);
        return { ok: true, changed: true, info: { room, name: r.name, owner: r.owner, members: await membersOf(t, room), version: 1 }, position: 0 };
      });
    },

    add(r) {
      return inTransaction(async (t): Promise<RoomResult> => {
        const row = await lockRoom(t, r.room);
        if ('ok' in row) return row;
        if (r.by !== null && r.by !== row.owner) return refuse('forbidden', `only the owner of room ${row.id} may add members; ask its owner`);
        const position = await positionOf(t, row.id, r.position);
        const [open] = await q(t, OPEN_INTERVAL_SQL, [row.id, r.userId]);
        if (open) return { ok: true, changed: false, info: await infoOf(t, row), position };
        const [count] = await q<{ n: number }>(t, MEMBER_COUNT_SQL, [row.id]);
        const n = count?.n ?? 0;
        if (n >= limits.maxRoomMembers) {
          return refuse('too_large', `room ${row.id} has ${n} members (MAX_ROOM_MEMBERS ${limits.maxRoomMembers}); remove a member before adding another`);
        }
        const full = await fullUser(t, [r.userId]);
        if (full) return full;
        const [last] = await q<{ last_end: string | null }>(t, LAST_END_SQL, [row.id, r.userId]);
        const from = Math.max(position, last?.last_end === null || last === undefined ? 0 : Number(last.last_end));
        await q(t, INSERT_MEMBERS_SQL, [row.id, [r.userId], from]);
        const [bumped] = await q<{ version: string }>(t, BUMP_SQL, [row.id, row.owner]);
        return { ok: true, changed: true, info: await infoOf(t, row, { version: bumped?.version }), position: from };
      });
    },

    remove(r) {
      return inTransaction(async (t): Promise<RoomResult> => {
        const row = await lockRoom(t, r.room);
        if ('ok' in row) return row;
        if (r.by !== null && r.by !== row.owner) return refuse('forbidden', `only the owner of room ${row.id} may remove members; ask its owner`);
        if (r.by !== null && r.userId === row.owner) return refuse('bad_request', `the owner cannot remove itself from room ${row.id}; leave the room instead`);
        const position = await positionOf(t, row.id, r.position);
        const [open] = await q(t, OPEN_INTERVAL_SQL, [row.id, r.userId]);
        if (!open) return { ok: true, changed: false, info: await infoOf(t, row), position };
        // Through the server API the owner may be removed: ownership passes on as when it leaves.
        return closeMembership(t, row, r.userId, position);
      });
    },

    leave(r) {
      return inTransaction(async (t): Promise<RoomResult> => {
        const row = await lockRoom(t, r.room);
        if ('ok' in row) return row;
        const [open] = await q(t, OPEN_INTERVAL_SQL, [row.id, r.userId]);
        if (!open) return refuse('forbidden', `user ${r.userId} is not a member of room ${row.id}; only members can leave it`);
        return closeMembership(t, row, r.userId, await positionOf(t, row.id, r.position));
      });
    },

    async get(room) {
      const [row] = await read<RoomRow>(ROOM_SQL, [room]);
      if (!row) return noRoom(room);
      const members = await read<{ user_id: string }>(MEMBERS_SQL, [room]);
      return { ok: true, room: row.id, name: row.name, owner: row.owner, members: members.map((m) => m.user_id), version: Number(row.version), ended: row.ended };
    },

    async listForUser(userId, after = '', limit = DEFAULT_ROOMS_PAGE) {
      const rows = await read<RoomSummary>(LIST_SQL, [userId, after, limit + 1]);
      const more = rows.length > limit;
      return { rooms: more ? rows.slice(0, limit) : rows, more };
    },

    async isMember(room, userId) {
      const [row] = await read<{ yes: boolean }>(IS_MEMBER_SQL, [room, userId]);
      return row?.yes === true;
    },
  };
}

/**
 * Rooms as this gateway serves them (PROTOCOL.md "Rooms"), for client frames
 * and the server API alike: changes are made in storage (one transaction
 * each, limits checked there), take effect on every instance before they are
 * answered (membership.ts), and are pushed as `room.event` frames to every
 * connection of every member, old and new.
 */
import { DomainError, type RoomEventFrame, type RoomEventKind, type RoomInfo, type RoomSummary, type ServerFrame } from '@simplechat/shared';
import type { Membership, RoomRecord, RoomState } from './membership';
import type { Router } from './router';

/** Who makes a change: a member, or the product's backend through the server API. */
export type Actor = { userId: string } | { api: true };

export type RoomFailure = { ok: false; code: 'not_found' | 'forbidden' | 'too_large' | 'bad_request'; message: string };
export type RoomChange = { ok: true; changed: boolean; info: RoomRecord; newOwner?: string; ended?: boolean } | RoomFailure;

/** Storage's side of rooms (SvPersist's /internal/rooms). `position`: the room's current position, null when unknown. */
export interface RoomStore {
  get(room: string): Promise<RoomRecord | null>;
  create(req: { name: string; owner: string; members: string[] }): Promise<RoomChange>;
  add(req: { room: string; userId: string; by: string | null; position: number | null }): Promise<RoomChange>;
  remove(req: { room: string; userId: string; by: string | null; position: number | null }): Promise<RoomChange>;
  leave(req: { room: string; userId: string; position: number | null }): Promise<RoomChange>;
  listForUser(userId: string, after: string | undefined): Promise<{ rooms: RoomSummary[]; more: boolean }>;
}

export interface Rooms {
  create(actor: Actor, req: { name: string; owner: string; members: string[] }): Promise<RoomInfo>;
  add(actor: Actor, room: string, userId: string): Promise<RoomInfo>;
  remove(actor: Actor, room: string, userId: string): Promise<RoomInfo>;
  leave(userId: string, room: string): Promise<void>;
  /** the room to one of its members (or the server API) */
  get(actor: Actor, room: string): Promise<RoomInfo>;
  list(userId: string, after?: string): Promise<{ rooms: RoomSummary[]; more: boolean }>;
  /** the room a message goes to, as this instance knows it; not_found when there is none */
  target(room: string): Promise<RoomState>;
  /** the room `userId` acts on as a member: as target(), and forbidden (saying that only members `what`) when it is not one */
  forMember(room: string, userId: string, what: string): Promise<RoomState>;
}

export interface RoomsDeps {
  store: RoomStore;
  membership: Membership;
  router: Pick<Router, 'route'>;
  /** the highest position handed out in a conversation, null when not known here */
  currentPosition(conversation: string): Promise<number | null>;
}

const info = (r: RoomRecord): RoomInfo => ({ room: r.room, name: r.name, owner: r.owner, members: r.members });
const byOf = (actor: Actor) => ('api' in actor ? null : actor.userId);

function unwrap(change: RoomChange): Extract<RoomChange, { ok: true }> {
  if (!change.ok) throw new DomainError(change.code, change.message);
  return change;
}

export function createRooms(deps: RoomsDeps): Rooms {
  async function exists(room: string): Promise<RoomState> {
    const state = await deps.membership.current(room);
    if (!state) throw new DomainError('not_found', `no room ${room}; check the id (a room that ended is gone too)`);
    return state;
  }

  function event(room: string, kind: RoomEventKind, userId: string, actor: Actor, audience: Iterable<string>): void {
    const frame: RoomEventFrame = { type: 'room.event', room, event: kind, userId, by: byOf(actor), ...('api' in actor ? { via: 'api' as const } : {}), ts: Date.now() };
    deps.router.route(JSON.stringify(frame satisfies ServerFrame), [...new Set(audience)]);
  }

  /** Answered only once it has taken effect on every instance. */
  async function takeEffect(change: Extract<RoomChange, { ok: true }>): Promise<void> {
    if (change.changed) await deps.membership.announce(change.info.room, change.info.version);
  }

  return {
    async create(actor, req) {
      const change = unwrap(await deps.store.create(req));
      await takeEffect(change);
      event(change.info.room, 'created', req.owner, actor, change.info.members);
      return info(change.info);
    },

    async add(actor, room, userId) {
      const before = await exists(room);
      const change = unwrap(await deps.store.add({ room, userId, by: byOf(actor), position: await deps.currentPosition(room) }));
      await takeEffect(change);
      if (change.changed) event(room, 'added', userId, actor, [...before.members, ...change.info.members]);
      return info(change.info);
    },

    async remove(actor, room, userId) {
      const before = await exists(room);
      const change = unwrap(await deps.store.remove({ room, userId, by: byOf(actor), position: await deps.currentPosition(room) }));
      await takeEffect(change);
      if (change.changed) event(room, 'removed', userId, actor, [...before.members, userId]);
      // The server API may remove the owner: the room passes on as if it had left.
      if (change.newOwner) event(room, 'owner', change.newOwner, actor, change.info.members);
      return info(change.info);
    },

    async leave(userId, room) {
      const before = await exists(room);
      const change = unwrap(await deps.store.leave({ room, userId, position: await deps.currentPosition(room) }));
      await takeEffect(change);
      const actor = { userId };
      event(room, 'left', userId, actor, before.members);
      if (change.newOwner) event(room, 'owner', change.newOwner, actor, change.info.members);
    },

    async get(actor, room) {
      const state = await exists(room);
      if ('userId' in actor && !state.memberSet.has(actor.userId)) throw new DomainError('forbidden', `you are not a member of room ${room}`);
      return info(state);
    },

    list: (userId, after) => deps.store.listForUser(userId, after),

    target: exists,

    async forMember(room, userId, what) {
      const state = await exists(room);
      if (!state.memberSet.has(userId)) throw new DomainError('forbidden', `you are not a member of room ${room}; only members ${what}`);
      return state;
    },
  };
}

/**
 * The server API's domain on a gateway: room changes as the server API's
 * actor (no owner checks, events `via: "api"`), and messages posted as any
 * user with the same idempotency, delivery and storage as a client's send;
 * a repeated key with other content is a conflict.
 */
import { DomainError, type ServerApiDomain } from '@simplechat/shared';
import { acceptMessage, type AcceptDeps } from './accept';
import type { Rooms } from './rooms';

const API = { api: true } as const;

export function createServerApiDomain(deps: { rooms: Rooms; accept: AcceptDeps }): ServerApiDomain {
  const { rooms } = deps;
  return {
    async postMessage(req) {
      const res = await acceptMessage(deps.accept, { from: req.from, clientId: req.id, to: req.to, room: req.room, body: req.body, isApi: true });
      if (res.isOtherContent) throw new DomainError('conflict', `id ${req.id} of ${req.from} was first used for another message (another recipient or body); post this one with a new id`);
      return { msgId: res.msgId, ts: res.ts, seq: res.seq };
    },
    createRoom: (req) => rooms.create(API, req),
    getRoom: (room) => rooms.get(API, room),
    addMember: (room, userId) => rooms.add(API, room, userId),
    removeMember: (room, userId) => rooms.remove(API, room, userId),
    listUserRooms: (userId, after) => rooms.list(userId, after),
  };
}

/** SvPersist's internal API: history, sync, the current cursor, stored idempotency keys, positions, rooms. */
import {
  DomainError,
  historyResponse,
  roomHistoryResponse,
  syncResponse,
  cursorResponse,
  byClientResponse,
  positionsResponse,
  sharedWithResponse,
  conversationsResponse,
  reservedResponse,
  roomMarksResponse,
  type ConversationSummary,
  type MemberMarks,
  roomChangeResponse,
  roomGetResponse,
  userRoomsResponse,
  type JsonClient,
  type RoomChangeResponse,
  type EmptyPositions,
  type WireMessage,
} from '@simplechat/shared';
import type { RoomRecord } from './membership';
import type { RoomChange, RoomStore } from './rooms';

export interface PersistClient {
  /** a direct conversation (`with`) or a room */
  history(user: string, of: { with: string } | { room: string }, before: string | undefined, limit: number): Promise<{ messages: WireMessage[]; more: boolean; empty?: number[] | undefined }>;
  sync(user: string, after: string | undefined, limit: number): Promise<{ messages: WireMessage[]; cursor: string; more: boolean; empty?: EmptyPositions[] | undefined }>;
  cursor(): Promise<{ cursor: string; newestTs: number | null }>;
  byClient(sender: string, clientId: string): Promise<WireMessage | null>;
  /** the next `count` positions of each conversation (each named once); resolves with the last of each */
  reserveBlocks(blocks: readonly { conversation: string; count: number }[]): Promise<number[]>;
  conversations(user: string, before: number | undefined): Promise<{ conversations: ConversationSummary[]; more: boolean }>;
  mute(user: string, conversation: string, until: number): Promise<void>;
  /** each current member's stored marks in a room, from where it last joined */
  roomMarks(room: string): Promise<Omit<MemberMarks, 'room'>>;
  /** how far a conversation's positions were handed out (at least its highest assigned position) */
  reserved(conversation: string): Promise<number>;
  /** the users of `others` that share a conversation with `user` (a direct message either way, or a room both are in) */
  sharedWith(user: string, others: readonly string[]): Promise<string[]>;
  rooms: RoomStore;
}

/** A room as the gateway serves it: an ended room (no owner) is no room. */
function recordOf(info: { room: string; name: string; owner: string | null; members: string[]; version: number }): RoomRecord | null {
  return info.owner === null ? null : { room: info.room, name: info.name, owner: info.owner, members: info.members, version: info.version };
}

function changeOf(res: RoomChangeResponse): RoomChange {
  if (!res.ok) return res;
  // A change that ended the room (its last member left) leaves a record without an owner.
  const info = recordOf(res.info) ?? { room: res.info.room, name: res.info.name, owner: '', members: [], version: res.info.version };
  return { ok: true, changed: res.changed, info, ...(res.newOwner === undefined ? {} : { newOwner: res.newOwner }), ...(res.ended === undefined ? {} : { ended: res.ended }) };
}

export function createPersistClient(client: JsonClient): PersistClient {
  const q = (params: Record<string, string | number | undefined>) =>
    new URLSearchParams(Object.entries(params).filter((e): e is [string, string | number] => e[1] !== undefined).map(([k, v]): [string, string] => [k, String(v)])).toString();
  return {
    async history(user, of, before, limit) {
      const path = `/internal/history?${q({ user, ...of, before, limit })}`;
      if ('with' in of) return client.request('GET', path, historyResponse);
      const res = await client.request('GET', path, roomHistoryResponse);
      if (!res.ok) throw new DomainError(res.code, res.message);
      return { messages: res.messages, more: res.more, empty: res.empty };
    },
    sync: (user, after, limit) => client.request('GET', `/internal/sync?${q({ user, after, limit })}`, syncResponse),
    async cursor() {
      const res = await client.request('GET', '/internal/cursor', cursorResponse);
      return { cursor: res.cursor, newestTs: res.newestTs ?? null };
    },
    async byClient(sender, clientId) {
      return (await client.request('GET', `/internal/messages/by-client?${q({ sender, clientId })}`, byClientResponse)).message;
    },
    async reserveBlocks(blocks) {
      const { upTo } = await client.request('POST', '/internal/positions', positionsResponse, { blocks });
      if (upTo.length !== blocks.length) throw new Error(`SvPersist answered ${upTo.length} blocks of positions for ${blocks.length}`);
      return upTo;
    },
    async conversations(user, before) {
      const res = await client.request('GET', `/internal/conversations?${q({ user, before })}`, conversationsResponse);
      return { conversations: res.conversations as ConversationSummary[], more: res.more };
    },
    async mute(user, conversation, until) {
      await client.request('POST', '/internal/mutes', null, { user, conversation, until });
    },
    roomMarks: (room) => client.request('GET', `/internal/rooms/${encodeURIComponent(room)}/marks`, roomMarksResponse),
    async reserved(conversation) {
      return (await client.request('GET', `/internal/positions/${encodeURIComponent(conversation)}`, reservedResponse)).reserved;
    },
    async sharedWith(user, others) {
      return (await client.request('POST', '/internal/shared', sharedWithResponse, { user, others: [...others] })).shared;
    },
    rooms: {
      async get(room) {
        const res = await client.request('GET', `/internal/rooms/${encodeURIComponent(room)}`, roomGetResponse);
        return res.ok && !res.ended ? recordOf(res) : null;
      },
      create: async (req) => changeOf(await client.request('POST', '/internal/rooms', roomChangeResponse, req)),
      add: async ({ room, ...req }) => changeOf(await client.request('POST', `/internal/rooms/${encodeURIComponent(room)}/members`, roomChangeResponse, req)),
      remove: async ({ room, ...req }) => changeOf(await client.request('POST', `/internal/rooms/${encodeURIComponent(room)}/remove`, roomChangeResponse, req)),
      leave: async ({ room, ...req }) => changeOf(await client.request('POST', `/internal/rooms/${encodeURIComponent(room)}/leave`, roomChangeResponse, req)),
      async listForUser(userId, after) {
        const res = await client.request('GET', `/internal/users/${encodeURIComponent(userId)}/rooms?${q({ after })}`, userRoomsResponse);
        return { rooms: res.rooms.map((r) => ({ ...r, owner: r.owner ?? '' })), more: res.more };
      },
    },
  };
}

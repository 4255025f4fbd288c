/**
 * Receipts: a user's `delivered` and `read` marks by position, per
 * conversation. Checked (a room's member; not beyond the highest position
 * assigned), moved forward only, pushed, and stored durably through the broker
 * and the writer like messages.
 *
 * Each conversation's current marks live in one Redis hash beside its position
 * counter (one slot), moved by one script that also checks the position: which
 * receipt moved a mark is decided there, across every instance, so a mark that
 * did not move is not pushed. Storage keeps the greatest of each mark, so a
 * receipt stored twice, or after a later one, changes nothing; the hash is a
 * cache of what was pushed (if Redis forgets it, a receipt is pushed again,
 * which clients take as the maximum it is). A read mark moves the delivered
 * mark with it; it is pushed as read only.
 */
import { DomainError, directConversation, peerOf, roomConversation, conversationKey, type Conversation, type ReceiptFrame, type ReceiptKind, type ServerFrame } from '@simplechat/shared';
import type { RedisClient } from '@simplechat/shared';
import type { PersistClient } from './persist-client';
import type { Publisher } from './publisher';
import type { RoomMarks } from './room-marks';
import { roomMarkFrame } from './room-marks';
import type { Rooms } from './rooms';
import type { Router } from './router';
import type { Session } from './session';

/** how long a conversation's marks stay cached in Redis after they last moved */
const MARKS_TTL_MS = 7 * 24 * 3600 * 1000;

export interface ReceiptsDeps {
  redis: Pick<RedisClient, 'eval'>;
  keyPrefix: string;
  rooms: Pick<Rooms, 'target'>;
  router: Pick<Router, 'route' | 'routeRemote'>;
  roomMarks: Pick<RoomMarks, 'add'>;
  publisher: Pick<Publisher, 'publishReceipt'>;
  persist: Pick<PersistClient, 'reserved'>;
  now?: () => number;
}

export interface Receipts {
  /** resolves once storage has the receipt (the broker confirmed it) */
  accept(user: string, frame: ReceiptFrame, sender: Session): Promise<void>;
}

// KEYS[1] the conversation's marks hash, KEYS[2] its position counter. ARGV: user, kind, upTo,
// ttl ms, the highest position handed out as storage knows it ('' unknown: used only when Redis
// has no counter). Returns {-1} (no counter: ask storage), {-2, highest} (beyond it), or {moved}.
const MARK = `
local highest = redis.call('GET', KEYS[2])
if not highest then
  if ARGV[5] == '' then return {-1} end
  highest = ARGV[5]
end
local upTo = tonumber(ARGV[3])
if upTo > tonumber(highest) then return {-2, tonumber(highest)} end
local r = tonumber(redis.call('HGET', KEYS[1], 'r:' .. ARGV[1]) or '0')
local d = tonumber(redis.call('HGET', KEYS[1], 'd:' .. ARGV[1]) or '0')
local moved = 0
if ARGV[2] == 'read' then
  if upTo > r then
    redis.call('HSET', KEYS[1], 'r:' .. ARGV[1], ARGV[3])
    moved = 1
  end
  if upTo > d then redis.call('HSET', KEYS[1], 'd:' .. ARGV[1], ARGV[3]) end
elseif upTo > d and upTo > r then
  redis.call('HSET', KEYS[1], 'd:' .. ARGV[1], ARGV[3])
  moved = 1
end
if moved == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return {moved}
`;

export function createReceipts(deps: ReceiptsDeps): Receipts {
  const clock = deps.now ?? Date.now;
  const marksKey = (conversation: string) => `${deps.keyPrefix}marks:${conversation}`;
  // The counter positions are taken from (idempotency.ts).
  const positionKey = (conversation: string) => `${deps.keyPrefix}pos:${conversation}`;

  async function move(conversation: string, user: string, kind: ReceiptKind, upTo: number, highest: string): Promise<unknown> {
    return deps.redis.eval(MARK, { keys: [marksKey(conversation), positionKey(conversation)], arguments: [user, kind, String(upTo), String(MARKS_TTL_MS), highest] });
  }

  /** Whether the mark moved; throws bad_request beyond the highest position assigned. */
  async function advance(conversation: string, user: string, kind: ReceiptKind, upTo: number): Promise<boolean> {
    let reply = (await move(conversation, user, kind, upTo, '')) as number[];
    // Redis has no counter (nothing sent yet, or it forgot): storage knows how far positions went.
    if (reply[0] === -1) reply = (await move(conversation, user, kind, upTo, String(await deps.persist.reserved(conversation)))) as number[];
    if (reply[0] === -2) throw new DomainError('bad_request', `receipt: upTo ${upTo} is beyond position ${reply[1]}, the highest assigned in this conversation`);
    return reply[0] === 1;
  }

  function pushDirect(c: Conversation & { kind: 'direct' }, user: string, kind: ReceiptKind, upTo: number, ts: number, sender: Session): void {
    const other = peerOf(c, user);
    // `with` is the other party as the receiving connection sees it.
    const frame = (seenWith: string) => JSON.stringify({ type: 'receipt', kind, by: user, with: seenWith, upTo, ts } satisfies ServerFrame);
    if (other !== user) deps.router.route(frame(user), [other]);
    deps.router.route(frame(other), [user], sender);
  }

  return {
    async accept(user, frame, sender) {
      let conversation: Conversation;
      let members: readonly string[] = [];
      if (frame.room !== undefined) {
        const state = await deps.rooms.target(frame.room);
        if (!state.memberSet.has(user)) throw new DomainError('forbidden', `you are not a member of room ${frame.room}; only members send receipts for it`);
        conversation = roomConversation(frame.room);
        members = state.members;
      } else {
        conversation = directConversation(user, frame.with);
      }
      const key = conversationKey(conversation);
      const moved = await advance(key, user, frame.kind, frame.upTo);
      const ts = clock();
      if (moved) {
        if (conversation.kind === 'direct') pushDirect(conversation, user, frame.kind, frame.upTo, ts, sender);
        else {
          deps.roomMarks.add(conversation.id, frame.kind, { [user]: frame.upTo }, members);
          deps.router.routeRemote(roomMarkFrame(conversation.id, frame.kind, user, frame.upTo, ts), members);
        }
      }
      // Stored even when it moved nothing here: an earlier copy's publish may have failed.
      await deps.publisher.publishReceipt({ user, conversation, kind: frame.kind, upTo: frame.upTo, ts });
    },
  };
}

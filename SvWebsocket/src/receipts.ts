/**
 * Receipts: a user's `delivered` and `read` marks by position, per
 * conversation. Checked (a room's member; not beyond the highest position
 * assigned), moved forward only, pushed, and stored durably through the broker
 * and the writer like messages.
 *
 * Each conversation's current marks live in one Redis hash beside its position
 * counter (in its slot on a Redis Cluster), moved by one script that also
 * checks the position (the receipts of one tick go in one call per slot, as
 * sends share their reservation's): which
 * receipt moved a mark is decided there, across every instance, so a mark that
 * did not move is not pushed. Storage keeps the greatest of each mark, so a
 * receipt stored twice, or after a later one, changes nothing; the hash is a
 * cache of what was pushed (if Redis forgets it, a receipt is pushed again,
 * which clients take as the maximum it is). A read mark moves the delivered
 * mark with it; it is pushed as read only. A room's marks as asked for
 * (`room.marks`) are storage's raised by the hash's: the hash is ahead of
 * storage by what the broker still holds.
 */
import { DomainError, UnavailableError, bySlot, directConversation, errorMessage, peerOf, roomConversation, conversationKey, type Conversation, type ReceiptFrame, type ReceiptKind, type MemberMarks, type Redis, type ServerFrame } from '@simplechat/shared';
import { eachTick, type Pacer } from './pacer';
import { conversationKeys, LUA_COUNTER } from './conversation-keys';
import { scriptRunner } from './redis-script';
import type { PersistClient } from './persist-client';
import type { Publisher } from './publisher';
import type { RoomMarks } from './room-marks';
import { roomMarkFrame } from './room-marks';
import type { Rooms } from './rooms';
import type { Router } from './router';
import type { Session } from './session';

/** how long a conversation's marks stay cached in Redis after they last moved */
const MARKS_TTL_MS = 7 * 24 * 3600 * 1000;
/** receipts in one script call */
const MAX_PER_CALL = 500;

export interface ReceiptsDeps {
  redis: Pick<Redis, 'eval' | 'evalSha' | 'hGetAll' | 'tag' | 'slotOf'>;
  keyPrefix: string;
  rooms: Pick<Rooms, 'forMember'>;
  router: Pick<Router, 'route' | 'routeRemote'>;
  roomMarks: Pick<RoomMarks, 'add'>;
  publisher: Pick<Publisher, 'publishReceipt'>;
  persist: Pick<PersistClient, 'reserved'>;
  /** when queued receipts go to Redis (default: the next tick) */
  pacer?: Pacer;
  now?: () => number;
}

export interface Receipts {
  /** resolves once storage has the receipt (the broker confirmed it) */
  accept(user: string, frame: ReceiptFrame, sender: Session): Promise<void>;
  /**
   * The members' marks in a room: `stored` (storage's) raised by those moved since; storage's
   * alone when Redis cannot be read (marks only move forward: clients keep the highest).
   */
  current(room: string, members: readonly string[], stored: Omit<MemberMarks, 'room'>): Promise<MemberMarks>;
}

// KEYS: per receipt, the conversation's marks hash, its position counter and block end. ARGV[1]
// ttl ms, then per receipt: user, kind, upTo, the highest position handed out as storage knows it
// ('' unknown: used only when Redis has no counter, or one another master recorded). Returns per
// receipt {-1} (no counter: ask storage), {-2, highest} (beyond it), or {moved}. Receipts of one
// call see each other in order.
const MARK = `${LUA_COUNTER}
local rid = replid()
local out = {}
for i = 1, #KEYS / 3 do
  local marks = KEYS[3 * i - 2]
  local user, kind, upToText, fallback = ARGV[4 * i - 2], ARGV[4 * i - 1], ARGV[4 * i], ARGV[4 * i + 1]
  local highest = counter(KEYS[3 * i - 1], KEYS[3 * i], rid) or (fallback ~= '' and tonumber(fallback)) or nil
  local upTo = tonumber(upToText)
  if not highest then
    out[i] = {-1}
  elseif upTo > tonumber(highest) then
    out[i] = {-2, tonumber(highest)}
  else
    local r = tonumber(redis.call('HGET', marks, 'r:' .. user) or '0')
    local d = tonumber(redis.call('HGET', marks, 'd:' .. user) or '0')
    local moved = 0
    if kind == 'read' then
      if upTo > r then
        redis.call('HSET', marks, 'r:' .. user, upToText)
        moved = 1
      end
      if upTo > d then redis.call('HSET', marks, 'd:' .. user, upToText) end
    elseif upTo > d and upTo > r then
      redis.call('HSET', marks, 'd:' .. user, upToText)
      moved = 1
    end
    if moved == 1 then redis.call('PEXPIRE', marks, ARGV[1]) end
    out[i] = {moved}
  end
end
return out
`;

interface Pending {
  conversation: string;
  user: string;
  kind: ReceiptKind;
  upTo: number;
  /** storage's high-water mark, once asked ('' before) */
  highest: string;
  resolve(reply: number[]): void;
  reject(err: Error): void;
}

export function createReceipts(deps: ReceiptsDeps): Receipts {
  const clock = deps.now ?? Date.now;
  // The marks beside the counter positions are taken from (idempotency.ts).
  const keys = conversationKeys(deps.keyPrefix, (group) => deps.redis.tag(group));
  const mark = scriptRunner(deps.redis, MARK);
  // Receipts queued together share one script call, as sends share their reservation's.
  let queue: Pending[] = [];
  const scheduleFlush = (deps.pacer ?? eachTick)(flush);

  function flush(): void {
    const all = queue;
    queue = [];
    for (let i = 0; i < all.length; i += MAX_PER_CALL) run(all.slice(i, i + MAX_PER_CALL));
  }

  function run(batch: Pending[]): void {
    for (const group of bySlot(deps.redis, batch, (p) => keys.marks(p.conversation))) void runSlot(group);
  }

  async function runSlot(batch: Pending[]): Promise<void> {
    try {
      const reply = (await mark({
        keys: batch.flatMap((p) => [keys.marks(p.conversation), keys.position(p.conversation), keys.blockEnd(p.conversation)]),
        arguments: [String(MARKS_TTL_MS), ...batch.flatMap((p) => [p.user, p.kind, String(p.upTo), p.highest])],
      })) as number[][];
      batch.forEach((p, i) => p.resolve(reply[i] ?? [-1]));
    } catch (err) {
      const failure = new UnavailableError(`receipts unavailable (${errorMessage(err)}); send the receipt again`, { cause: err });
      for (const p of batch) p.reject(failure);
    }
  }

  function move(conversation: string, user: string, kind: ReceiptKind, upTo: number, highest: string): Promise<number[]> {
    return new Promise((resolve, reject) => {
      queue.push({ conversation, user, kind, upTo, highest, resolve, reject });
      scheduleFlush();
    });
  }

  /** Whether the mark moved; throws bad_request beyond the highest position assigned. */
  async function advance(conversation: string, user: string, kind: ReceiptKind, upTo: number): Promise<boolean> {
    let reply = await move(conversation, user, kind, upTo, '');
    // Redis has no counter (nothing sent yet, or it forgot): storage knows how far positions went.
    if (reply[0] === -1) reply = await move(conversation, user, kind, upTo, String(await deps.persist.reserved(conversation)));
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
        const state = await deps.rooms.forMember(frame.room, user, 'send receipts for it');
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
    async current(room, members, stored) {
      const cached = await deps.redis.hGetAll(keys.marks(conversationKey(roomConversation(room)))).catch((): Record<string, string> => ({}));
      const marks: MemberMarks = { room, delivered: {}, read: {} };
      for (const user of members) {
        const read = Math.max(stored.read[user] ?? 0, Number(cached[`r:${user}`] ?? 0));
        marks.read[user] = read;
        marks.delivered[user] = Math.max(stored.delivered[user] ?? 0, Number(cached[`d:${user}`] ?? 0), read);
      }
      return marks;
    },
  };
}

/**
 * Idempotency across instances: (sender, client id) -> first msgId, ts,
 * recipient and a digest of the body, in Redis with the window as TTL. The
 * digest tells a plain retry from a resend with other content, whose content
 * PROTOCOL.md says to ignore. The same script reads the key
 * store's epoch (when it started holding keys): while the store is younger
 * than the window it may have lost keys (the development Redis keeps nothing
 * on disk), so a miss is checked against storage before a new msgId is used.
 * The epoch is written by ensureEpoch (from the heartbeat loop) as the time of
 * the newest stored message: keys older than that cannot have been lost, so a
 * fresh cluster, or one whose store forgot nothing recent, skips the check.
 * Reservations queued together (one tick, or one pacer interval under load)
 * share one script call.
 *
 * The same call gives a new message its position (`seq`) in its conversation:
 * a counter per conversation in Redis, counting within a block of positions
 * that storage handed out (POST /internal/positions). A counter that is
 * missing (a new conversation, or a Redis that forgot) or at the end of its
 * block waits for the next block; a block is asked for ahead of time when
 * little of it is left. Storage never hands out a position twice, so no two
 * messages share one, whatever Redis forgets.
 *
 * On a Redis Cluster a sender's keys (its records, its last msgId, their
 * epoch) share the slot of its bucket (one of SENDER_BUCKETS hash tags) and a
 * conversation's its own (conversation-keys.ts). Where the two share a slot
 * (always on one node) one script reserves as above. Elsewhere it takes three
 * steps, each one script per slot issued together: the sender's side records
 * the key with its position pending (`|?`), the conversation's side hands out
 * the positions, and the sender's side completes the records where they are
 * still pending. A repeat that finds a pending record (its first attempt is
 * under way elsewhere, or failed or died half-way: it was never published)
 * completes it itself with a position of its own; whichever completes first
 * stands, and the other attempt takes that record (its position stays
 * unused, reported empty later). The epoch also records which master
 * held it: keys found on another master (a failover, which may have lost the
 * latest writes) make the bucket young again, so its misses are checked
 * against storage for a window; counters found on another master are dropped
 * and the next block is asked from storage.
 */
import { hash } from 'node:crypto';
import { ErrorReply } from 'redis';
import { UnavailableError, bySlot, conversationKey, createLogThrottle, directConversation, errorMessage, keyBucket, LUA_REPLID, type Redis, type WireMessage, type Logger } from '@simplechat/shared';
import { conversationKeys, LUA_COUNTER } from './conversation-keys';
import { eachTick, type Pacer } from './pacer';
import { scriptRunner } from './redis-script';

export interface Candidate {
  msgId: string;
  ts: number;
  /** where the message goes: a user id, or '#' and a room id (user ids hold no '#') */
  to: string;
  /** bodyDigest of the body */
  digest: string;
  /** conversationKey of the message's conversation: the scope of its position */
  conversation: string;
}

export interface Reservation extends Omit<Candidate, 'conversation'> {
  /** the message's position in its conversation (the first attempt's for a repeat; 0 for a key recorded before positions) */
  seq: number;
  /** false: this (sender, id) was seen before; msgId/ts/to are the first attempt's */
  first: boolean;
  /** the body is the first attempt's (always when first; unknown counts as the same) */
  sameBody: boolean;
}

/** The `to` of a candidate for a message to a user or a room. */
export function targetOf(m: { to?: string | undefined; room?: string | undefined }): string {
  return m.room === undefined ? (m.to as string) : `#${m.room}`;
}

/** A short digest of a message body (96 bits): enough to tell a changed resend from a retry. */
export function bodyDigest(body: string): string {
  return hash('sha1', body, 'base64url').slice(0, 16);
}

export interface IdempotencyDeps {
  redis: Pick<Redis, 'eval' | 'evalSha' | 'tag' | 'slotOf'>;
  keyPrefix: string;
  windowMs: number;
  /**
   * EMPTY_AFTER_MS of storage: a repeat of a key first accepted longer ago whose message is not
   * stored may have its position reported empty; it takes a new one (PROTOCOL.md). Unset: never.
   */
  emptyAfterMs?: number;
  /** the stored message of a key, when the key store may have forgotten it */
  lookupStored(sender: string, clientId: string): Promise<WireMessage | null>;
  /** hands out the next `count` positions of each conversation (storage's counter); resolves with the last of each */
  reserveBlocks(blocks: readonly { conversation: string; count: number }[]): Promise<number[]>;
  log: Logger;
  /** when queued reservations go out (default: the next tick) */
  pacer?: Pacer;
  /** clock (tests) */
  now?: () => number;
}

export interface Idempotency {
  reserve(sender: string, clientId: string, candidate: Candidate): Promise<Reservation>;
  /** The highest position handed out in a conversation, null when Redis has no counter for it. */
  currentPosition(conversation: string): Promise<number | null>;
  /** Records the key store's epoch if it has none; returns whether it had one. Rejects (recording nothing) when storage cannot tell. */
  ensureEpoch(newestStoredTs: () => Promise<number | null>): Promise<boolean>;
}

// Lua shared by the reservation scripts.
// epoch_of(key, rid, now): the key store's epoch for the keys of this call (ms, as text): the
// recorded one; now when none is recorded yet; now, recorded, when another master recorded it
// (a failover: keys of this bucket may have been lost, so it is young again). One recorded by an
// earlier version (no '|rid') is kept and completed.
// minted(lastKey, msgId, value, ttl): records msgId as the sender's last, raised when it does not
// sort after the last one (see RESERVE); returns the raised id ('' if none) and the value with it.
const LUA_RESERVE = `${LUA_COUNTER}
local function epoch_of(key, rid, now)
  local v = redis.call('GET', key)
  if not v then return now end
  local bar = string.find(v, '|', 1, true)
  if not bar then
    redis.call('SET', key, v .. '|' .. rid)
    return v
  end
  if string.sub(v, bar + 1) ~= rid then
    redis.call('SET', key, now .. '|' .. rid)
    return now
  end
  return string.sub(v, 1, bar - 1)
end
local B32 = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'
local function after(id)
  local out = {}
  for i = 1, #id do out[i] = string.sub(id, i, i) end
  for i = #id, 1, -1 do
    local p = string.find(B32, out[i], 1, true)
    if not p then return nil end
    if p < 32 then out[i] = string.sub(B32, p + 1, p + 1) return table.concat(out) end
    out[i] = '0'
  end
  return nil
end
local function minted(lastKey, msgId, value, ttl)
  local last = redis.call('SET', lastKey, msgId, 'PX', ttl, 'GET')
  if last and msgId <= last then
    local r = nil
    if #msgId == #last and #last > 16 then
      local head = after(string.sub(last, 1, 16))
      if head then r = head .. string.sub(msgId, 17) end
    end
    if r then
      redis.call('SET', lastKey, r, 'PX', ttl)
      return r, r .. string.sub(value, #msgId + 1)
    end
    redis.call('SET', lastKey, last, 'PX', ttl)
  end
  return '', value
end
`;

// KEYS[1] epoch key, then n each of: idempotency keys, the senders' last-msgId keys, the
// conversations' position counters and their block ends. ARGV[1] ttl ms, ARGV[2] now ms, ARGV[3]
// last-msgId ttl ms, ARGV[4] low water (positions left in a block when the next one is asked for),
// ARGV[5..n+4] values (msgId|ts|to|digest), ARGV[n+5..2n+4] their msgIds.
// Returns { epoch, then per key: its previous value (msgId|ts|to|digest|seq), or '?' (no position
// left: nothing recorded, ask again once a block is there), or '#N' / '#L' (new; L: the block runs
// low) .. seq .. '|' .. the raised msgId or '' }; a msgId starts with neither '?' nor '#'. Keys repeated within one call see each other in
// order, so two sends of the same id in one tick still get one msgId, and one conversation's sends
// get consecutive positions.
// A new msgId must sort after the sender's last one, whichever instance minted that: instances'
// clocks differ (across hosts by milliseconds or more), so a lower one is raised. Not to the last
// + 1: an instance's monotonic ULIDs count up by one within a millisecond, so that id may be
// minted there next for another message. The raised id is the last one's first 16 characters (the
// time and 30 bits of its randomness) + 1, then the minted id's own 10 random characters: it sorts
// after the last one, and no instance counts up to it within a millisecond. One sender's msgIds
// thus sort in the order Redis accepted them, as PROTOCOL.md requires.
const RESERVE = `${LUA_RESERVE}
local n = (#KEYS - 1) / 4
local lowWater = tonumber(ARGV[4])
local rid = replid()
local out = { epoch_of(KEYS[1], rid, ARGV[2]) }
for i = 1, n do
  local old = redis.call('GET', KEYS[1 + i])
  if old then
    out[i + 1] = old
  else
    local pos, limit = counter(KEYS[1 + 2 * n + i], KEYS[1 + 3 * n + i], rid)
    if (not pos) or (not limit) or pos >= limit then
      out[i + 1] = '?'
    else
      pos = pos + 1
      redis.call('SET', KEYS[1 + 2 * n + i], pos)
      local raised, value = minted(KEYS[1 + n + i], ARGV[n + 4 + i], ARGV[4 + i], ARGV[3])
      redis.call('SET', KEYS[1 + i], value .. '|' .. pos, 'PX', ARGV[1])
      local flag = '#N'
      if limit - pos <= lowWater then flag = '#L' end
      out[i + 1] = flag .. pos .. '|' .. raised
    end
  end
end
return out`;

// The sender's side, where its conversation is in another slot. KEYS[1] epoch key, then n each
// of: idempotency keys, the senders' last-msgId keys. ARGV[1] ttl ms, ARGV[2] now ms, ARGV[3]
// last-msgId ttl ms, ARGV[4..n+3] values (msgId|ts|to|digest), ARGV[n+4..2n+3] their msgIds.
// Returns { epoch, then per key: its previous value, or '#|' .. the raised msgId or '' (new:
// recorded with its position pending, value|?) }.
const RESERVE_KEYS = `${LUA_RESERVE}
local n = (#KEYS - 1) / 2
local rid = replid()
local out = { epoch_of(KEYS[1], rid, ARGV[2]) }
for i = 1, n do
  local old = redis.call('GET', KEYS[1 + i])
  if old then
    out[i + 1] = old
  else
    local raised, value = minted(KEYS[1 + n + i], ARGV[n + 3 + i], ARGV[3 + i], ARGV[3])
    redis.call('SET', KEYS[1 + i], value .. '|?', 'PX', ARGV[1])
    out[i + 1] = '#|' .. raised
  end
end
return out`;

// The conversation's side: per message, KEYS its position counter and block end. ARGV[1] low
// water. Returns per message '?' (no position left) or '#N' / '#L' .. seq, as RESERVE.
const TAKE_POSITIONS = `${LUA_COUNTER}
local rid = replid()
local lowWater = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS / 2 do
  local pk, ek = KEYS[2 * i - 1], KEYS[2 * i]
  local pos, limit = counter(pk, ek, rid)
  if (not pos) or (not limit) or pos >= limit then
    out[i] = '?'
  else
    pos = pos + 1
    redis.call('SET', pk, pos)
    local flag = '#N'
    if limit - pos <= lowWater then flag = '#L' end
    out[i] = flag .. pos
  end
end
return out`;

// The sender's side again: KEYS idempotency keys recorded pending by RESERVE_KEYS. ARGV[1] ttl ms,
// then per key its pending record (msgId|ts|to|digest|?) and the whole record (with the position).
// Records it where the key still holds the pending record (or nothing: a failover lost it);
// returns per key '' when recorded, else what the key holds (another attempt completed it first,
// or another msgId took it: that one stands).
const COMPLETE_KEYS = `
local out = {}
for i = 1, #KEYS do
  local pending, value = ARGV[2 * i], ARGV[2 * i + 1]
  local current = redis.call('GET', KEYS[i])
  if (not current) or current == pending then
    redis.call('SET', KEYS[i], value, 'PX', ARGV[1])
    out[i] = ''
  else
    out[i] = current
  end
end
return out`;

// KEYS idempotency keys; ARGV the pending records RESERVE_KEYS wrote: each is removed if it still
// holds that (its message got no position, so a retry starts afresh).
const FORGET_KEYS = `
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then redis.call('DEL', KEYS[i]) end
end
return 0`;

// Per conversation i: KEYS[2i-1] its position counter, KEYS[2i] its block end; ARGV[2i-1] the last
// position of a block storage handed out, ARGV[2i] the block's size. A missing counter starts at
// the block; a block right after the current one extends it; one further on (another block was
// handed out in between: to another gateway's request, or to storage itself) is jumped to,
// leaving the rest of the current block unused. A block behind the current end changes nothing.
const SEED = `${LUA_COUNTER}
local rid = replid()
for i = 1, #KEYS / 2 do
  local pk, ek = KEYS[2 * i - 1], KEYS[2 * i]
  local pos, limit = counter(pk, ek, rid)
  local upTo = tonumber(ARGV[2 * i - 1])
  local first = upTo - tonumber(ARGV[2 * i])
  if (not pos) or (not limit) then
    if (not pos) or pos < first then redis.call('SET', pk, first) end
    redis.call('SET', ek, block_end(upTo, rid))
  elseif upTo > limit then
    if first > limit and pos < first then redis.call('SET', pk, first) end
    redis.call('SET', ek, block_end(upTo, rid))
  end
end
return 1`;

// KEYS a conversation's position counter and block end: the last position handed out, or nil.
const CURRENT = `${LUA_COUNTER}
local pos = counter(KEYS[1], KEYS[2], replid())
return pos`;

// KEYS epoch keys. ARGV[1] '' (returns per key 1 when it exists, else 0) or an epoch (recorded
// where none is, with the master's replication id; returns how many were recorded).
const ENSURE_EPOCH = `${LUA_REPLID}
if ARGV[1] == '' then
  local out = {}
  for i = 1, #KEYS do out[i] = redis.call('EXISTS', KEYS[i]) end
  return out
end
local rid = replid()
local set = 0
for i = 1, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[1] .. '|' .. rid, 'NX') then set = set + 1 end
end
return set`;

/** conversations in one call for blocks of positions */
const MAX_BLOCKS_PER_CALL = 1_000;
/** positions asked for at a time */
const POSITION_BLOCK = 100;
/** positions left in a block when the next one is asked for */
const POSITION_LOW_WATER = 50;

/** On a Redis Cluster, senders' keys are spread over this many hash tags (their buckets). */
const SENDER_BUCKETS = 128;

/** How long a sender's last msgId is kept for ordering: far longer than any clock difference. */
const LAST_ID_TTL_MS = 60_000;

const encode = (c: Candidate) => `${c.msgId}|${c.ts}|${c.to}|${c.digest}`;

interface Recorded {
  msgId: string;
  ts: number;
  to: string;
  digest: string;
  seq: number;
  /** when the position was given: at acceptance (ts), or later when a repeat took a new one */
  seqAt: number;
  /** recorded by the first of three steps (RESERVE_KEYS), its position not yet: seq 0 */
  isPending: boolean;
}

/** A record; one written before digests were kept has none (''), one before positions no seq (0). */
function decode(value: string): Recorded | undefined {
  const [msgId, ts, to, digest = '', seq = '0', seqAt = ts] = value.split('|');
  return msgId && ts && to ? { msgId, ts: Number(ts), to, digest, seq: Number(seq) || 0, seqAt: Number(seqAt), isPending: seq === PENDING } : undefined;
}

/** The position field of a record whose position is being taken (RESERVE_KEYS). */
const PENDING = '?';

function seenBefore(previous: Pick<Recorded, 'msgId' | 'ts' | 'to' | 'digest' | 'seq'>, candidate: Candidate): Reservation {
  const { msgId, ts, to, digest, seq } = previous;
  return { msgId, ts, to, digest, seq, first: false, sameBody: digest === '' || digest === candidate.digest };
}

function fresh(candidate: Candidate, seq: number): Reservation {
  return { msgId: candidate.msgId, ts: candidate.ts, to: candidate.to, digest: candidate.digest, seq, first: true, sameBody: true };
}


/** most keys in one script call (one call runs atomically and blocks Redis meanwhile) */
const MAX_KEYS_PER_CALL = 1_000;

/** after a failed storage lookup, how long misses go without one */
const STORAGE_RETRY_MS = 5_000;

/** at most one warning per this interval while Redis refuses reservations (or storage lookups fail) */
const REFUSED_LOG_INTERVAL_MS = 60_000;

/** Redis at maxmemory with noeviction: writes fail, reads still work. */
const isFull = (err: unknown) => err instanceof ErrorReply && err.message.startsWith('OOM');

interface Pending {
  key: string;
  sender: string;
  clientId: string;
  candidate: Candidate;
  /** the sender's keys and the conversation's share a slot: one script reserves it */
  isTogether: boolean;
  resolve(r: Reservation): void;
  reject(err: Error): void;
}

export function createIdempotency(deps: IdempotencyDeps): Idempotency {
  const { redis } = deps;
  const conv = conversationKeys(deps.keyPrefix, (group) => redis.tag(group));
  const positionKey = conv.position;
  const blockEndKey = conv.blockEnd;
  // A sender's keys share its bucket's tag: its epoch, its records, its last msgId.
  const senderTag = (sender: string) => redis.tag(`s${keyBucket(sender, SENDER_BUCKETS)}`);
  const epochKeyOf = (sender: string) => `${deps.keyPrefix}idem:epoch${senderTag(sender)}`;
  const lastKeyOf = (sender: string) => `${deps.keyPrefix}idem-last:${senderTag(sender)}${sender}`;
  /** every bucket's epoch key (one on one node) */
  const epochKeys = [...new Set(Array.from({ length: SENDER_BUCKETS }, (_, b) => `${deps.keyPrefix}idem:epoch${redis.tag(`s${b}`)}`))];
  const reserveScript = scriptRunner(redis, RESERVE);
  const reserveKeysScript = scriptRunner(redis, RESERVE_KEYS);
  const takePositionsScript = scriptRunner(redis, TAKE_POSITIONS);
  const completeKeysScript = scriptRunner(redis, COMPLETE_KEYS);
  const forgetKeysScript = scriptRunner(redis, FORGET_KEYS);
  const seedScript = scriptRunner(redis, SEED);
  const currentScript = scriptRunner(redis, CURRENT);
  const ensureEpochScript = scriptRunner(redis, ENSURE_EPOCH);

  // Reservations queued together share one script call: one Redis round trip (and one command
  // timeout) per flush instead of one per message; the pacer decides when a flush goes out.
  let queue: Pending[] = [];
  /** reservations in three steps under way here, by key: a repeat of one waits for its answer */
  const inflight = new Map<string, Promise<Reservation>>();
  // Connection failures are logged by the Redis client's wrapper; an error reply (Redis full,
  // a script error) would otherwise show only as `unavailable` answers to the senders.
  const refusals = createLogThrottle(REFUSED_LOG_INTERVAL_MS);

  const clock = deps.now ?? Date.now;
  /** storage failed a lookup: until then, misses skip the check instead of each waiting for its timeout */
  let skipStorageUntil = 0;
  const storageFailures = createLogThrottle(REFUSED_LOG_INTERVAL_MS);
  const positionFailures = createLogThrottle(REFUSED_LOG_INTERVAL_MS);

  /**
   * Positions handed out by storage, asked for once per conversation at a time; the conversations
   * asked for within one tick share one call to storage and one to Redis (a burst of new
   * conversations, as after a restart, costs a few calls, not one each).
   */
  const blocks = new Map<string, Promise<void>>();
  let blockBatch: { conversation: string; count: number; done: { resolve(): void; reject(err: unknown): void } }[] | undefined;
  function nextBlock(conversation: string, wanted: number): Promise<void> {
    let asked = blocks.get(conversation);
    if (!asked) {
      // A burst larger than a block gets a block its size, so that it waits for one reservation at most.
      const count = Math.max(POSITION_BLOCK, wanted + POSITION_LOW_WATER);
      if (!blockBatch) {
        blockBatch = [];
        setImmediate(sendBlocks);
      }
      const batch = blockBatch;
      asked = new Promise<void>((resolve, reject) => batch.push({ conversation, count, done: { resolve, reject } })).finally(() => blocks.delete(conversation));
      blocks.set(conversation, asked);
    }
    return asked;
  }

  async function sendBlocks(): Promise<void> {
    const batch = blockBatch ?? [];
    blockBatch = undefined;
    for (let i = 0; i < batch.length; i += MAX_BLOCKS_PER_CALL) {
      const part = batch.slice(i, i + MAX_BLOCKS_PER_CALL);
      try {
        const upTo = await deps.reserveBlocks(part.map(({ conversation, count }) => ({ conversation, count })));
        const seeded = part.map((b, k) => ({ conversation: b.conversation, upTo: upTo[k], count: b.count }));
        await Promise.all(
          bySlot(redis, seeded, (b) => positionKey(b.conversation)).map((group) =>
            seedScript({
              keys: group.flatMap((b) => [positionKey(b.conversation), blockEndKey(b.conversation)]),
              arguments: group.flatMap((b) => [String(b.upTo), String(b.count)]),
            }),
          ),
        );
        for (const b of part) b.done.resolve();
      } catch (err) {
        for (const b of part) b.done.reject(err);
      }
    }
  }

  /**
   * A key recorded before positions existed: its message has the position storage gave it. Until
   * it is stored, a repeat is answered unavailable (the client retries with the same id).
   */
  async function positionOfStored(p: Pending, previous: Recorded): Promise<Reservation> {
    const stored = await deps.lookupStored(p.sender, p.clientId).catch(() => null);
    if (!stored || stored.msgId !== previous.msgId) throw new UnavailableError('this message is still on its way to storage; retry with the same id');
    return seenBefore({ ...previous, seq: stored.seq }, p.candidate);
  }

  /**
   * A repeat of a key first accepted more than EMPTY_AFTER_MS ago: if its message is stored, its
   * position is the stored one (storage moves a message that came after its position was
   * reported empty); if it is not, the first attempt never reached storage and its position may
   * be reported empty, so the message keeps its msgId and takes a new position, recorded for
   * later repeats. Storage unreachable: the recorded position.
   */
  async function repositionIfUnstored(p: Pending, previous: Recorded, now: number): Promise<Reservation> {
    let stored: WireMessage | null;
    try {
      stored = await deps.lookupStored(p.sender, p.clientId);
    } catch {
      return seenBefore(previous, p.candidate);
    }
    if (stored) return seenBefore(stored.msgId === previous.msgId ? { ...previous, seq: stored.seq } : previous, p.candidate);
    const conversation = previous.to.startsWith('#') ? previous.to.slice(1) : conversationKey(directConversation(p.sender, previous.to));
    const [upTo] = await deps.reserveBlocks([{ conversation, count: 1 }]);
    if (upTo === undefined) throw new UnavailableError('message positions unavailable (storage does not answer); retry with the same id');
    const moved = { ...previous, seq: upTo, seqAt: now };
    await redis.eval("return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])", { keys: [p.key], arguments: [`${encode({ ...moved, conversation })}|${upTo}|${now}`, String(deps.windowMs)] });
    return seenBefore(moved, p.candidate);
  }

  /** A miss while the store is younger than the window: the key may have been lost; ask storage. */
  async function checkStored(p: Pending, seq: number): Promise<Reservation> {
    let stored: WireMessage | null = null;
    if (clock() < skipStorageUntil) return fresh(p.candidate, seq);
    try {
      stored = await deps.lookupStored(p.sender, p.clientId);
      const failedChecks = storageFailures.end();
      if (failedChecks > 0) deps.log.info({ failedChecks }, 'idempotency: storage answers the checks again');
    } catch (err) {
      // Storage down as well: stay available. Storage keeps (sender, id) unique, so at worst
      // a retry of a forgotten key is acked with a new msgId while the first copy is stored.
      // The next STORAGE_RETRY_MS of misses go without the check rather than each waiting.
      skipStorageUntil = clock() + STORAGE_RETRY_MS;
      if (storageFailures.shouldLog()) {
        deps.log.warn({ err: errorMessage(err), failedChecks: storageFailures.count }, 'idempotency: Redis may have lost keys and storage does not answer the check; sends go on without it (a retry whose key was lost gets a new msgId: delivered again, stored once)');
      }
    }
    if (stored && stored.msgId !== p.candidate.msgId) {
      const first = { msgId: stored.msgId, ts: stored.ts, to: targetOf(stored), digest: bodyDigest(stored.body), seq: stored.seq };
      await redis.eval("return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])", { keys: [p.key], arguments: [`${encode({ ...first, conversation: p.candidate.conversation })}|${first.seq}`, String(deps.windowMs)] }).catch(() => undefined);
      return seenBefore(first, p.candidate);
    }
    return fresh(p.candidate, seq);
  }

  /** Redis refused or failed a call: the senders learn to retry, the log why (error replies only; the connection logs its own). */
  function refused(batch: readonly Pending[], err: unknown): void {
    const full = isFull(err);
    const failure = new UnavailableError(`idempotency store unavailable (${full ? 'Redis is full' : errorMessage(err)}); retry with the same id`, { cause: err });
    for (const p of batch) p.reject(failure);
    if (err instanceof ErrorReply && refusals.shouldLog()) {
      deps.log.warn(
        { err: errorMessage(err), refusedCalls: refusals.count },
        full
          ? 'Redis is full (maxmemory reached): sends are answered unavailable until it has room; raise maxmemory or shorten IDEMPOTENCY_WINDOW_MS (see docs/OPERATIONS.md, Capacity)'
          : 'Redis refused the idempotency reservation (see err): sends are answered unavailable until it accepts them again',
      );
    }
  }

  function accepted(): void {
    const refusedCalls = refusals.end();
    if (refusedCalls > 0) deps.log.info({ refusedCalls }, 'Redis takes idempotency reservations again');
  }

  /** A key recorded before: its first attempt's answer (or what the record still lacks). */
  function settleRepeat(p: Pending, value: string, now: number): void {
    const previous = decode(value);
    if (!previous) p.reject(new UnavailableError('idempotency store answered with an unreadable record; retry with the same id'));
    else if (previous.isPending) completePending(p, previous, value.slice(0, -(PENDING.length + 1)));
    else if (previous.seq === 0) positionOfStored(p, previous).then(p.resolve, p.reject);
    else if (deps.emptyAfterMs !== undefined && now - previous.seqAt > deps.emptyAfterMs) repositionIfUnstored(p, previous, now).then(p.resolve, p.reject);
    else p.resolve(seenBefore(previous, p.candidate));
  }

  /** A new key with its position. */
  function settleNew(p: Pending, seq: number, isYoung: boolean): void {
    if (isYoung) checkStored(p, seq).then(p.resolve, p.reject);
    else p.resolve(fresh(p.candidate, seq));
  }

  /** '#N' / '#L' + seq + ('|' + raised msgId): the position (and the msgId to use); asks for the next block ahead when it runs low. */
  function taken(p: Pending, out: string): number {
    const bar = out.indexOf('|');
    const seq = Number(out.slice(2, bar < 0 ? undefined : bar));
    const raised = bar < 0 ? '' : out.slice(bar + 1);
    if (raised) p.candidate = { ...p.candidate, msgId: raised };
    if (out.startsWith('#L')) void nextBlock(p.candidate.conversation, 0).catch((err: unknown) => deps.log.debug({ err: errorMessage(err) }, 'next block of positions not reserved ahead; asked again when needed'));
    return seq;
  }

  /** Once storage handed out the next positions of each conversation, `then` runs with its messages; failing that, they are refused. */
  function afterBlocks(waiting: Map<string, Pending[]>, then: (list: Pending[]) => void, onFailure?: (list: Pending[]) => void): void {
    for (const [conversation, list] of waiting) {
      nextBlock(conversation, list.length).then(
        () => then(list),
        (err: unknown) => {
          // The client learns what to do; where storage runs goes to the log (the JSON client logs it).
          const failure = new UnavailableError('message positions unavailable (storage does not answer); retry with the same id', { cause: err });
          if (positionFailures.shouldLog()) deps.log.warn({ err: errorMessage(err), failedSoFar: positionFailures.count }, 'storage hands out no positions (see err): sends into conversations without positions left are answered unavailable');
          onFailure?.(list);
          for (const p of list) p.reject(failure);
        },
      );
    }
  }

  function waitFor(waiting: Map<string, Pending[]>, p: Pending): void {
    const list = waiting.get(p.candidate.conversation);
    if (list) list.push(p);
    else waiting.set(p.candidate.conversation, [p]);
  }

  /** Messages whose sender's keys and conversation's share a slot (always on one node): one script. */
  async function reserveTogether(batch: Pending[], now: number): Promise<void> {
    let reply: string[];
    try {
      reply = (await reserveScript({
        keys: [
          epochKeyOf((batch[0] as Pending).sender),
          ...batch.map((p) => p.key),
          ...batch.map((p) => lastKeyOf(p.sender)),
          ...batch.map((p) => positionKey(p.candidate.conversation)),
          ...batch.map((p) => blockEndKey(p.candidate.conversation)),
        ],
        arguments: [String(deps.windowMs), String(now), String(LAST_ID_TTL_MS), String(POSITION_LOW_WATER), ...batch.map((p) => encode(p.candidate)), ...batch.map((p) => p.candidate.msgId)],
      })) as string[];
    } catch (err) {
      refused(batch, err);
      return;
    }
    accepted();
    const isYoung = now - Number(reply[0]) < deps.windowMs;
    const waiting = new Map<string, Pending[]>();
    batch.forEach((p, i) => {
      const out = reply[i + 1] ?? '';
      // '?' and '#' start no record: a record starts with its msgId
      if (out === '?') waitFor(waiting, p);
      else if (out.startsWith('#')) settleNew(p, taken(p, out), isYoung);
      else settleRepeat(p, out, now);
    });
    // No position left in these conversations' blocks: once storage handed out the next ones, again.
    afterBlocks(waiting, (list) => list.forEach(enqueue));
  }

  /** Messages whose conversation is in another slot than the sender's keys: record, take positions, complete. */
  async function reserveApart(apart: Pending[], now: number): Promise<void> {
    const batches = groupBy(apart, (p) => epochKeyOf(p.sender));
    const recorded: { p: Pending; record: string; isYoung: boolean }[] = [];
    await Promise.all(
      batches.map(async (batch) => {
        let reply: string[];
        try {
          reply = (await reserveKeysScript({
            keys: [epochKeyOf((batch[0] as Pending).sender), ...batch.map((p) => p.key), ...batch.map((p) => lastKeyOf(p.sender))],
            arguments: [String(deps.windowMs), String(now), String(LAST_ID_TTL_MS), ...batch.map((p) => encode(p.candidate)), ...batch.map((p) => p.candidate.msgId)],
          })) as string[];
        } catch (err) {
          refused(batch, err);
          return;
        }
        accepted();
        const isYoung = now - Number(reply[0]) < deps.windowMs;
        batch.forEach((p, i) => {
          const out = reply[i + 1] ?? '';
          if (!out.startsWith('#|')) return settleRepeat(p, out, now);
          const raised = out.slice(2);
          if (raised) p.candidate = { ...p.candidate, msgId: raised };
          recorded.push({ p, record: encode(p.candidate), isYoung });
        });
      }),
    );
    // Positions in the order the sends were queued, as one script gives them.
    const order = new Map(apart.map((p, i) => [p, i]));
    recorded.sort((x, y) => (order.get(x.p) ?? 0) - (order.get(y.p) ?? 0));
    if (recorded.length > 0) await positionApart(recorded);
  }

  /**
   * A record whose position is pending: its first attempt is under way on another instance, or
   * failed or died half-way (never published). This repeat takes a position for it and completes
   * it; if the first attempt completes first, its record stands for both.
   */
  function completePending(p: Pending, previous: Recorded, record: string): void {
    const conversation = previous.to.startsWith('#') ? previous.to.slice(1) : conversationKey(directConversation(p.sender, previous.to));
    const forRecord: Pending = {
      ...p,
      candidate: { msgId: previous.msgId, ts: previous.ts, to: previous.to, digest: previous.digest, conversation },
      resolve: (r) => p.resolve(seenBefore(r, p.candidate)),
    };
    void positionApart([{ p: forRecord, record, isYoung: false }]);
  }

  /** The positions of recorded keys, then their records completed; waits for blocks where none is left. */
  async function positionApart(recorded: { p: Pending; record: string; isYoung: boolean }[]): Promise<void> {
    const forget = (items: readonly { p: Pending; record: string }[]) =>
      Promise.all(bySlot(redis, items, (r) => r.p.key).map((group) => forgetKeysScript({ keys: group.map((r) => r.p.key), arguments: group.map((r) => `${r.record}|${PENDING}`) }))).catch((err: unknown) =>
        deps.log.debug({ err: errorMessage(err) }, 'could not remove records left without a position; their repeats wait until EMPTY_AFTER_MS'),
      );
    const positioned: { p: Pending; record: string; isYoung: boolean; seq: number }[] = [];
    const waiting = new Map<string, Pending[]>();
    const byPending = new Map(recorded.map((r) => [r.p, r]));
    try {
      await Promise.all(
        bySlot(redis, recorded, (r) => positionKey(r.p.candidate.conversation)).map(async (group) => {
          const reply = (await takePositionsScript({
            keys: group.flatMap((r) => [positionKey(r.p.candidate.conversation), blockEndKey(r.p.candidate.conversation)]),
            arguments: [String(POSITION_LOW_WATER)],
          })) as string[];
          group.forEach((r, i) => {
            const out = reply[i] ?? '?';
            if (out === '?') waitFor(waiting, r.p);
            else positioned.push({ ...r, seq: taken(r.p, out) });
          });
        }),
      );
      const completed = await Promise.all(
        bySlot(redis, positioned, (r) => r.p.key).map(async (group) => {
          const reply = (await completeKeysScript({ keys: group.map((r) => r.p.key), arguments: [String(deps.windowMs), ...group.flatMap((r) => [`${r.record}|${PENDING}`, `${r.record}|${r.seq}`])] })) as string[];
          return group.map((r, i) => ({ ...r, current: reply[i] ?? '' }));
        }),
      );
      accepted();
      for (const r of completed.flat()) {
        if (r.current === '') settleNew(r.p, r.seq, r.isYoung);
        else settleRepeat(r.p, r.current, clock());
      }
    } catch (err) {
      // Positions taken and not recorded stay unused: storage reports them empty. Records without one are removed, so that retries start afresh.
      void forget(recorded);
      refused(recorded.map((r) => r.p), err);
      return;
    }
    afterBlocks(
      waiting,
      (list) => void positionApart(list.map((p) => byPending.get(p) as (typeof recorded)[number])),
      (list) => void forget(list.map((p) => byPending.get(p) as (typeof recorded)[number])),
    );
  }

  /** The sender's keys and the conversation's share a slot (always on one node): one script reserves. */
  const isTogether = (sender: string, conversation: string) => redis.slotOf(epochKeyOf(sender)) === redis.slotOf(positionKey(conversation));

  function run(batch: Pending[]): void {
    const now = clock();
    const together: Pending[] = [];
    const apart: Pending[] = [];
    for (const p of batch) (p.isTogether ? together : apart).push(p);
    // One epoch per call: grouped by the sender's bucket (one group on one node).
    for (const group of groupBy(together, (p) => epochKeyOf(p.sender))) void reserveTogether(group, now);
    if (apart.length > 0) void reserveApart(apart, now);
  }

  const scheduleFlush = (deps.pacer ?? eachTick)(flush);

  function flush(): void {
    const all = queue;
    queue = [];
    for (let i = 0; i < all.length; i += MAX_KEYS_PER_CALL) run(all.slice(i, i + MAX_KEYS_PER_CALL));
  }

  function enqueue(p: Pending): void {
    queue.push(p);
    scheduleFlush();
  }

  return {
    async currentPosition(conversation) {
      const value = await currentScript({ keys: [positionKey(conversation), blockEndKey(conversation)], arguments: [] });
      return typeof value === 'number' ? value : typeof value === 'string' ? Number(value) : null;
    },
    reserve(sender, clientId, candidate) {
      const key = `${deps.keyPrefix}idem:${senderTag(sender)}${sender}:${clientId}`;
      const together = isTogether(sender, candidate.conversation);
      const reserveNew = () => new Promise<Reservation>((resolve, reject) => enqueue({ key, sender, clientId, candidate, isTogether: together, resolve, reject }));
      // Reserved in one script, repeats in the same call see each other in order.
      if (together) return reserveNew();
      // In three steps, a repeat of a key this instance is reserving right now gets that answer
      // (the record has no position yet).
      const earlier = inflight.get(key);
      const answer = earlier ? earlier.then((first) => ({ ...first, first: false, sameBody: first.digest === candidate.digest }), reserveNew) : reserveNew();
      inflight.set(key, answer);
      const done = () => {
        if (inflight.get(key) === answer) inflight.delete(key);
      };
      answer.then(done, done);
      return answer;
    },
    async ensureEpoch(newestStoredTs) {
      const groups = bySlot(redis, epochKeys, (k) => k);
      const exists = await Promise.all(groups.map((keys) => ensureEpochScript({ keys, arguments: [''] }) as Promise<number[]>));
      const missing = groups.flatMap((keys, g) => keys.filter((_, i) => exists[g]?.[i] !== 1));
      if (missing.length === 0) return true;
      // Storage unknown: record nothing yet. Until an epoch is recorded the store counts as young
      // (each miss is checked against storage), and the next heartbeat asks again; recording "now"
      // instead would keep every send paying that check for a whole window.
      const epoch = (await newestStoredTs()) ?? 0;
      const set = await Promise.all(bySlot(redis, missing, (k) => k).map((keys) => ensureEpochScript({ keys, arguments: [String(epoch)] }) as Promise<number>));
      const recorded = set.reduce((a, b) => a + b, 0);
      if (recorded > 0) deps.log.info({ epoch, buckets: recorded }, 'idempotency store had no epoch (new or emptied Redis); recorded one');
      return false;
    },
  };
}

function groupBy<T>(items: readonly T[], keyOf: (item: T) => string): T[][] {
  const groups = new Map<string, T[]>();
  for (const item of items) {
    const k = keyOf(item);
    const group = groups.get(k);
    if (group) group.push(item);
    else groups.set(k, [item]);
  }
  return [...groups.values()];
}

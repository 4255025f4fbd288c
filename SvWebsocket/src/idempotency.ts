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
 */
import { hash } from 'node:crypto';
import { ErrorReply } from 'redis';
import { UnavailableError, conversationKey, createLogThrottle, directConversation, errorMessage, type WireMessage, type Logger } from '@simplechat/shared';
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
  redis: {
    eval(script: string, options: { keys: string[]; arguments: string[] }): Promise<unknown>;
    evalSha(sha: string, options: { keys: string[]; arguments: string[] }): Promise<unknown>;
  };
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
const RESERVE = `
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
local n = (#KEYS - 1) / 4
local lowWater = tonumber(ARGV[4])
local epoch = redis.call('GET', KEYS[1])
if not epoch then epoch = ARGV[2] end
local out = { epoch }
for i = 1, n do
  local old = redis.call('GET', KEYS[1 + i])
  if old then
    out[i + 1] = old
  else
    local pos = tonumber(redis.call('GET', KEYS[1 + 2 * n + i]))
    local limit = tonumber(redis.call('GET', KEYS[1 + 3 * n + i]))
    if (not pos) or (not limit) or pos >= limit then
      out[i + 1] = '?'
    else
      pos = pos + 1
      redis.call('SET', KEYS[1 + 2 * n + i], pos)
      local msgId = ARGV[n + 4 + i]
      local value = ARGV[4 + i]
      local raised = ''
      local last = redis.call('SET', KEYS[1 + n + i], msgId, 'PX', ARGV[3], 'GET')
      if last and msgId <= last then
        local r = nil
        if #msgId == #last and #last > 16 then
          local head = after(string.sub(last, 1, 16))
          if head then r = head .. string.sub(msgId, 17) end
        end
        if r then
          redis.call('SET', KEYS[1 + n + i], r, 'PX', ARGV[3])
          value = r .. string.sub(value, #msgId + 1)
          raised = r
        else
          redis.call('SET', KEYS[1 + n + i], last, 'PX', ARGV[3])
        end
      end
      redis.call('SET', KEYS[1 + i], value .. '|' .. pos, 'PX', ARGV[1])
      local flag = '#N'
      if limit - pos <= lowWater then flag = '#L' end
      out[i + 1] = flag .. pos .. '|' .. raised
    end
  end
end
return out`;

// Per conversation i: KEYS[2i-1] its position counter, KEYS[2i] its block end; ARGV[2i-1] the last
// position of a block storage handed out, ARGV[2i] the block's size. A missing counter starts at
// the block; a block right after the current one extends it; one further on (another block was
// handed out in between: to another gateway's request, or to storage itself) is jumped to,
// leaving the rest of the current block unused. A block behind the current end changes nothing.
const SEED = `
for i = 1, #KEYS / 2 do
  local pk, ek = KEYS[2 * i - 1], KEYS[2 * i]
  local pos = tonumber(redis.call('GET', pk))
  local limit = tonumber(redis.call('GET', ek))
  local upTo = tonumber(ARGV[2 * i - 1])
  local first = upTo - tonumber(ARGV[2 * i])
  if (not pos) or (not limit) then
    if (not pos) or pos < first then redis.call('SET', pk, first) end
    redis.call('SET', ek, upTo)
  elseif upTo > limit then
    if first > limit and pos < first then redis.call('SET', pk, first) end
    redis.call('SET', ek, upTo)
  end
end
return 1`;

/** conversations in one call for blocks of positions */
const MAX_BLOCKS_PER_CALL = 1_000;
/** positions asked for at a time */
const POSITION_BLOCK = 100;
/** positions left in a block when the next one is asked for */
const POSITION_LOW_WATER = 50;

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
}

/** A record; one written before digests were kept has none (''), one before positions no seq (0). */
function decode(value: string): Recorded | undefined {
  const [msgId, ts, to, digest = '', seq = '0', seqAt = ts] = value.split('|');
  return msgId && ts && to ? { msgId, ts: Number(ts), to, digest, seq: Number(seq) || 0, seqAt: Number(seqAt) } : undefined;
}

function seenBefore(previous: Omit<Recorded, 'seqAt'>, candidate: Candidate): Reservation {
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
  resolve(r: Reservation): void;
  reject(err: Error): void;
}

export function createIdempotency(deps: IdempotencyDeps): Idempotency {
  const epochKey = `${deps.keyPrefix}idem:epoch`;
  const reserveScript = scriptRunner(deps.redis, RESERVE);
  const seedScript = scriptRunner(deps.redis, SEED);

  // Reservations queued together share one script call: one Redis round trip (and one command
  // timeout) per flush instead of one per message; the pacer decides when a flush goes out.
  let queue: Pending[] = [];
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
        await seedScript({
          keys: part.flatMap((b) => [positionKey(b.conversation), blockEndKey(b.conversation)]),
          arguments: part.flatMap((b, k) => [String(upTo[k]), String(b.count)]),
        });
        for (const b of part) b.done.resolve();
      } catch (err) {
        for (const b of part) b.done.reject(err);
      }
    }
  }
  const positionKey = (conversation: string) => `${deps.keyPrefix}pos:${conversation}`;
  const blockEndKey = (conversation: string) => `${deps.keyPrefix}pos-end:${conversation}`;

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
    await deps.redis.eval("return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])", { keys: [p.key], arguments: [`${encode({ ...moved, conversation })}|${upTo}|${now}`, String(deps.windowMs)] });
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
      await deps.redis.eval("return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])", { keys: [p.key], arguments: [`${encode({ ...first, conversation: p.candidate.conversation })}|${first.seq}`, String(deps.windowMs)] }).catch(() => undefined);
      return seenBefore(first, p.candidate);
    }
    return fresh(p.candidate, seq);
  }

  async function run(batch: Pending[]): Promise<void> {
    const now = clock();
    let reply: string[];
    try {
      reply = (await reserveScript({
        keys: [
          epochKey,
          ...batch.map((p) => p.key),
          ...batch.map((p) => `${deps.keyPrefix}idem-last:${p.sender}`),
          ...batch.map((p) => positionKey(p.candidate.conversation)),
          ...batch.map((p) => blockEndKey(p.candidate.conversation)),
        ],
        arguments: [String(deps.windowMs), String(now), String(LAST_ID_TTL_MS), String(POSITION_LOW_WATER), ...batch.map((p) => encode(p.candidate)), ...batch.map((p) => p.candidate.msgId)],
      })) as string[];
    } catch (err) {
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
      return;
    }
    const refusedCalls = refusals.end();
    if (refusedCalls > 0) deps.log.info({ refusedCalls }, 'Redis takes idempotency reservations again');
    const youngStore = now - Number(reply[0]) < deps.windowMs;
    const waiting = new Map<string, Pending[]>();
    for (let i = 0; i < batch.length; i++) {
      const p = batch[i] as Pending;
      const out = reply[i + 1] ?? '';
      // '?' and '#' start no record: a record starts with its msgId
      const kind = out.charAt(0) === '#' ? out.slice(0, 2) : out.charAt(0);
      if (kind === '?') {
        const list = waiting.get(p.candidate.conversation);
        if (list) list.push(p);
        else waiting.set(p.candidate.conversation, [p]);
        continue;
      }
      if (kind === '#N' || kind === '#L') {
        const bar = out.indexOf('|');
        const seq = Number(out.slice(2, bar));
        const raised = out.slice(bar + 1);
        if (raised) p.candidate = { ...p.candidate, msgId: raised };
        if (kind === '#L') void nextBlock(p.candidate.conversation, 0).catch((err: unknown) => deps.log.debug({ err: errorMessage(err) }, 'next block of positions not reserved ahead; asked again when needed'));
        if (youngStore) checkStored(p, seq).then(p.resolve, p.reject);
        else p.resolve(fresh(p.candidate, seq));
        continue;
      }
      const previous = decode(out);
      if (!previous) p.reject(new UnavailableError('idempotency store answered with an unreadable record; retry with the same id'));
      else if (previous.seq === 0) positionOfStored(p, previous).then(p.resolve, p.reject);
      else if (deps.emptyAfterMs !== undefined && now - previous.seqAt > deps.emptyAfterMs) repositionIfUnstored(p, previous, now).then(p.resolve, p.reject);
      else p.resolve(seenBefore(previous, p.candidate));
    }
    // No position left in these conversations' blocks: once storage handed out the next ones, again.
    for (const [conversation, list] of waiting) {
      nextBlock(conversation, list.length).then(
        () => list.forEach(enqueue),
        (err: unknown) => {
          // The client learns what to do; where storage runs goes to the log (the JSON client logs it).
          const failure = new UnavailableError('message positions unavailable (storage does not answer); retry with the same id', { cause: err });
          if (positionFailures.shouldLog()) deps.log.warn({ err: errorMessage(err), failedSoFar: positionFailures.count }, 'storage hands out no positions (see err): sends into conversations without positions left are answered unavailable');
          for (const p of list) p.reject(failure);
        },
      );
    }
  }

  const scheduleFlush = (deps.pacer ?? eachTick)(flush);

  function flush(): void {
    const all = queue;
    queue = [];
    for (let i = 0; i < all.length; i += MAX_KEYS_PER_CALL) void run(all.slice(i, i + MAX_KEYS_PER_CALL));
  }

  function enqueue(p: Pending): void {
    queue.push(p);
    scheduleFlush();
  }

  return {
    async currentPosition(conversation) {
      const value = await deps.redis.eval("return redis.call('GET', KEYS[1])", { keys: [positionKey(conversation)], arguments: [] });
      return typeof value === 'string' ? Number(value) : null;
    },
    reserve(sender, clientId, candidate) {
      return new Promise<Reservation>((resolve, reject) => enqueue({ key: `${deps.keyPrefix}idem:${sender}:${clientId}`, sender, clientId, candidate, resolve, reject }));
    },
    async ensureEpoch(newestStoredTs) {
      const exists = (await deps.redis.eval("return redis.call('EXISTS', KEYS[1])", { keys: [epochKey], arguments: [] })) === 1;
      if (exists) return true;
      // Storage unknown: record nothing yet. Until an epoch is recorded the store counts as young
      // (each miss is checked against storage), and the next heartbeat asks again; recording "now"
      // instead would keep every send paying that check for a whole window.
      const epoch = (await newestStoredTs()) ?? 0;
      const set = await deps.redis.eval("return redis.call('SET', KEYS[1], ARGV[1], 'NX')", { keys: [epochKey], arguments: [String(epoch)] });
      if (set) deps.log.info({ epoch }, 'idempotency store had no epoch (new or emptied Redis); recorded one');
      return false;
    },
  };
}

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
 */
import { createHash, hash } from 'node:crypto';
import { ErrorReply } from 'redis';
import { UnavailableError, createLogThrottle, errorMessage, type WireMessage, type Logger } from '@simplechat/shared';
import { eachTick, type Pacer } from './pacer';

export interface Candidate {
  msgId: string;
  ts: number;
  to: string;
  /** bodyDigest of the body */
  digest: string;
}

export interface Reservation extends Candidate {
  /** false: this (sender, id) was seen before; msgId/ts/to are the first attempt's */
  first: boolean;
  /** the body is the first attempt's (always when first; unknown counts as the same) */
  sameBody: boolean;
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
  /** the stored message of a key, when the key store may have forgotten it */
  lookupStored(sender: string, clientId: string): Promise<WireMessage | null>;
  log: Logger;
  /** when queued reservations go out (default: the next tick) */
  pacer?: Pacer;
  /** clock (tests) */
  now?: () => number;
}

export interface Idempotency {
  reserve(sender: string, clientId: string, candidate: Candidate): Promise<Reservation>;
  /** Records the key store's epoch if it has none; returns whether it had one. Rejects (recording nothing) when storage cannot tell. */
  ensureEpoch(newestStoredTs: () => Promise<number | null>): Promise<boolean>;
}

// KEYS[1] epoch key, KEYS[2..n+1] idempotency keys, KEYS[n+2..2n+1] the senders' last-msgId keys;
// ARGV[1] ttl ms, ARGV[2] now ms, ARGV[3] last-msgId ttl ms, ARGV[4..n+3] values (msgId|ts|to|digest),
// ARGV[n+4..2n+3] their msgIds. Returns { epoch, then per key: its previous value, or '' (new,
// msgId kept), or '+' .. msgId (new, msgId raised) }. Keys repeated within one call see each other
// in order, so two sends of the same id in one tick still get one msgId.
// A new msgId must sort after the sender's last one, whichever instance minted that: instances'
// clocks differ (across hosts by milliseconds or more), so a lower one is raised. Not to the last
// + 1: an instance's monotonic ULIDs count up by one within a millisecond, so that id may be
// minted there next for another message. The raised id is the last one's first 16 characters (the
// time and 30 bits of its randomness) + 1, then the minted id's own 10 random characters: it sorts
// after the last one, and no instance counts up to it within a millisecond. One sender's msgIds
// thus sort in the order Redis accepted them, as PROTOCOL.md requires. The usual path is two
// commands per key.
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
local n = (#KEYS - 1) / 2
local epoch = redis.call('GET', KEYS[1])
if not epoch then epoch = ARGV[2] end
local out = { epoch }
for i = 1, n do
  local old = redis.call('SET', KEYS[i + 1], ARGV[i + 3], 'NX', 'PX', ARGV[1], 'GET')
  if old then
    out[i + 1] = old
  else
    out[i + 1] = ''
    local msgId = ARGV[n + 3 + i]
    local last = redis.call('SET', KEYS[n + 1 + i], msgId, 'PX', ARGV[3], 'GET')
    if last and msgId <= last then
      local raised = nil
      if #msgId == #last and #last > 16 then
        local head = after(string.sub(last, 1, 16))
        if head then raised = head .. string.sub(msgId, 17) end
      end
      if raised then
        redis.call('SET', KEYS[n + 1 + i], raised, 'PX', ARGV[3])
        redis.call('SET', KEYS[i + 1], raised .. string.sub(ARGV[i + 3], #msgId + 1), 'PX', ARGV[1])
        out[i + 1] = '+' .. raised
      else
        redis.call('SET', KEYS[n + 1 + i], last, 'PX', ARGV[3])
      end
    end
  end
end
return out`;

/** How long a sender's last msgId is kept for ordering: far longer than any clock difference. */
const LAST_ID_TTL_MS = 60_000;

const encode = (c: Candidate) => `${c.msgId}|${c.ts}|${c.to}|${c.digest}`;
/** A record; one written before digests were kept has none ('' here). */
function decode(value: string): Candidate | undefined {
  const [msgId, ts, to, digest = ''] = value.split('|');
  return msgId && ts && to ? { msgId, ts: Number(ts), to, digest } : undefined;
}

function seenBefore(previous: Candidate, candidate: Candidate): Reservation {
  return { ...previous, first: false, sameBody: previous.digest === '' || previous.digest === candidate.digest };
}

const RESERVE_SHA = createHash('sha1').update(RESERVE).digest('hex');

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
  // EVALSHA keeps the script text off the wire; after a Redis restart the script cache is empty once.
  const reserveScript = (options: { keys: string[]; arguments: string[] }) =>
    deps.redis.evalSha(RESERVE_SHA, options).catch((err: unknown) => {
      if (err instanceof Error && err.message.startsWith('NOSCRIPT')) return deps.redis.eval(RESERVE, options);
      throw err;
    });

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

  /** A miss while the store is younger than the window: the key may have been lost; ask storage. */
  async function checkStored(p: Pending): Promise<Reservation> {
    let stored: WireMessage | null = null;
    if (clock() < skipStorageUntil) return { ...p.candidate, first: true, sameBody: true };
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
      const first = { msgId: stored.msgId, ts: stored.ts, to: stored.to, digest: bodyDigest(stored.body) };
      await deps.redis.eval("return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])", { keys: [p.key], arguments: [encode(first), String(deps.windowMs)] }).catch(() => undefined);
      return seenBefore(first, p.candidate);
    }
    return { ...p.candidate, first: true, sameBody: true };
  }

  async function run(batch: Pending[]): Promise<void> {
    const now = clock();
    let reply: string[];
    try {
      reply = (await reserveScript({
        keys: [epochKey, ...batch.map((p) => p.key), ...batch.map((p) => `${deps.keyPrefix}idem-last:${p.sender}`)],
        arguments: [String(deps.windowMs), String(now), String(LAST_ID_TTL_MS), ...batch.map((p) => encode(p.candidate)), ...batch.map((p) => p.candidate.msgId)],
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
    for (let i = 0; i < batch.length; i++) {
      const p = batch[i] as Pending;
      const old = reply[i + 1];
      if (old?.startsWith('+')) p.candidate = { ...p.candidate, msgId: old.slice(1) };
      const previous = old && !old.startsWith('+') ? decode(old) : undefined;
      if (previous) p.resolve(seenBefore(previous, p.candidate));
      else if (youngStore) checkStored(p).then(p.resolve, p.reject);
      else p.resolve({ ...p.candidate, first: true, sameBody: true });
    }
  }

  const scheduleFlush = (deps.pacer ?? eachTick)(flush);

  function flush(): void {
    const all = queue;
    queue = [];
    for (let i = 0; i < all.length; i += MAX_KEYS_PER_CALL) void run(all.slice(i, i + MAX_KEYS_PER_CALL));
  }

  return {
    reserve(sender, clientId, candidate) {
      return new Promise<Reservation>((resolve, reject) => {
        queue.push({ key: `${deps.keyPrefix}idem:${sender}:${clientId}`, sender, clientId, candidate, resolve, reject });
        scheduleFlush();
      });
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

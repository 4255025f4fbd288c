/**
 * Idempotency across instances: (sender, client id) -> first msgId, ts and
 * recipient, in Redis with the window as TTL. The same script reads the key
 * store's epoch (when it started holding keys): while the store is younger
 * than the window it may have lost keys (the development Redis keeps nothing
 * on disk), so a miss is checked against storage before a new msgId is used.
 * The epoch is written by ensureEpoch (from the heartbeat loop) as the time of
 * the newest stored message: keys older than that cannot have been lost, so a
 * fresh cluster, or one whose store forgot nothing recent, skips the check.
 */
import { createHash } from 'node:crypto';
import { UnavailableError, errorMessage, type WireMessage, type Logger } from '@simplechat/shared';

export interface Candidate {
  msgId: string;
  ts: number;
  to: string;
}

export interface Reservation extends Candidate {
  /** false: this (sender, id) was seen before; msgId/ts/to are the first attempt's */
  first: boolean;
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
}

export interface Idempotency {
  reserve(sender: string, clientId: string, candidate: Candidate): Promise<Reservation>;
  /** Records the key store's epoch if it has none; returns whether it had one. */
  ensureEpoch(newestStoredTs: () => Promise<number | null>): Promise<boolean>;
}

// KEYS[1] key, KEYS[2] epoch key; ARGV[1] value, ARGV[2] ttl ms, ARGV[3] now ms
const RESERVE = `
local epoch = redis.call('GET', KEYS[2])
if not epoch then epoch = ARGV[3] end
local old = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2], 'GET')
if old == false then old = '' end
return { old, epoch }`;

const encode = (c: Candidate) => `${c.msgId}|${c.ts}|${c.to}`;
function decode(value: string): Candidate | undefined {
  const [msgId, ts, to] = value.split('|');
  return msgId && ts && to ? { msgId, ts: Number(ts), to } : undefined;
}

const RESERVE_SHA = createHash('sha1').update(RESERVE).digest('hex');

export function createIdempotency(deps: IdempotencyDeps): Idempotency {
  const epochKey = `${deps.keyPrefix}idem:epoch`;
  // EVALSHA keeps the script text off the wire; after a Redis restart the script cache is empty once.
  const reserveScript = (options: { keys: string[]; arguments: string[] }) =>
    deps.redis.evalSha(RESERVE_SHA, options).catch((err: unknown) => {
      if (err instanceof Error && err.message.startsWith('NOSCRIPT')) return deps.redis.eval(RESERVE, options);
      throw err;
    });
  return {
    async reserve(sender, clientId, candidate) {
      const key = `${deps.keyPrefix}idem:${sender}:${clientId}`;
      const now = Date.now();
      let reply: unknown;
      try {
        reply = await reserveScript({ keys: [key, epochKey], arguments: [encode(candidate), String(deps.windowMs), String(now)] });
      } catch (err) {
        throw new UnavailableError(`idempotency store unavailable (${errorMessage(err)}); retry with the same id`, { cause: err });
      }
      const [old, epoch] = reply as [string, string];
      const previous = old ? decode(old) : undefined;
      if (previous) return { ...previous, first: false };
      if (now - Number(epoch) < deps.windowMs) {
        // The store is younger than the window: it may have lost this key.
        let stored: WireMessage | null = null;
        try {
          stored = await deps.lookupStored(sender, clientId);
        } catch (err) {
          // Storage down as well: stay available. Storage keeps (sender, id) unique, so at worst
          // a retry of a forgotten key is acked with a new msgId while the first copy is stored.
          deps.log.debug({ err: errorMessage(err) }, 'idempotency: storage check failed; using a new msgId');
        }
        if (stored && stored.msgId !== candidate.msgId) {
          const first = { msgId: stored.msgId, ts: stored.ts, to: stored.to };
          await deps.redis.eval("return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])", { keys: [key], arguments: [encode(first), String(deps.windowMs)] }).catch(() => undefined);
          return { ...first, first: false };
        }
      }
      return { ...candidate, first: true };
    },
    async ensureEpoch(newestStoredTs) {
      const exists = (await deps.redis.eval("return redis.call('EXISTS', KEYS[1])", { keys: [epochKey], arguments: [] })) === 1;
      if (exists) return true;
      let epoch: number;
      try {
        epoch = (await newestStoredTs()) ?? 0;
      } catch {
        epoch = Date.now(); // storage unknown: assume keys may have been lost just now
      }
      const set = await deps.redis.eval("return redis.call('SET', KEYS[1], ARGV[1], 'NX')", { keys: [epochKey], arguments: [String(epoch)] });
      if (set) deps.log.info({ epoch }, 'idempotency store had no epoch (new or emptied Redis); recorded one');
      return false;
    },
  };
}

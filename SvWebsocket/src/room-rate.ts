/**
 * ROOM_RATE_LIMIT_PER_SEC, per room across every gateway. A room's token
 * bucket (the limit per second, a burst as large) lives in Redis, in the
 * room's slot. A gateway takes tokens from it in grants (a tenth of the limit,
 * or as many as sends are waiting there) and spends them itself, so a busy
 * room costs a gateway about ten Redis calls a second, not one per message.
 * A grant lapses after a second: the gateways together accept at most the
 * burst plus the limit per second, plus one grant each held from before.
 */
import { UnavailableError, errorMessage, type Redis } from '@simplechat/shared';
import { scriptRunner } from './redis-script';

export interface RoomRateLimiter {
  /** 0 when the room takes a send now, else the ms until it can */
  take(room: string): number | Promise<number>;
  close(): void;
}

export interface RoomRateDeps {
  redis: Pick<Redis, 'eval' | 'evalSha' | 'tag'>;
  keyPrefix: string;
  ratePerSec: number;
}

/** what a gateway holds of one room's bucket */
interface Grant {
  tokens: number;
  expires: number;
  /** the room's bucket was empty: no send until then, without asking Redis again */
  deniedUntil: number;
  /** sends waiting for the grant being fetched */
  waiters: number;
  fetching: Promise<void> | undefined;
}

const GRANT_TTL_MS = 1000;
const SWEEP_MS = 10_000;

/**
 * Lua: take up to ARGV[1] tokens from the bucket at KEYS[1] (ARGV[2] per second, as many at
 * most), timed by Redis's clock. Returns {granted, ms until a token is there once none is left}.
 */
const LUA_TAKE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 't', 'n')
local tokens = rate
if b[1] and b[2] then tokens = math.min(rate, tonumber(b[2]) + math.max(0, now - tonumber(b[1])) * rate / 1000) end
local grant = math.max(0, math.min(tonumber(ARGV[1]), math.floor(tokens)))
tokens = tokens - grant
redis.call('HSET', KEYS[1], 't', now, 'n', string.format('%.6f', tokens))
redis.call('PEXPIRE', KEYS[1], math.ceil((rate - tokens) * 1000 / rate) + 1000)
local wait = 0
if tokens < 1 then wait = math.ceil((1 - tokens) * 1000 / rate) end
return {grant, wait}
`;

export function createRoomRateLimiter(deps: RoomRateDeps): RoomRateLimiter {
  const run = scriptRunner(deps.redis, LUA_TAKE);
  const chunk = Math.max(1, Math.floor(deps.ratePerSec / 10));
  const grants = new Map<string, Grant>();
  const sweeper = setInterval(() => {
    const now = Date.now();
    for (const [room, g] of grants) if (!g.fetching && g.waiters === 0 && g.expires <= now && g.deniedUntil <= now) grants.delete(room);
  }, SWEEP_MS);
  sweeper.unref();

  function spend(g: Grant, now: number): boolean {
    if (g.tokens <= 0 || now >= g.expires) return false;
    g.tokens--;
    return true;
  }

  async function fetchGrant(room: string, g: Grant): Promise<void> {
    const want = Math.max(chunk, g.waiters);
    let reply: unknown;
    try {
      reply = await run({ keys: [`${deps.keyPrefix}room-rate:${deps.redis.tag(room)}${room}`], arguments: [String(want), String(deps.ratePerSec)] });
    } catch (err) {
      throw new UnavailableError(`the room's rate limit cannot be checked (Redis: ${errorMessage(err)}); retry with the same id`, { cause: err });
    }
    const [granted, wait] = reply as [number, number];
    const now = Date.now();
    g.tokens = granted;
    g.expires = now + GRANT_TTL_MS;
    if (granted < want) g.deniedUntil = now + Math.max(1, wait);
  }

  async function waitForGrant(room: string, g: Grant): Promise<number> {
    g.waiters++;
    try {
      for (;;) {
        const now = Date.now();
        if (spend(g, now)) return 0;
        if (g.deniedUntil > now) return g.deniedUntil - now;
        g.fetching ??= fetchGrant(room, g).finally(() => (g.fetching = undefined));
        await g.fetching;
      }
    } finally {
      g.waiters--;
    }
  }

  return {
    take(room) {
      let g = grants.get(room);
      if (!g) grants.set(room, (g = { tokens: 0, expires: 0, deniedUntil: 0, waiters: 0, fetching: undefined }));
      return spend(g, Date.now()) ? 0 : waitForGrant(room, g);
    },
    close() {
      clearInterval(sweeper);
    },
  };
}

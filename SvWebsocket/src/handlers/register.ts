/**
 * `register`: the token names the user; the user's claim in SvDiscover is made
 * (or awaited) before `registered`, so that from then on every message for the
 * user reaches this connection. A second register gets `bad_request`.
 */
import { CloseCode, ErrorCode, type ServerFrame } from '@simplechat/shared';
import { idOf, type Handler } from './context';

const SYNC_HINT = JSON.stringify({ type: 'sync.hint' } satisfies ServerFrame);

export const register: Handler<'register'> = async (ctx, session, frame) => {
  if (session.phase !== 'new') return session.sendError(ErrorCode.BAD_REQUEST, 'already registered; open a new connection to change user', frame.id);
  const { limits, metrics } = ctx;
  session.phase = 'registering';
  const verified = await ctx.auth.verify(frame.token);
  if (session.closed) return;
  if (!verified.ok) {
    metrics?.connectionRefused('unauthorized');
    session.sendError(ErrorCode.UNAUTHORIZED, verified.reason, frame.id);
    session.close(CloseCode.UNAUTHORIZED, 'unauthorized');
    return;
  }
  const { userId, exp } = verified.identity;
  if ((ctx.registry.of(userId)?.size ?? 0) >= limits.maxConnectionsPerUser) {
    metrics?.connectionRefused('user_limit');
    session.sendError(ErrorCode.RATE_LIMITED, `too many connections for user ${userId} on this instance (limit ${limits.maxConnectionsPerUser}); close some tabs`, frame.id, { retryAfterMs: 5000 });
    session.close(CloseCode.TOO_MANY_CONNECTIONS, 'too many connections');
    return;
  }
  if (session.registerTimer) clearTimeout(session.registerTimer);
  session.userId = userId;
  session.exp = exp;
  session.bucket = ctx.bucketFor(userId);
  session.holdDeliveries();
  ctx.registry.add(session);
  const isFirstHere = ctx.registry.of(userId)?.size === 1;
  // Claim before `registered`: from then on other instances route this user's messages here.
  const claimed = ctx.claim(userId, isFirstHere);
  const cursorOf = ctx.readCursor();
  const isClaimed = await claimed;
  const cursor = await cursorOf;
  if (session.closed) return;
  session.send({ type: 'registered', ...idOf(frame), userId, instanceId: limits.instanceId, ...(cursor ? { cursor } : {}), syncIntervalMs: limits.syncIntervalMs });
  session.phase = 'registered';
  session.releaseDeliveries();
  if (!isClaimed) session.write(SYNC_HINT);
  else if (isFirstHere && limits.discoveryCacheMs > 0) {
    // Instances that looked this user up just before the claim may skip it until their cache
    // entry expires; one sync after that picks up anything they sent meanwhile.
    setTimeout(() => session.deliver(SYNC_HINT), limits.discoveryCacheMs + 100).unref();
  }
  ctx.armExpiry(session);
  ctx.log.debug({ connId: session.id, userId }, 'registered');
  ctx.replayQueued(session);
};

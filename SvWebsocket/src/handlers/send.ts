/**
 * `send`: rate limits (the sender's, the instance's, and the room's across
 * every gateway), then acceptance (accept.ts); the ack waits for the
 * broker's confirm.
 */
import { ErrorCode } from '@simplechat/shared';
import { acceptMessage } from '../accept';
import type { Handler } from './context';

/** retry hint of a send shed because the instance is overloaded */
const OVERLOAD_RETRY_MS = 250;

export const send: Handler<'send'> = async (ctx, session, frame) => {
  const receivedAt = performance.now();
  const wait = session.bucket?.take() ?? 0;
  if (wait > 0) {
    ctx.metrics?.rateLimited();
    session.sendError(ErrorCode.RATE_LIMITED, `sending too fast (limit ${ctx.limits.rateLimitPerSec}/s); retry after ${wait} ms with the same id`, frame.id, { retryAfterMs: wait });
    return;
  }
  if (ctx.sends.inProgress >= ctx.limits.maxPendingSends) {
    // Overloaded: shed now, cheaply, rather than queue sends into confirm timeouts.
    ctx.metrics?.overloaded();
    session.sendError(ErrorCode.RATE_LIMITED, `this instance is overloaded (${ctx.sends.inProgress} sends in progress); retry after ${OVERLOAD_RETRY_MS} ms with the same id`, frame.id, { retryAfterMs: OVERLOAD_RETRY_MS });
    return;
  }
  if (frame.room !== undefined) {
    // Mostly answered from this gateway's grant at once; only a new grant waits for Redis.
    const taken = ctx.roomRate.take(frame.room);
    const roomWait = typeof taken === 'number' ? taken : await taken;
    if (roomWait > 0) {
      ctx.metrics?.rateLimited();
      session.sendError(ErrorCode.RATE_LIMITED, `room ${frame.room} takes at most ${ctx.limits.roomRateLimitPerSec} messages/s (ROOM_RATE_LIMIT_PER_SEC); retry after ${roomWait} ms with the same id`, frame.id, { retryAfterMs: roomWait });
      return;
    }
  }
  ctx.sends.inProgress++;
  try {
    const res = await acceptMessage(ctx, { from: session.userId as string, clientId: frame.id, to: frame.to, room: frame.room, body: frame.body, sender: session });
    session.send({ type: 'ack', id: frame.id, msgId: res.msgId, ts: res.ts, seq: res.seq });
    ctx.metrics?.acked((performance.now() - receivedAt) / 1000);
  } finally {
    ctx.sends.inProgress--;
  }
};

/**
 * `send`: rate limits, then acceptance: the idempotency reservation gives the
 * message its msgId (the first one's, for a resend), live delivery runs beside
 * the publish, and the ack waits for the broker's confirm.
 */
import { ErrorCode, conversationKey, directConversation, toWireMessage, type Envelope, type ServerFrame } from '@simplechat/shared';
import { audienceOf } from '../audience';
import { bodyDigest } from '../idempotency';
import type { Session } from '../session';
import type { GatewayContext, Handler } from './context';

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
  ctx.sends.inProgress++;
  try {
    await accept(ctx, session, frame.id, frame.to, frame.body);
    ctx.metrics?.acked((performance.now() - receivedAt) / 1000);
  } finally {
    ctx.sends.inProgress--;
  }
};

async function accept(ctx: GatewayContext, session: Session, clientId: string, to: string, body: string): Promise<void> {
  const from = session.userId as string;
  const now = Date.now();
  const conversation = directConversation(from, to);
  const res = await ctx.idempotency.reserve(from, clientId, { msgId: ctx.nextId(now), ts: now, to, digest: bodyDigest(body), conversation: conversationKey(conversation) });
  const envelope: Envelope = { msgId: res.msgId, clientId, from, conversation: res.to === to ? conversation : directConversation(from, res.to), seq: res.seq, body, ts: res.ts };
  // Live delivery runs beside the publish; a retry is delivered again (clients dedupe by msgId).
  // A resend of the id with another body is the first message (PROTOCOL.md): its body is not
  // delivered. It is still published under the first msgId: storage keeps the first copy when
  // that was queued (it is ahead in the queue; the insert skips a known id), and this one only
  // when the first attempt never reached the broker, so that an ack always means stored.
  if (res.sameBody) {
    const audience = audienceOf(envelope.conversation, from);
    const message = JSON.stringify({ type: 'message', ...toWireMessage(envelope) } satisfies ServerFrame);
    ctx.router.route(message, audience.users, audience.skipsSender ? session : undefined);
  }
  await ctx.publisher.publish(envelope);
  session.send({ type: 'ack', id: clientId, msgId: res.msgId, ts: res.ts, seq: res.seq });
}

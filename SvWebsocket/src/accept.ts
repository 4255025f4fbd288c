/**
 * Accepting a message, from a client's `send` or the server API: the
 * idempotency reservation gives it its msgId and position (the first
 * attempt's, for a repeat), live delivery to its audience runs beside the
 * publish, and it is accepted once the broker confirmed it.
 */
import { conversationKey, directConversation, roomConversation, toWireMessage, type Conversation, type Envelope, type ServerFrame } from '@simplechat/shared';
import { directAudience, roomAudience, type Audience } from './audience';
import { bodyDigest, targetOf, type Idempotency } from './idempotency';
import type { Publisher } from './publisher';
import type { RoomState } from './membership';
import type { Rooms } from './rooms';
import type { Router } from './router';
import type { Session } from './session';

export interface AcceptDeps {
  idempotency: Pick<Idempotency, 'reserve'>;
  publisher: Pick<Publisher, 'publish'>;
  router: Pick<Router, 'route'>;
  rooms: Pick<Rooms, 'target' | 'forMember'>;
  nextId(now: number): string;
}

export interface MessageRequest {
  from: string;
  clientId: string;
  /** exactly one of `to` and `room` */
  to?: string | undefined;
  room?: string | undefined;
  body: string;
  /** the server API may post into any room; a client only into its own */
  isApi?: boolean;
  /** the sending connection: it has the ack, not the message */
  sender?: Session | undefined;
}

export interface Accepted {
  msgId: string;
  ts: number;
  seq: number;
  /** a repeat of the key whose recipient or body differs from the first attempt's */
  isOtherContent: boolean;
}

/** The conversation of a target as the idempotency record keeps it (a user id, or '#' and a room id). */
function conversationOf(from: string, target: string): Conversation {
  return target.startsWith('#') ? roomConversation(target.slice(1)) : directConversation(from, target);
}

export async function acceptMessage(deps: AcceptDeps, req: MessageRequest): Promise<Accepted> {
  const { from } = req;
  let room: RoomState | undefined;
  if (req.room !== undefined) {
    // The server API posts as any user, member or not.
    room = req.isApi ? await deps.rooms.target(req.room) : await deps.rooms.forMember(req.room, from, 'may send to it');
  }
  const target = targetOf(req);
  const conversation = conversationOf(from, target);
  const now = Date.now();
  const res = await deps.idempotency.reserve(from, req.clientId, { msgId: deps.nextId(now), ts: now, to: target, digest: bodyDigest(req.body), conversation: conversationKey(conversation) });
  const isSameTarget = res.to === target;
  const envelope: Envelope = { msgId: res.msgId, clientId: req.clientId, from, conversation: isSameTarget ? conversation : conversationOf(from, res.to), seq: res.seq, body: req.body, ts: res.ts };
  // Live delivery runs beside the publish; a retry is delivered again (clients dedupe by msgId).
  // A resend of the id with another body is the first message (PROTOCOL.md): its body is not
  // delivered. It is still published under the first msgId: storage keeps the first copy when
  // that was queued (it is ahead in the queue; the insert skips a known id), and this one only
  // when the first attempt never reached the broker, so that an ack always means stored.
  if (res.sameBody) {
    const c = envelope.conversation;
    // A repeat goes to the first attempt's conversation, which may be another room than this one's.
    const audience: Audience = c.kind === 'direct' ? directAudience(c, from) : roomAudience(room?.room === c.id ? room : await deps.rooms.target(c.id));
    const message = JSON.stringify({ type: 'message', ...toWireMessage(envelope) } satisfies ServerFrame);
    deps.router.route(message, audience.users, audience.skipsSender ? req.sender : undefined);
  }
  await deps.publisher.publish(envelope);
  return { msgId: res.msgId, ts: res.ts, seq: res.seq, isOtherContent: !res.first && (!isSameTarget || !res.sameBody) };
}

/**
 * One message on every hop: accepted by a gateway, routed live, queued for
 * storage, stored. Wire frames and rows are made from it at the edges only.
 */
import { peerOf, type Conversation } from './conversation';
import type { WireMessage } from './protocol';

export interface Envelope {
  /** the server's id (ULID) */
  msgId: string;
  /** the sender's idempotency key (`id` of its send frame) */
  clientId: string;
  from: string;
  conversation: Conversation;
  /** position in the conversation (0 only for a message queued before positions existed: storage numbers it) */
  seq: number;
  body: string;
  /** ms since the epoch, assigned at acceptance */
  ts: number;
}

/** The message as clients see it (`message` frames, history and sync entries). */
export function toWireMessage(e: Envelope): WireMessage {
  const c = e.conversation;
  if (c.kind === 'direct') return { msgId: e.msgId, from: e.from, to: peerOf(c, e.from), body: e.body, ts: e.ts, seq: e.seq };
  return { msgId: e.msgId, from: e.from, room: c.id, body: e.body, ts: e.ts, seq: e.seq };
}

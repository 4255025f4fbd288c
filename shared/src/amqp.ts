/**
 * AMQP topology and the queue payload. SvWebsocket publishes batches of
 * accepted messages; SvPersist consumes them; unstorable ones are dead-lettered.
 */
import { z } from 'zod';
import { ROOM_ID_RE, USER_ID_RE } from './protocol';
import { directConversation, peerOf, roomConversation } from './conversation';
import type { Envelope } from './envelope';
import type { Receipt } from './receipt';
import { RECEIPT_KINDS, type ReceiptKind } from './wire';
import { isLoginRefused } from './errors';

export interface Topology {
  exchange: string;
  queue: string;
  deadLetterQueue: string;
}

export function topology(prefix: string): Topology {
  return { exchange: `${prefix}messages`, queue: `${prefix}messages`, deadLetterQueue: `${prefix}messages.dead` };
}

/** The subset of an amqplib channel that topology assertion needs. */
export interface TopologyChannel {
  assertExchange(exchange: string, type: string, options?: { durable?: boolean }): Promise<unknown>;
  assertQueue(queue: string, options?: { durable?: boolean; arguments?: Record<string, unknown> }): Promise<unknown>;
  bindQueue(queue: string, source: string, pattern: string): Promise<unknown>;
}

/** The log line of a failed connection to the broker: a refused login is not "cannot reach". */
export function amqpConnectFailure(host: string, err: unknown): string {
  return isLoginRefused(err) ? `RabbitMQ at ${host} refused the login; check the user and password in AMQP_URL; retrying` : `cannot reach RabbitMQ at ${host}; retrying`;
}

export async function assertTopology(channel: TopologyChannel, t: Topology): Promise<void> {
  await channel.assertExchange(t.exchange, 'direct', { durable: true });
  // Durable queue + persistent messages: a publisher confirm means the broker has the message on disk.
  await channel.assertQueue(t.queue, { durable: true });
  await channel.bindQueue(t.queue, t.exchange, ROUTING_KEY);
  await channel.assertQueue(t.deadLetterQueue, { durable: true });
}

export const ROUTING_KEY = 'store';

/**
 * The queue payload: a batch of envelopes, each with its conversation as on the wire (`to` for a
 * direct one), and (v3) receipts. A batch without receipts is v2, as before receipts existed; v1
 * batches (`id` for the msgId, before envelopes) still decode, so messages queued by an older
 * gateway are stored after an upgrade. An older SvPersist refuses v3 batches to the dead-letter
 * queue (nothing is lost): upgrade SvPersist before the gateways.
 */
export type QueuePayload = { v: 2; messages: QueuedItem[] } | { v: 3; messages: QueuedItem[]; receipts: QueuedReceipt[] };

/** A receipt as it travels in the queue: `to` is the other side of a direct conversation. */
export interface QueuedReceipt {
  user: string;
  to?: string;
  room?: string;
  kind: ReceiptKind;
  upTo: number;
  ts: number;
}

/** An envelope as it travels in the queue. */
export interface QueuedItem {
  msgId: string;
  clientId: string;
  from: string;
  /** exactly one of `to` (a direct message) and `room` */
  to?: string;
  room?: string;
  seq: number;
  body: string;
  ts: number;
}

const queuedItemSchema = z.object({
  msgId: z.string().min(1).max(64),
  clientId: z.string().min(1).max(64),
  from: z.string().regex(USER_ID_RE),
  to: z.string().regex(USER_ID_RE).optional(),
  room: z.string().regex(ROOM_ID_RE).optional(),
  // 0: no position yet (storage numbers it)
  seq: z.number().int().nonnegative(),
  body: z.string().min(1),
  ts: z.number().int().nonnegative(),
});
const v1ItemSchema = z.object({
  id: z.string().min(1).max(64),
  from: z.string().regex(USER_ID_RE),
  to: z.string().regex(USER_ID_RE),
  body: z.string().min(1),
  ts: z.number().int().nonnegative(),
  clientId: z.string().min(1).max(64),
});

const queuedReceiptSchema = z.object({
  user: z.string().regex(USER_ID_RE),
  to: z.string().regex(USER_ID_RE).optional(),
  room: z.string().regex(ROOM_ID_RE).optional(),
  kind: z.enum(RECEIPT_KINDS as [ReceiptKind, ...ReceiptKind[]]),
  upTo: z.number().int().nonnegative(),
  ts: z.number().int().nonnegative(),
});

// Built once: a zod schema constructed per call is compiled per call.
const payloadShape = z.object({ v: z.union([z.literal(1), z.literal(2), z.literal(3)]), messages: z.array(z.unknown()), receipts: z.array(z.unknown()).optional() });

function toQueued(e: Envelope): QueuedItem {
  const c = e.conversation;
  const target = c.kind === 'direct' ? { to: peerOf(c, e.from) } : { room: c.id };
  return { msgId: e.msgId, clientId: e.clientId, from: e.from, ...target, seq: e.seq, body: e.body, ts: e.ts };
}

/** undefined: neither or both of `to` and `room` */
function fromQueued(q: QueuedItem): Envelope | undefined {
  const conversation = q.to !== undefined && q.room === undefined ? directConversation(q.from, q.to) : q.room !== undefined && q.to === undefined ? roomConversation(q.room) : undefined;
  return conversation && { msgId: q.msgId, clientId: q.clientId, from: q.from, conversation, seq: q.seq, body: q.body, ts: q.ts };
}

function toQueuedReceipt(r: Receipt): QueuedReceipt {
  const c = r.conversation;
  const target = c.kind === 'direct' ? { to: peerOf(c, r.user) } : { room: c.id };
  return { user: r.user, ...target, kind: r.kind, upTo: r.upTo, ts: r.ts };
}

/** undefined: neither or both of `to` and `room` */
function fromQueuedReceipt(q: QueuedReceipt): Receipt | undefined {
  const conversation = q.to !== undefined && q.room === undefined ? directConversation(q.user, q.to) : q.room !== undefined && q.to === undefined ? roomConversation(q.room) : undefined;
  return conversation && { user: q.user, conversation, kind: q.kind, upTo: q.upTo, ts: q.ts };
}

export function encodePayload(messages: readonly Envelope[], receipts: readonly Receipt[] = []): Buffer {
  const payload: QueuePayload = receipts.length === 0 ? { v: 2, messages: messages.map(toQueued) } : { v: 3, messages: messages.map(toQueued), receipts: receipts.map(toQueuedReceipt) };
  return Buffer.from(JSON.stringify(payload));
}

/** An item that failed validation: which list it came from, itself, and why. */
export interface InvalidItem {
  list: 'messages' | 'receipts';
  item: unknown;
  reason: string;
}

export type DecodedPayload = { ok: true; v: 1 | 2 | 3; messages: Envelope[]; receipts: Receipt[]; invalid: InvalidItem[] } | { ok: false; reason: string };

/** Decodes one queue message; items that fail validation are returned apart, with their reason. */
export function decodePayload(content: Buffer): DecodedPayload {
  let value: unknown;
  try {
    value = JSON.parse(content.toString('utf8'));
  } catch {
    return { ok: false, reason: 'payload is not valid JSON' };
  }
  const shape = payloadShape.safeParse(value);
  if (!shape.success) return { ok: false, reason: `payload is not a batch of messages: ${shape.error.issues[0]?.message ?? 'invalid'}` };
  const messages: Envelope[] = [];
  const receipts: Receipt[] = [];
  const invalid: InvalidItem[] = [];
  for (const m of shape.data.messages) {
    if (shape.data.v !== 1) {
      const parsed = queuedItemSchema.safeParse(m);
      const envelope = parsed.success ? fromQueued(parsed.data) : undefined;
      if (envelope) messages.push(envelope);
      else invalid.push({ list: 'messages', item: m, reason: parsed.success ? 'needs exactly one of to and room' : describe(parsed.error) });
    } else {
      const parsed = v1ItemSchema.safeParse(m);
      if (parsed.success) messages.push({ msgId: parsed.data.id, clientId: parsed.data.clientId, from: parsed.data.from, conversation: directConversation(parsed.data.from, parsed.data.to), seq: 0, body: parsed.data.body, ts: parsed.data.ts });
      else invalid.push({ list: 'messages', item: m, reason: describe(parsed.error) });
    }
  }
  for (const r of shape.data.v === 3 ? (shape.data.receipts ?? []) : []) {
    const parsed = queuedReceiptSchema.safeParse(r);
    const receipt = parsed.success ? fromQueuedReceipt(parsed.data) : undefined;
    if (receipt) receipts.push(receipt);
    else invalid.push({ list: 'receipts', item: r, reason: parsed.success ? 'needs exactly one of to and room' : describe(parsed.error) });
  }
  return { ok: true, v: shape.data.v, messages, receipts, invalid };
}

function describe(err: z.ZodError): string {
  return err.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
}

/**
 * Socket options for every AMQP connection. amqplib leaves Nagle's algorithm
 * on, which holds small publishes and acks back until the peer's delayed ACK
 * (about 40 ms per confirm on Linux); with noDelay a confirm takes about 1 ms.
 */
export const AMQP_SOCKET_OPTIONS = { noDelay: true } as const;

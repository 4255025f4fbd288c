/**
 * AMQP topology and the queue payload. SvWebsocket publishes batches of
 * accepted messages; SvPersist consumes them; unstorable ones are dead-lettered.
 */
import { z } from 'zod';
import { ROOM_ID_RE, USER_ID_RE } from './protocol';
import { directConversation, peerOf, roomConversation } from './conversation';
import type { Envelope } from './envelope';
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
 * direct one). v1 batches (`id` for the msgId, before envelopes) still decode, so messages queued
 * by an older gateway are stored after an upgrade.
 */
export interface QueuePayload {
  v: 2;
  messages: QueuedItem[];
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

// Built once: a zod schema constructed per call is compiled per call.
const payloadShape = z.object({ v: z.union([z.literal(1), z.literal(2)]), messages: z.array(z.unknown()) });

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

export function encodePayload(messages: readonly Envelope[]): Buffer {
  return Buffer.from(JSON.stringify({ v: 2, messages: messages.map(toQueued) } satisfies QueuePayload));
}

export type DecodedPayload =
  | { ok: true; v: 1 | 2; messages: Envelope[]; invalid: { message: unknown; reason: string }[] }
  | { ok: false; reason: string };

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
  const invalid: { message: unknown; reason: string }[] = [];
  for (const m of shape.data.messages) {
    if (shape.data.v === 2) {
      const parsed = queuedItemSchema.safeParse(m);
      const envelope = parsed.success ? fromQueued(parsed.data) : undefined;
      if (envelope) messages.push(envelope);
      else invalid.push({ message: m, reason: parsed.success ? 'needs exactly one of to and room' : describe(parsed.error) });
    } else {
      const parsed = v1ItemSchema.safeParse(m);
      if (parsed.success) messages.push({ msgId: parsed.data.id, clientId: parsed.data.clientId, from: parsed.data.from, conversation: directConversation(parsed.data.from, parsed.data.to), seq: 0, body: parsed.data.body, ts: parsed.data.ts });
      else invalid.push({ message: m, reason: describe(parsed.error) });
    }
  }
  return { ok: true, v: shape.data.v, messages, invalid };
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

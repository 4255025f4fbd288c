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
import { ConfigError, isLoginRefused } from './errors';

export type QueueType = 'quorum' | 'classic';
export const QUEUE_TYPES: readonly QueueType[] = ['quorum', 'classic'];

/**
 * The write path's broker objects: one direct exchange, one queue per partition (routing key
 * `p<i>`), a fanout dead-letter exchange and its queue. `legacyQueue` is the single classic
 * queue of before partitions (routing key `store`): SvPersist drains it, nothing declares it.
 */
export interface Topology {
  exchange: string;
  /** the queue of each partition, by partition number */
  queues: readonly string[];
  partitions: number;
  queueType: QueueType;
  deadLetterExchange: string;
  deadLetterQueue: string;
  legacyQueue: string;
  /** a queue without messages that every SvPersist consumes: its consumer count is how many run (partition-balance.ts) */
  membersQueue: string;
}

export interface TopologyOptions {
  /** QUEUE_PARTITIONS (default 1) */
  partitions?: number;
  /** QUEUE_TYPE (default quorum) */
  queueType?: QueueType;
}

export function topology(prefix: string, options: TopologyOptions = {}): Topology {
  const partitions = options.partitions ?? 1;
  return {
    exchange: `${prefix}messages`,
    queues: Array.from({ length: partitions }, (_, p) => `${prefix}messages.p${p}`),
    partitions,
    queueType: options.queueType ?? 'quorum',
    deadLetterExchange: `${prefix}messages.dlx`,
    deadLetterQueue: `${prefix}messages.dlq`,
    legacyQueue: `${prefix}messages`,
    membersQueue: `${prefix}persist.members`,
  };
}

/** Routing key of a partition's queue. */
export function partitionRoutingKey(partition: number): string {
  return `p${partition}`;
}

/** Routing key of the classic queue of before partitions (older gateways publish with it). */
export const LEGACY_ROUTING_KEY = 'store';

/**
 * A delivery handed out this often without an ack is dead-lettered by a quorum queue instead
 * of coming back again (a crash of SvPersist mid-batch counts too, so it is far from 1).
 */
export const DELIVERY_LIMIT = 20;

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

/**
 * The dead-letter routing key of a partition's queue carries the partition count: RabbitMQ
 * compares it on every declaration (it ignores arguments it does not know), so a gateway or
 * SvPersist with another QUEUE_PARTITIONS fails its declaration instead of publishing to, or
 * consuming, a partition nobody else uses.
 */
function deadLetterRoutingKey(partition: number, partitions: number): string {
  return `p${partition}of${partitions}`;
}

/** The arguments of a partition queue (also what a mismatch is explained against). */
export function partitionQueueArguments(t: Topology, partition: number): Record<string, unknown> {
  const common = {
    'x-queue-type': t.queueType,
    // several SvPersist consume every partition: one active, the others standing by, in order
    'x-single-active-consumer': true,
    'x-dead-letter-exchange': t.deadLetterExchange,
    'x-dead-letter-routing-key': deadLetterRoutingKey(partition, t.partitions),
  };
  if (t.queueType === 'classic') return common;
  // at-least-once dead-lettering needs reject-publish: a full queue refuses (nacks) a publish instead of dropping its head
  return { ...common, 'x-delivery-limit': DELIVERY_LIMIT, 'x-dead-letter-strategy': 'at-least-once', 'x-overflow': 'reject-publish' };
}

export function deadLetterQueueArguments(t: Topology): Record<string, unknown> {
  return { 'x-queue-type': t.queueType };
}

/**
 * The broker holds a queue with other arguments than this process declares: retrying cannot
 * help, so the service stops with one line saying which setting to align.
 */
export class TopologyMismatchError extends ConfigError {
  readonly isFatal = true;
  constructor(message: string) {
    super(message);
    this.name = 'TopologyMismatchError';
  }
}

/** Whether an error must stop a service instead of being retried (a topology mismatch). */
export function isFatalBrokerError(err: unknown): err is ConfigError {
  return err instanceof ConfigError && (err as { isFatal?: unknown }).isFatal === true;
}

const INEQUIVALENT_RE = /inequivalent arg '([^']+)' for queue '([^']+)'[^:]*: received (?:the value )?'?([^' ]*)'?.*?but current is (?:the value )?'?([^' ]*)'?/;

/** One line for a PRECONDITION_FAILED on a queue declaration: what differs and what to do. */
export function explainMismatch(err: unknown, t: Topology): TopologyMismatchError | undefined {
  const text = err instanceof Error ? err.message : String(err);
  if (!/PRECONDITION_FAILED/.test(text)) return undefined;
  const m = INEQUIVALENT_RE.exec(text);
  if (!m) return new TopologyMismatchError(`RabbitMQ refused a queue declaration (${text.replace(/^.*PRECONDITION_FAILED - /, '').replace(/"$/, '')}); align QUEUE_TYPE and QUEUE_PARTITIONS with the broker's queues`);
  const [, arg, queue, received, current] = m as unknown as [string, string, string, string, string];
  if (arg === 'x-dead-letter-routing-key') {
    const declared = /of(\d+)$/.exec(current)?.[1];
    if (declared) return new TopologyMismatchError(`QUEUE_PARTITIONS=${t.partitions} but the broker's queues were declared with ${declared}: set the same QUEUE_PARTITIONS on every gateway and SvPersist (docs/OPERATIONS.md#changing-queue_partitions)`);
  }
  if (arg === 'x-queue-type') {
    const has = current === 'none' || current === '' ? 'classic (declared without x-queue-type)' : current;
    return new TopologyMismatchError(`queue ${queue} is ${has} on the broker but QUEUE_TYPE=${t.queueType}: set QUEUE_TYPE=${has.split(' ')[0]} on every gateway and SvPersist, or move to new queues (docs/OPERATIONS.md#moving-from-the-classic-queue)`);
  }
  return new TopologyMismatchError(`queue ${queue} has ${arg}=${current} on the broker but this version declares ${received}: delete the queue once it is drained, or run the version that declared it (docs/OPERATIONS.md)`);
}

async function declareQueue(channel: TopologyChannel, t: Topology, queue: string, args: Record<string, unknown>): Promise<void> {
  try {
    await channel.assertQueue(queue, { durable: true, arguments: args });
  } catch (err) {
    throw explainMismatch(err, t) ?? err;
  }
}

export async function assertTopology(channel: TopologyChannel, t: Topology): Promise<void> {
  await channel.assertExchange(t.exchange, 'direct', { durable: true });
  await channel.assertExchange(t.deadLetterExchange, 'fanout', { durable: true });
  // Dead-letter queue first: a partition queue dead-letters into it.
  await declareQueue(channel, t, t.deadLetterQueue, deadLetterQueueArguments(t));
  await channel.bindQueue(t.deadLetterQueue, t.deadLetterExchange, '');
  // Durable queues + persistent messages: a publisher confirm means the broker has the message
  // on disk (quorum: on a majority of the nodes' disks).
  for (let p = 0; p < t.partitions; p++) {
    const queue = t.queues[p] as string;
    await declareQueue(channel, t, queue, partitionQueueArguments(t, p));
    await channel.bindQueue(queue, t.exchange, partitionRoutingKey(p));
  }
}

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

/** Removes the write path's queues and exchanges (tests and benchmarks clean up with it); what does not exist is skipped. */
export async function deleteTopology(channel: { deleteQueue(queue: string): Promise<unknown>; deleteExchange(exchange: string): Promise<unknown> }, t: Topology): Promise<void> {
  for (const queue of [...t.queues, t.deadLetterQueue, t.legacyQueue, t.membersQueue]) await channel.deleteQueue(queue);
  await channel.deleteExchange(t.exchange);
  await channel.deleteExchange(t.deadLetterExchange);
}

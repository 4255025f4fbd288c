/** Helpers of the SvPersist tests: a real confirm-channel publisher, row readers, service builders. */
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { Writable } from 'node:stream';
import amqp, { type ChannelModel, type ConfirmChannel, type GetMessage } from 'amqplib';
import { Client } from 'pg';
import { assertTopology, conversationKey, deleteTopology, directConversation, peerOf, createIdFactory, createLogger, encodePayload, partitionOf, partitionRoutingKey, topology, type Logger, type Envelope, type Topology, type TopologyOptions } from '@simplechat/shared';
import { createPersistService, type PersistService, type PersistServiceConfig } from '../src/app';
import { afterAll, beforeAll } from 'vitest';
import type { Sequelize } from 'sequelize';
import { INTERNAL_TOKEN, databasePerFile } from '../../test/helpers';
import { createSequelize } from '../src/app';
import { createStore, type Store } from '../src/store';

export { INTERNAL_TOKEN };

/** A tag that makes user ids unique to one test: every test file shares the run's database. */
export function uniqueTag(): string {
  return randomBytes(4).toString('hex');
}

/** n user ids unique to one test. */
export function users(n: number): string[] {
  const tag = uniqueTag();
  return Array.from({ length: n }, (_, i) => `u${i}-${tag}`);
}

const nextId = createIdFactory();

export function makeMessage(from: string, to: string, overrides: Partial<Envelope> = {}): Envelope {
  const ts = overrides.ts ?? Date.now();
  const msgId = overrides.msgId ?? nextId(ts);
  const conversation = overrides.conversation ?? directConversation(from, to);
  return { msgId, clientId: `c-${msgId}`, from, conversation, seq: overrides.seq ?? nextPosition(conversationKey(conversation)), body: `hello ${msgId}`, ts, ...overrides };
}

/** Positions as the gateways hand them out: counting up per conversation, in the order messages are made. */
const positions = new Map<string, number>();
function nextPosition(conversation: string): number {
  const seq = (positions.get(conversation) ?? 0) + 1;
  positions.set(conversation, seq);
  return seq;
}

/** The recipient of a direct message. */
export function recipientOf(m: Envelope): string {
  const c = m.conversation;
  if (c.kind !== 'direct') throw new Error('a direct message was expected');
  return peerOf(c, m.from);
}

/** Publishes like SvWebsocket: persistent batches on a confirm channel, resolved on the broker's confirm. */
export interface TestBroker {
  readonly topology: Topology;
  /** to the partition of the first message's conversation */
  publish(messages: Envelope[]): Promise<void>;
  /** to partition 0, or the one given */
  publishRaw(content: Buffer, partition?: number): Promise<void>;
  /** Takes what is in the dead-letter queue now. */
  takeDeadLetters(): Promise<GetMessage[]>;
  /** messages ready in the partitions' queues (not counting unacked ones) */
  readyCount(): Promise<number>;
  deleteQueues(): Promise<void>;
  close(): Promise<void>;
}

export async function createTestBroker(amqpUrl: string, queuePrefix: string, options: TopologyOptions = {}): Promise<TestBroker> {
  const t = topology(queuePrefix, options);
  const connection: ChannelModel = await amqp.connect(amqpUrl);
  connection.on('error', () => undefined);
  const channel: ConfirmChannel = await connection.createConfirmChannel();
  channel.on('error', () => undefined);
  await assertTopology(channel, t);

  function publishRaw(content: Buffer, partition = 0): Promise<void> {
    return new Promise((resolve, reject) => {
      channel.publish(t.exchange, partitionRoutingKey(partition), content, { persistent: true, contentType: 'application/json' }, (err: unknown) => (err ? reject(new Error('nacked')) : resolve()));
    });
  }

  return {
    topology: t,
    publish: (messages) => publishRaw(encodePayload(messages), messages[0] ? partitionOf(messages[0].conversation, t.partitions) : 0),
    publishRaw,
    async takeDeadLetters() {
      const out: GetMessage[] = [];
      for (;;) {
        const m = await channel.get(t.deadLetterQueue, { noAck: true });
        if (!m) return out;
        out.push(m);
      }
    },
    async readyCount() {
      let n = 0;
      for (const q of t.queues) n += (await channel.checkQueue(q)).messageCount;
      return n;
    },
    async deleteQueues() {
      await deleteTopology(channel, t);
    },
    async close() {
      await connection.close().catch(() => undefined);
    },
  };
}

export interface StoredRow {
  id: string;
  seq: string;
  sender: string;
  recipient: string | null;
  room_id: string | null;
  conversation_id: string;
  client_id: string;
  body: string;
  created_ms: string;
  stored_at: Date;
}

/** Reads rows straight from Postgres, bypassing the code under test. */
export async function withDb<T>(databaseUrl: string, fn: (db: Client) => Promise<T>): Promise<T> {
  const db = new Client({ connectionString: databaseUrl });
  db.on('error', () => undefined);
  await db.connect();
  try {
    return await fn(db);
  } finally {
    await db.end();
  }
}

export function rowsOf(databaseUrl: string, users: string[]): Promise<StoredRow[]> {
  return withDb(databaseUrl, async (db) => {
    const r = await db.query<StoredRow>(
      `SELECT id, seq::text AS seq, sender, recipient, room_id, conversation_id, client_id, body,
              (extract(epoch FROM created_at) * 1000)::int8::text AS created_ms, stored_at
       FROM messages WHERE sender = ANY($1) OR recipient = ANY($1) ORDER BY messages.seq`,
      [users],
    );
    return r.rows;
  });
}

/** Log lines as objects, for tests that check what an operator would see. */
export function captureLog(level: 'debug' | 'info' | 'warn' = 'info'): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  return { log: createLogger('SvPersist', level, sink), lines };
}

export const silentLog = (): Logger => createLogger('SvPersist', 'silent');

export interface ServiceOptions extends Partial<PersistServiceConfig> {
  databaseUrl: string;
  amqpUrl: string;
  queuePrefix: string;
  log?: Logger;
}

/** The whole service in-process on port 0. */
export async function startService(options: ServiceOptions): Promise<{ service: PersistService; baseUrl: string }> {
  const { log, ...overrides } = options;
  const config: PersistServiceConfig = {
    prefetch: 5000,
    maxBatchRows: 5000,
    maxBatchDelayMs: 20,
    dbPoolMax: 5,
    maxRoomMembers: 1000,
    maxRoomsPerUser: 500,
    emptyAfterMs: 60_000,
    internalToken: INTERNAL_TOKEN,
    internalTokenPrevious: undefined,
    notifyWebhookUrl: '',
    notifyWebhookSecret: undefined,
    notifyAfterMs: 10_000,
    notifyIncludeBody: true,
    databaseReadUrl: '',
    ...overrides,
  };
  const service = createPersistService({ config, log: log ?? silentLog() });
  const port = await service.listen(0, '127.0.0.1');
  return { service, baseUrl: `http://127.0.0.1:${port}` };
}

/** GET with the internal token; answers status and parsed JSON. */
export async function getJson(baseUrl: string, path: string, token: string | null = INTERNAL_TOKEN): Promise<{ status: number; body: any }> {
  const res = await fetch(`${baseUrl}${path}`, { headers: token === null ? {} : { authorization: `Bearer ${token}` } });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

/** Whether this machine lets the tests drive the broker with rabbitmqctl (the development machines do). */
export function canUseRabbitmqctl(): boolean {
  return spawnSync('rabbitmqctl', ['-q', 'list_connections', 'pid'], { timeout: 15_000 }).status === 0;
}

/** Makes the broker drop the connections whose connection_name contains `name`, as a broker restart would. */
export function dropBrokerConnections(name: string): number {
  const list = spawnSync('rabbitmqctl', ['-q', '--no-table-headers', 'list_connections', 'pid', 'client_properties'], { timeout: 15_000, encoding: 'utf8' });
  if (list.status !== 0) throw new Error(`rabbitmqctl list_connections failed: ${list.stderr}`);
  const pids = list.stdout
    .split('\n')
    .filter((line) => line.includes(name))
    .map((line) => line.split('\t')[0] as string);
  for (const pid of pids) {
    const r = spawnSync('rabbitmqctl', ['close_connection', pid, 'test: broker went away'], { timeout: 15_000, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`rabbitmqctl close_connection failed: ${r.stderr}`);
  }
  return pids.length;
}

/**
 * A migrated database of the calling test file's own (created before its tests, dropped after
 * them), for tests whose work covers every conversation; its Sequelize and store.
 */
export function ownDatabase(name: string): { readonly sequelize: Sequelize; readonly store: Store } {
  const databaseUrl = databasePerFile(name);
  let sequelize: Sequelize | undefined;
  let store: Store | undefined;
  beforeAll(() => {
    sequelize = createSequelize(databaseUrl, 2);
    store = createStore({ sequelize });
  });
  afterAll(async () => {
    await sequelize?.close();
  });
  return {
    get sequelize() {
      if (!sequelize) throw new Error('the database is made in beforeAll');
      return sequelize;
    },
    get store() {
      if (!store) throw new Error('the database is made in beforeAll');
      return store;
    },
  };
}

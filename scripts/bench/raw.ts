/**
 * Raw limits of the building blocks, measured in the same run as SimpleChat:
 * undici POSTs to a bare HTTP server, RabbitMQ confirm-publish and
 * consume+ack on a private queue, and Postgres multi-row INSERT (and COPY
 * through psql) into a private table with the indexes of `messages`.
 * Every loop runs for a bounded time and reports a rate.
 */
import { spawn } from 'node:child_process';
import { Pool } from 'undici';
import amqp from 'amqplib';
import { Client } from 'pg';

export interface Rate {
  /** operations (messages, requests, rows) per second */
  perSec: number;
  count: number;
  seconds: number;
}

const elapsed = (t0: number) => (performance.now() - t0) / 1000;

/** POSTs of `body` over a keep-alive undici pool, `concurrency` in flight, for `durationMs`. */
export async function undiciPostLoop(url: string, body: string, opts: { connections: number; concurrency: number; durationMs: number }): Promise<Rate> {
  const pool = new Pool(url, { connections: opts.connections, keepAliveTimeout: 30_000, headersTimeout: 5000, bodyTimeout: 5000, connectTimeout: 5000 });
  const request = async () => {
    const res = await pool.request({ method: 'POST', path: '/internal/deliver', headers: { 'content-type': 'application/json' }, body });
    await res.body.dump();
    if (res.statusCode !== 200) throw new Error(`bare http answered ${res.statusCode}`);
  };
  try {
    // warm the connections
    await Promise.all(Array.from({ length: opts.connections }, request));
    let count = 0;
    const t0 = performance.now();
    const end = t0 + opts.durationMs;
    await Promise.all(
      Array.from({ length: opts.concurrency }, async () => {
        while (performance.now() < end) {
          await request();
          count++;
        }
      }),
    );
    const seconds = elapsed(t0);
    return { perSec: count / seconds, count, seconds };
  } finally {
    await pool.close().catch(() => undefined);
  }
}

/**
 * Persistent ~`bodyBytes` messages to a durable private queue on a confirm
 * channel, `batch` publishes pipelined and then their confirms awaited, for `durationMs`.
 */
export async function confirmPublishLoop(amqpUrl: string, queue: string, opts: { bodyBytes: number; batch: number; durationMs: number }): Promise<Rate> {
  const conn = await amqp.connect(amqpUrl, { timeout: 5000 });
  conn.on('error', () => undefined);
  try {
    const ch = await conn.createConfirmChannel();
    ch.on('error', () => undefined);
    await ch.assertQueue(queue, { durable: true });
    await ch.purgeQueue(queue);
    const content = Buffer.from(JSON.stringify({ v: 1, body: 'x'.repeat(Math.max(0, opts.bodyBytes - 20)) }));
    let count = 0;
    const t0 = performance.now();
    const end = t0 + opts.durationMs;
    while (performance.now() < end) {
      for (let i = 0; i < opts.batch; i++) ch.sendToQueue(queue, content, { persistent: true, contentType: 'application/json' });
      await withDeadline(ch.waitForConfirms(), 10_000, 'RabbitMQ confirms');
      count += opts.batch;
    }
    const seconds = elapsed(t0);
    return { perSec: count / seconds, count, seconds };
  } finally {
    await conn.close().catch(() => undefined);
  }
}

/** Consumes what is in the queue (acking each message) until `count` arrived or `timeoutMs` passed. */
export async function consumeAckLoop(amqpUrl: string, queue: string, opts: { count: number; prefetch: number; timeoutMs: number }): Promise<Rate> {
  const conn = await amqp.connect(amqpUrl, { timeout: 5000 });
  conn.on('error', () => undefined);
  try {
    const ch = await conn.createChannel();
    ch.on('error', () => undefined);
    await ch.prefetch(opts.prefetch);
    let count = 0;
    let t0 = 0;
    let last = 0;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, opts.timeoutMs);
      void ch.consume(
        queue,
        (msg) => {
          if (!msg) return;
          if (count === 0) t0 = performance.now();
          ch.ack(msg);
          last = performance.now();
          if (++count >= opts.count) {
            clearTimeout(timer);
            resolve();
          }
        },
        { noAck: false },
      );
    });
    const seconds = count > 1 ? (last - t0) / 1000 : 0;
    return { perSec: seconds > 0 ? (count - 1) / seconds : 0, count, seconds };
  } finally {
    await conn.close().catch(() => undefined);
  }
}

/**
 * A table like the migrated `messages` (same columns, constraints and indexes: derived, so it
 * cannot drift from the migration), with its own sequence as the default of `seq` for COPY.
 * The database must be migrated.
 */
export function messagesLikeDdl(table: string): string {
  return `
    CREATE SEQUENCE ${table}_seq AS bigint;
    CREATE TABLE ${table} (LIKE messages INCLUDING ALL);
    ALTER TABLE ${table} ALTER COLUMN seq SET DEFAULT nextval('${table}_seq');`;
}

interface Row {
  id: string;
  sender: string;
  recipient: string;
  conversation: string;
  clientId: string;
  body: string;
  ts: number;
}

/** Rows shaped like chat traffic: 1,000 users, ids unique per run and call. */
function makeRows(tag: string, from: number, n: number, bodyChars: number): Row[] {
  const rows: Row[] = new Array(n);
  const body = 'x'.repeat(bodyChars);
  const now = Date.now();
  for (let k = 0; k < n; k++) {
    const i = from + k;
    const a = `u${i % 1000}`;
    const b = `u${(i * 7 + 1) % 1000}`;
    rows[k] = { id: `${tag}${i.toString().padStart(10, '0')}`, sender: a, recipient: b, conversation: a < b ? `${a}:${b}` : `${b}:${a}`, clientId: `c${i}`, body, ts: now + k };
  }
  return rows;
}

/**
 * The statement SvPersist runs for a batch of new rows (INSERT ... SELECT FROM unnest, seq from a
 * sequence; without its lock and cursor row), `batchRows` rows per statement on one connection,
 * for `durationMs`.
 */
export async function multiRowInsertLoop(databaseUrl: string, table: string, opts: { batchRows: number; durationMs: number; bodyChars: number }): Promise<Rate> {
  const db = new Client({ connectionString: databaseUrl, connectionTimeoutMillis: 5000, statement_timeout: 30_000 });
  await db.connect();
  try {
    await db.query(`DROP TABLE IF EXISTS ${table}; DROP SEQUENCE IF EXISTS ${table}_seq; ${messagesLikeDdl(table)}`);
    const sql = `
      INSERT INTO ${table} (id, seq, sender, recipient, room_id, conversation_id, client_id, body, created_at)
      SELECT m.id, nextval('${table}_seq'), m.sender, m.recipient, NULL, m.conversation_id, m.client_id, m.body, to_timestamp(m.ts / 1000.0)
      FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[])
        AS m(id, sender, recipient, conversation_id, client_id, body, ts)`;
    let count = 0;
    let next = 0;
    let t0 = performance.now();
    const end = t0 + opts.durationMs;
    let warm = true;
    while (performance.now() < end || warm) {
      const rows = makeRows('r', next, opts.batchRows, opts.bodyChars);
      next += opts.batchRows;
      const res = await db.query(sql, [
        rows.map((r) => r.id),
        rows.map((r) => r.sender),
        rows.map((r) => r.recipient),
        rows.map((r) => r.conversation),
        rows.map((r) => r.clientId),
        rows.map((r) => r.body),
        rows.map((r) => r.ts),
      ]);
      count += res.rowCount ?? 0;
      if (warm) {
        // the first statement pays for planning and empty-index growth; time from the second
        warm = false;
        t0 = performance.now();
        count = 0;
      }
    }
    const seconds = elapsed(t0);
    return { perSec: count / seconds, count, seconds };
  } finally {
    await db.end().catch(() => undefined);
  }
}

/** COPY of `rows` CSV rows through psql into a fresh table like `messages`; undefined when psql is missing. */
export async function copyLoop(databaseUrl: string, table: string, opts: { rows: number; bodyChars: number; timeoutMs: number }): Promise<Rate | undefined> {
  const db = new Client({ connectionString: databaseUrl, connectionTimeoutMillis: 5000 });
  await db.connect();
  try {
    await db.query(`DROP TABLE IF EXISTS ${table}; DROP SEQUENCE IF EXISTS ${table}_seq; ${messagesLikeDdl(table)}`);
  } finally {
    await db.end().catch(() => undefined);
  }
  const rows = makeRows('c', 0, opts.rows, opts.bodyChars);
  const created = new Date().toISOString();
  const csv = rows.map((r) => `${r.id},${r.sender},${r.recipient},${r.conversation},${r.clientId},${r.body},${created}\n`).join('');
  const t0 = performance.now();
  const ok = await new Promise<boolean | undefined>((resolve) => {
    const psql = spawn('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', databaseUrl, '-c', `\\copy ${table} (id, sender, recipient, conversation_id, client_id, body, created_at) FROM STDIN (FORMAT csv)`], {
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    let err = '';
    const timer = setTimeout(() => psql.kill('SIGKILL'), opts.timeoutMs);
    psql.stderr.on('data', (d: Buffer) => (err += d.toString()));
    psql.on('error', () => (clearTimeout(timer), resolve(undefined)));
    psql.on('exit', (code) => {
      clearTimeout(timer);
      if (code !== 0 && err) process.stderr.write(`bench: COPY through psql failed: ${err.trim().slice(0, 300)}\n`);
      resolve(code === 0);
    });
    psql.stdin.on('error', () => undefined);
    psql.stdin.end(csv);
  });
  if (!ok) return undefined;
  const seconds = elapsed(t0);
  return { perSec: opts.rows / seconds, count: opts.rows, seconds };
}

export function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
    p.then(
      (v) => (clearTimeout(timer), resolve(v)),
      (e: unknown) => (clearTimeout(timer), reject(e instanceof Error ? e : new Error(String(e)))),
    );
  });
}

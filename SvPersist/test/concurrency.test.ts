import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QueryTypes, type Sequelize } from 'sequelize';
import { createIdFactory, directConversation, partitionOfKey, conversationKey, type Envelope } from '@simplechat/shared';
import { databasePerFile } from '../../test/helpers';
import { createSequelize } from '../src/app';
import { createStore, type Store } from '../src/store';
import { createIdlePartitions } from '../src/idle-partitions';
import { componentArray, parsePosition } from '../src/sync-cursor';
import { silentLog, uniqueTag } from './support';
import { holdBatch } from './held-batch';

// Its own database: the partitions written here would make every other file's cursors vectors.
const databaseUrl = databasePerFile('concurrency');
/** writers per partition: two contend for each partition's lock, partitions run side by side */
const PARTITIONS = 3;
const WRITERS = 6;
const BATCHES_PER_WRITER = 30;
const BATCH_SIZE = 15;

let pools: Sequelize[] = [];
let writers: Store[] = [];
let reader: Store;
let db: Sequelize;

beforeAll(() => {
  // One pool per writer, as separate SvPersist instances would have.
  pools = Array.from({ length: WRITERS + 1 }, () => createSequelize(databaseUrl, 4));
  writers = pools.slice(0, WRITERS).map((sequelize) => createStore({ sequelize }));
  db = pools[WRITERS] as Sequelize;
  reader = createStore({ sequelize: db });
});

afterAll(async () => {
  await Promise.all(pools.map((p) => p.close()));
});

interface Writes {
  recipient: string;
  ids: string[];
  done: Promise<unknown>;
  isWriting(): boolean;
}

/**
 * WRITERS stores insert BATCHES_PER_WRITER batches each for one recipient, interleaved, newest
 * msgIds first: msgId order and storage order disagree. Writer w stores on partition
 * `partitionOf(w)`. isWriting() turns false once all are in.
 */
function writeConcurrently(tag: string, partitionOf: (writer: number) => number = (w) => w % PARTITIONS, batches = BATCHES_PER_WRITER): Writes {
  const recipient = `r-${tag}`;
  const nextId = createIdFactory();
  const now = Date.now();
  const total = WRITERS * batches * BATCH_SIZE;
  const ids = Array.from({ length: total }, (_, i) => nextId(now + i));
  ids.reverse();
  const message = (id: string, i: number): Envelope => ({ msgId: id, clientId: `c-${id}`, from: `s${i % 7}-${tag}`, conversation: directConversation(`s${i % 7}-${tag}`, recipient), seq: 0, body: `b${i}`, ts: now });
  let writing = true;
  const writes = writers.map(async (store, w) => {
    for (let b = 0; b < batches; b++) {
      const start = (b * WRITERS + w) * BATCH_SIZE;
      await store.insertBatch(
        ids.slice(start, start + BATCH_SIZE).map((id, k) => message(id, start + k)),
        partitionOf(w),
      );
    }
  });
  const done = Promise.all(writes).finally(() => {
    writing = false;
  });
  return { recipient, ids, done, isWriting: () => writing };
}

/** The recipient's rows a cursor covers: each at or below its partition's component. */
async function rowsUpTo(recipient: string, cursor: string): Promise<number> {
  const [row] = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM messages WHERE recipient = $1 AND seq <= ($2::int8[])[partition + 1]', {
    bind: [recipient, componentArray(parsePosition(cursor))],
    type: QueryTypes.SELECT,
  });
  return (row as { n: number }).n;
}

/** Follows the sync chain from `cursor` while `isWriting()`, then drains it; every msgId seen, in order. */
async function follow(user: string, cursor: string | undefined, isWriting: () => boolean, limit = 37): Promise<{ seen: string[]; reads: number; cursors: string[] }> {
  const seen: string[] = [];
  const cursors: string[] = [];
  let reads = 0;
  for (;;) {
    const wasWriting = isWriting();
    const page = await reader.sync({ user, after: cursor, limit });
    reads++;
    seen.push(...page.messages.map((m) => m.msgId));
    cursor = page.cursor;
    cursors.push(cursor);
    if (!wasWriting && !page.more) break;
  }
  return { seen, reads, cursors };
}

/** No component of a later cursor lies below the earlier one's. */
function expectMonotonic(cursors: string[]): void {
  for (let i = 1; i < cursors.length; i++) {
    const a = componentArray(parsePosition(cursors[i - 1])).map(BigInt);
    const b = componentArray(parsePosition(cursors[i])).map(BigInt);
    for (let p = 0; p < a.length; p++) if ((b[p] as bigint) < (a[p] as bigint)) throw new Error(`cursor moved back in partition ${p}: ${cursors[i - 1]} -> ${cursors[i]}`);
  }
}

describe('sync cursor under concurrent writers on several partitions', () => {
  it('never skips a row when writers of several partitions commit concurrently and out of msgId order', async () => {
    const { recipient, ids, done, isWriting } = writeConcurrently(uniqueTag());
    const { seen, reads, cursors } = await follow(recipient, undefined, isWriting);
    await done;

    expect(reads).toBeGreaterThan(5);
    expect(new Set(seen).size).toBe(seen.length);
    expect([...seen].sort()).toEqual([...ids].sort());
    expectMonotonic(cursors);
    // rows of every partition went through the chain
    expect(cursors.some((c) => c.includes('.'))).toBe(true);
  });

  it('hands out storage cursors that no later commit falls behind', async () => {
    const { recipient, ids, done, isWriting } = writeConcurrently(uniqueTag());
    // Each cursor read while batches commit, with the rows at or below it just after the read.
    const taken: { cursor: string; rows: number }[] = [];
    while (isWriting()) {
      const { cursor } = await reader.cursor();
      taken.push({ cursor, rows: await rowsUpTo(recipient, cursor) });
    }
    await done;

    expect(taken.length).toBeGreaterThan(5);
    // A batch committing after a read with a seq at or below its partition's component would raise its count.
    for (const t of taken) expect({ cursor: t.cursor, rows: await rowsUpTo(recipient, t.cursor) }).toEqual(t);
    const last = await reader.cursor();
    expect(await rowsUpTo(recipient, last.cursor)).toBe(ids.length);
    expect(last.newestTs).toEqual(expect.any(Number));
  });

  it('a cursor taken anywhere in the chain, started again from, misses nothing stored after it', async () => {
    const { recipient, ids, done, isWriting } = writeConcurrently(uniqueTag());
    const starts: string[] = [];
    while (isWriting()) starts.push((await reader.cursor()).cursor);
    await done;
    // Each start sees exactly the rows its cursor does not cover.
    for (const start of starts.filter((_, i) => i % Math.ceil(starts.length / 6) === 0)) {
      const { seen } = await follow(recipient, start, () => false, 100);
      expect(seen.length).toBe(ids.length - (await rowsUpTo(recipient, start)));
      expect(new Set(seen).size).toBe(seen.length);
    }
  });
});

describe('a batch in flight', () => {
  it('lies past every cursor handed out while it is in flight, cut pages included', async () => {
    const tag = uniqueTag();
    const recipient = `r-${tag}`;
    const nextId = createIdFactory();
    let position = 0;
    const message = (from: string): Envelope => {
      const msgId = nextId(Date.now());
      return { msgId, clientId: `c-${msgId}`, from, conversation: directConversation(from, recipient), seq: ++position, body: 'x', ts: Date.now() };
    };
    await reader.insertBatch([message(`a-${tag}`)], 1);
    const h = message(`h-${tag}`);
    const held = await holdBatch(databaseUrl, 1, h);
    try {
      // stored after the held row drew its seq, on another partition and on the held one's
      const later = [message(`b-${tag}`), message(`c-${tag}`), message(`d-${tag}`)];
      await reader.insertBatch([later[0] as Envelope, later[1] as Envelope], 0);
      const duringHold = (await reader.cursor()).cursor;
      const { seen, cursors } = await follow(recipient, undefined, () => false, 1);
      expect(seen).not.toContain(h.msgId);
      await held.commit();
      await reader.insertBatch([later[2] as Envelope], 1);
      // every cursor of the chain, and the one handed to a new connection meanwhile, still lead to it
      for (const start of [...cursors, duringHold]) expect((await follow(recipient, start, () => false, 1)).seen).toContain(h.msgId);
    } finally {
      await held.rollback().catch(() => undefined);
    }
  });
});

describe('cursors across upgrades', () => {
  it('a plain seq (what a build without partitions handed out) still covers every partition', async () => {
    const tag = uniqueTag();
    const recipient = `r-${tag}`;
    const nextId = createIdFactory();
    const message = (i: number): Envelope => {
      const msgId = nextId(Date.now());
      return { msgId, clientId: `c-${msgId}`, from: `s-${tag}`, conversation: directConversation(`s-${tag}`, recipient), seq: i, body: `b${i}`, ts: Date.now() };
    };
    const before = [message(1), message(2)];
    await (writers[0] as Store).insertBatch(before, 0);
    const [row] = await db.query<{ seq: string }>('SELECT max(seq)::text AS seq FROM messages WHERE recipient = $1', { bind: [recipient], type: QueryTypes.SELECT });
    const plain = (row as { seq: string }).seq;
    expect(plain).toMatch(/^\d+$/);
    const after = [message(3), message(4), message(5), message(6)];
    await Promise.all(after.map((m, i) => (writers[i] as Store).insertBatch([m], i)));
    const { seen } = await follow(recipient, plain, () => false, 2);
    expect([...seen].sort()).toEqual(after.map((m) => m.msgId).sort());
  });

  it('a change of partition count (1, then 4) loses nothing for a cursor from before', async () => {
    const tag = uniqueTag();
    // Rows stored with one partition (everything partition 0), a cursor taken in the middle.
    const first = writeConcurrently(tag, () => 0, 4);
    const midway: string[] = [];
    while (first.isWriting()) midway.push((await reader.cursor()).cursor);
    await first.done;
    const beforeChange = (await reader.cursor()).cursor;
    // Then four: each conversation goes to its partition of four; a writer of the old count
    // still drains partition 0 meanwhile.
    const second = writeConcurrently(tag, (w) => (w === 0 ? 0 : partitionOfKey(conversationKey(directConversation(`s${w}-${tag}`, `r-${tag}`)), 4) || 1 + (w % 3)), 6);
    await second.done;
    const all = [...first.ids, ...second.ids];
    for (const start of [beforeChange, ...midway.slice(0, 3)]) {
      const { seen } = await follow(`r-${tag}`, start, () => false, 50);
      expect(seen.length).toBe(all.length - (await rowsUpTo(`r-${tag}`, start)));
    }
    const { seen } = await follow(`r-${tag}`, beforeChange, () => false, 50);
    expect([...seen].sort()).toEqual([...second.ids].sort());
  });
});

describe('idle partitions', () => {
  it('an idle partition\'s watermark moves up to the sequence, so positions stay compact', async () => {
    const idle = createIdlePartitions({ sequelize: db, log: silentLog(), idleMs: 0, intervalMs: 3_600_000 });
    try {
      const tag = uniqueTag();
      const w = writeConcurrently(tag, (i) => i % 4, 1);
      await w.done;
      await idle.tick();
      // every partition at the sequence's value: one plain seq again
      expect((await reader.cursor()).cursor).toMatch(/^\d+$/);
      const { seen } = await follow(`r-${tag}`, undefined, () => false, 500);
      expect(seen.length).toBe(w.ids.length);
    } finally {
      await idle.close();
    }
  });
});

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QueryTypes, type Sequelize } from 'sequelize';
import { createIdFactory, directConversation, type Envelope } from '@simplechat/shared';
import { isolation } from '../../test/helpers';
import { createSequelize } from '../src/app';
import { createStore, type Store } from '../src/store';
import { uniqueTag } from './support';

const iso = isolation();
const WRITERS = 4;
const BATCHES_PER_WRITER = 40;
const BATCH_SIZE = 15;

let pools: Sequelize[] = [];
let writers: Store[] = [];
let reader: Store;

beforeAll(() => {
  // One pool per writer, as separate SvPersist instances would have.
  pools = Array.from({ length: WRITERS + 1 }, () => createSequelize(iso.databaseUrl, 4));
  writers = pools.slice(0, WRITERS).map((sequelize) => createStore({ sequelize }));
  reader = createStore({ sequelize: pools[WRITERS] as Sequelize });
});

afterAll(async () => {
  await Promise.all(pools.map((p) => p.close()));
});

/**
 * WRITERS stores insert BATCHES_PER_WRITER batches each for one recipient, interleaved, newest
 * msgIds first: msgId order and storage order disagree. isWriting() turns false once all are in.
 */
function writeConcurrently(tag: string): { recipient: string; ids: string[]; done: Promise<unknown>; isWriting(): boolean } {
  const recipient = `r-${tag}`;
  const nextId = createIdFactory();
  const now = Date.now();
  const total = WRITERS * BATCHES_PER_WRITER * BATCH_SIZE;
  const ids = Array.from({ length: total }, (_, i) => nextId(now + i));
  ids.reverse();
  const message = (id: string, i: number): Envelope => ({ msgId: id, clientId: `c-${id}`, from: `s${i % 7}-${tag}`, conversation: directConversation(`s${i % 7}-${tag}`, recipient), seq: 0, body: `b${i}`, ts: now });
  let writing = true;
  const writes = writers.map(async (store, w) => {
    for (let b = 0; b < BATCHES_PER_WRITER; b++) {
      const start = (b * WRITERS + w) * BATCH_SIZE;
      await store.insertBatch(ids.slice(start, start + BATCH_SIZE).map((id, k) => message(id, start + k)));
    }
  });
  const done = Promise.all(writes).finally(() => {
    writing = false;
  });
  return { recipient, ids, done, isWriting: () => writing };
}

async function rowsUpTo(recipient: string, cursor: string): Promise<number> {
  const [row] = await (pools[WRITERS] as Sequelize).query<{ n: number }>('SELECT count(*)::int AS n FROM messages WHERE recipient = $1 AND seq <= $2::int8', {
    bind: [recipient, cursor],
    type: QueryTypes.SELECT,
  });
  return (row as { n: number }).n;
}

describe('sync cursor under concurrent writers', () => {
  it('never skips a row when writers commit concurrently and out of msgId order', async () => {
    const { recipient, ids, done, isWriting } = writeConcurrently(uniqueTag());
    const seen: string[] = [];
    let cursor: string | undefined;
    let reads = 0;
    // Follow the chain while the writers run, then drain once they are done.
    for (;;) {
      const wasWriting = isWriting();
      const page = await reader.sync({ user: recipient, after: cursor, limit: 37 });
      reads++;
      seen.push(...page.messages.map((m) => m.msgId));
      cursor = page.cursor;
      if (!wasWriting && !page.more) break;
    }
    await done;

    expect(reads).toBeGreaterThan(5);
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen.length).toBe(ids.length);
    expect([...seen].sort()).toEqual([...ids].sort());
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
    // A batch committing after a read with a seq at or below that cursor would raise its count.
    for (const t of taken) expect({ cursor: t.cursor, rows: await rowsUpTo(recipient, t.cursor) }).toEqual(t);
    const last = await reader.cursor();
    expect(await rowsUpTo(recipient, last.cursor)).toBe(ids.length);
    expect(last.newestTs).toEqual(expect.any(Number));
  });
});

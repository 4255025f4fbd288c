import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sequelize } from 'sequelize';
import { createIdFactory, type QueuedMessage } from '@simplechat/shared';
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

describe('sync cursor under concurrent writers', () => {
  it('never skips a row when writers commit concurrently and out of msgId order', async () => {
    const tag = uniqueTag();
    const recipient = `r-${tag}`;
    const nextId = createIdFactory();
    const now = Date.now();
    const total = WRITERS * BATCHES_PER_WRITER * BATCH_SIZE;
    const ids = Array.from({ length: total }, (_, i) => nextId(now + i));
    // Newest ids are written first and writers interleave: msgId order and storage order disagree.
    ids.reverse();
    const message = (id: string, i: number): QueuedMessage => ({ id, from: `s${i % 7}-${tag}`, to: recipient, body: `b${i}`, ts: now, clientId: `c-${id}` });

    let writing = true;
    const writes = writers.map(async (store, w) => {
      for (let b = 0; b < BATCHES_PER_WRITER; b++) {
        const start = (b * WRITERS + w) * BATCH_SIZE;
        await store.insertBatch(ids.slice(start, start + BATCH_SIZE).map((id, k) => message(id, start + k)));
      }
    });
    const allWritten = Promise.all(writes).finally(() => {
      writing = false;
    });

    const seen: string[] = [];
    let cursor: string | undefined;
    let reads = 0;
    // Follow the chain while the writers run, then drain once they are done.
    for (;;) {
      const wasWriting = writing;
      const page = await reader.sync({ user: recipient, after: cursor, limit: 37 });
      reads++;
      seen.push(...page.messages.map((m) => m.msgId));
      cursor = page.cursor;
      if (!wasWriting && !page.more) break;
    }
    await allWritten;

    expect(reads).toBeGreaterThan(5);
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen.length).toBe(total);
    expect([...seen].sort()).toEqual([...ids].sort());
  });
});

import { describe, expect, it } from 'vitest';
import { directConversation, type Envelope } from '@simplechat/shared';
import { insertIsolatingPoison } from '../src/writer';
import { isDataError, isUnavailableError } from '../src/store';

const msg = (i: number): Envelope => ({ msgId: `m${i}`, clientId: `c${i}`, from: 'a', conversation: directConversation('a', 'b'), seq: i + 1, body: `b${i}`, ts: i });

/** Postgres as Sequelize reports it: the SQLSTATE on the wrapped pg error. */
function pgError(code: string, message: string): Error {
  return Object.assign(new Error(message), { name: 'SequelizeDatabaseError', parent: { code } });
}

/** An insert that refuses a whole statement when it holds a bad row, as a transaction does. */
function fakeInsert(bad: Set<string>) {
  const stored: string[] = [];
  let calls = 0;
  const insert = async (messages: readonly Envelope[]): Promise<number> => {
    calls++;
    if (messages.some((m) => bad.has(m.msgId))) throw pgError('22021', 'invalid byte sequence for encoding "UTF8": 0x00');
    stored.push(...messages.map((m) => m.msgId));
    return messages.length;
  };
  return { insert, stored, calls: () => calls };
}

describe('insertIsolatingPoison', () => {
  it('inserts a clean batch in one statement', async () => {
    const f = fakeInsert(new Set());
    const r = await insertIsolatingPoison(f.insert, [msg(1), msg(2), msg(3)]);
    expect(r).toEqual({ inserted: 3, inserts: 1, poison: [] });
    expect(f.calls()).toBe(1);
  });

  it('isolates every refused row with its reason and stores all the others', async () => {
    const messages = Array.from({ length: 100 }, (_, i) => msg(i));
    const bad = new Set(['m0', 'm41', 'm42', 'm99']);
    const f = fakeInsert(bad);
    const r = await insertIsolatingPoison(f.insert, messages);
    expect(r.poison.map((p) => p.message.msgId).sort()).toEqual([...bad].sort());
    expect(r.poison[0]?.reason).toMatch(/SQLSTATE 22021.*0x00/);
    expect(f.stored.sort()).toEqual(messages.map((m) => m.msgId).filter((id) => !bad.has(id)).sort());
    expect(r.inserted).toBe(96);
    // bisection, not one transaction per row
    expect(f.calls()).toBeLessThan(60);
    expect(r.inserts).toBe(f.calls());
  });

  it('lets a failure that is not about the data through, for a retry of the whole batch', async () => {
    const outage = Object.assign(new Error('Connection terminated unexpectedly'), { name: 'SequelizeDatabaseError' });
    await expect(insertIsolatingPoison(() => Promise.reject(outage), [msg(1), msg(2)])).rejects.toBe(outage);
  });
});

describe('error classification', () => {
  it.each([
    ['22021', true],
    ['22P05', true],
    ['22001', true],
    ['22008', true],
    ['23514', true],
    ['23505', false],
    ['57P01', false],
    ['42P01', false],
  ])('SQLSTATE %s is a data error: %s', (code, expected) => {
    expect(isDataError(pgError(code, 'x'))).toBe(expected);
  });

  it('treats socket failures and server shutdowns as unavailable, a missing table as not', () => {
    expect(isUnavailableError(new Error('Connection terminated unexpectedly'))).toBe(true);
    expect(isUnavailableError(pgError('57P01', 'terminating connection due to administrator command'))).toBe(true);
    expect(isUnavailableError(pgError('08006', 'connection failure'))).toBe(true);
    expect(isUnavailableError(pgError('42P01', 'relation "messages" does not exist'))).toBe(false);
  });
});

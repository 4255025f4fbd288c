import { afterEach, describe, expect, it, vi } from 'vitest';
import { createStorageCheck } from '../src/storage-check';
import type { StorageProblem, StorageStatus } from '../src/store';
import { captureLog } from './support';

afterEach(() => {
  vi.useRealTimers();
});

const notReady = (problem: StorageProblem): StorageStatus => ({ isReady: false, problem, reason: `${problem}; do something` });

describe('storage check', () => {
  it('logs a lasting problem when found and then at most once a minute, a new problem at once, and the way back once', async () => {
    vi.useFakeTimers();
    let status = notReady('no_schema');
    let inspections = 0;
    const store = {
      inspect: async () => {
        inspections++;
        return status;
      },
    };
    const { log, lines } = captureLog('debug');
    const check = createStorageCheck({ store, target: 'h:1/db', log, timeoutMs: 100 });
    const warned = () => lines.filter((l) => l.level === 'warn').map((l) => l.msg);
    try {
      // Rechecked with backoff on its own, and on every probe.
      await vi.advanceTimersByTimeAsync(30_000);
      for (let i = 0; i < 20; i++) await check.check();
      expect(inspections).toBeGreaterThan(25);
      expect(warned()).toEqual(['no_schema; do something']);

      // rechecks come at most 5 s apart: one of them falls past the minute
      await vi.advanceTimersByTimeAsync(36_000);
      expect(warned()).toEqual(['no_schema; do something', 'no_schema; do something']);
      expect(lines.filter((l) => l.level === 'warn')[1]).toMatchObject({ problem: 'no_schema', notReadyS: expect.any(Number) });

      status = notReady('no_database');
      await check.check();
      expect(warned()).toHaveLength(3);
      expect(warned()[2]).toBe('no_database; do something');

      status = { isReady: true };
      await check.check();
      await check.check();
      await vi.advanceTimersByTimeAsync(60_000);
      expect(lines.filter((l) => l.level === 'info').map((l) => l.msg)).toEqual(['storage ready again: Postgres database h:1/db answers and is migrated']);

      // Ready again, nothing polls; a failed query makes it look within a second.
      const before = inspections;
      await vi.advanceTimersByTimeAsync(60_000);
      expect(inspections).toBe(before);
      status = notReady('unreachable');
      for (let i = 0; i < 50; i++) check.suspect();
      await vi.advanceTimersByTimeAsync(0);
      expect(inspections).toBe(before + 1);
      expect(warned()[3]).toBe('unreachable; do something');
      await vi.advanceTimersByTimeAsync(5000);
      expect(inspections).toBeGreaterThan(before + 2);
      expect(warned()).toHaveLength(4);
    } finally {
      await check.close();
    }
    const after = inspections;
    await vi.advanceTimersByTimeAsync(60_000);
    expect(inspections).toBe(after);
  });

  it('says once at startup that storage is ready', async () => {
    const { log, lines } = captureLog();
    const check = createStorageCheck({ store: { inspect: async () => ({ isReady: true }) }, target: 'h:1/db', log, timeoutMs: 100 });
    await check.check();
    await check.check();
    await check.close();
    expect(lines.map((l) => l.msg)).toEqual(['storage ready: Postgres database h:1/db answers and is migrated']);
  });
});

import { describe, it, expect, vi, afterEach } from 'vitest';
import { createPacer } from '../src/pacer';

afterEach(() => {
  vi.useRealTimers();
});

describe('pacer', () => {
  it('flushes on the next tick after a quiet spell, then at most once per interval, with everything asked for meanwhile', () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'setImmediate', 'performance'] });
    const flushes: number[] = [];
    let queued = 0;
    const schedule = createPacer(4)(() => {
      flushes.push(queued);
      queued = 0;
    });
    const ask = () => {
      queued++;
      schedule();
    };

    ask();
    expect(flushes).toEqual([]); // not synchronously: the rest of this tick joins
    ask();
    vi.advanceTimersByTime(0); // next tick
    expect(flushes).toEqual([2]);

    // Right after a flush: the next waits out the interval, collecting everything meanwhile.
    ask();
    vi.advanceTimersByTime(1);
    ask();
    ask();
    vi.advanceTimersByTime(2);
    expect(flushes).toEqual([2]);
    vi.advanceTimersByTime(1);
    expect(flushes).toEqual([2, 3]);

    // A quiet spell longer than the interval: next tick again.
    vi.advanceTimersByTime(50);
    ask();
    vi.advanceTimersByTime(0);
    expect(flushes).toEqual([2, 3, 1]);
  });

  it('interval 0 flushes on every next tick', () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'setImmediate', 'performance'] });
    let flushes = 0;
    const schedule = createPacer(0)(() => flushes++);
    for (let i = 0; i < 3; i++) {
      schedule();
      schedule();
      vi.advanceTimersByTime(0);
      expect(flushes).toBe(i + 1);
    }
  });
});

import { describe, it, expect } from 'vitest';
import { createLifecycle, once } from '../src/lifecycle';
import { captureLog } from '../../test/helpers';

const tick = () => new Promise((r) => setTimeout(r, 5));

describe('createLifecycle', () => {
  it('closes components last-added first, each finished before the next starts', async () => {
    const { log } = captureLog();
    const lifecycle = createLifecycle(log);
    const events: string[] = [];
    for (const name of ['redis', 'publisher', 'server']) {
      lifecycle.add(name, async () => {
        events.push(`${name} start`);
        await tick();
        events.push(`${name} done`);
      });
    }
    await lifecycle.close();
    expect(events).toEqual(['server start', 'server done', 'publisher start', 'publisher done', 'redis start', 'redis done']);
  });

  it('a close that throws or rejects is logged with its name and the rest still close', async () => {
    const { log, lines } = captureLog();
    const lifecycle = createLifecycle(log);
    const closed: string[] = [];
    lifecycle.add('pool', () => closed.push('pool'));
    lifecycle.add('writer', () => Promise.reject(new Error('channel gone')));
    lifecycle.add('server', () => {
      throw new Error('not listening');
    });
    await expect(lifecycle.close()).resolves.toBeUndefined();
    expect(closed).toEqual(['pool']);
    const warnings = lines.filter((l) => l.level === 'warn');
    expect(warnings.map((l) => [l.component, l.msg, (l.err as { message?: string }).message])).toEqual([
      ['server', 'closing the server failed', 'not listening'],
      ['writer', 'closing the writer failed', 'channel gone'],
    ]);
  });

  it('close() is idempotent: one promise, each component closed once', async () => {
    const { log } = captureLog();
    const lifecycle = createLifecycle(log);
    let calls = 0;
    lifecycle.add('redis', async () => {
      calls++;
      await tick();
    });
    expect(lifecycle.isClosing).toBe(false);
    const first = lifecycle.close();
    expect(lifecycle.isClosing).toBe(true);
    expect(lifecycle.close()).toBe(first);
    await first;
    await lifecycle.close();
    expect(calls).toBe(1);
  });

  it('a component added while closing is closed too, and one added after close is closed at once', async () => {
    const { log } = captureLog();
    const lifecycle = createLifecycle(log);
    const closed: string[] = [];
    lifecycle.add('pool', () => closed.push('pool'));
    lifecycle.add('sweeper', async () => {
      lifecycle.add('late server', () => closed.push('late server'));
      await tick();
      closed.push('sweeper');
    });
    await lifecycle.close();
    expect(closed).toEqual(['sweeper', 'late server', 'pool']);
    lifecycle.add('after', () => closed.push('after'));
    await tick();
    expect(closed.at(-1)).toBe('after');
  });

  it('with a deadline, a close that hangs is named and left; the ones after it still close', async () => {
    const { log, lines } = captureLog();
    const lifecycle = createLifecycle(log);
    const closed: string[] = [];
    lifecycle.add('redis', () => closed.push('redis'));
    lifecycle.add('publisher', () => new Promise(() => undefined));
    const startedAt = performance.now();
    await lifecycle.close(50);
    expect(performance.now() - startedAt).toBeLessThan(1000);
    expect(closed).toEqual(['redis']);
    expect(lines.filter((l) => l.level === 'warn').map((l) => [l.component, l.msg])).toEqual([['publisher', 'the publisher is still closing at the shutdown deadline; not waiting for it']]);
  });
});

describe('once', () => {
  it('runs the function on the first call and hands every call its promise', async () => {
    let runs = 0;
    const close = once(async () => {
      runs++;
      await tick();
      return runs;
    });
    const a = close();
    const b = close();
    expect(b).toBe(a);
    expect(await a).toBe(1);
    expect(await close()).toBe(1);
    expect(runs).toBe(1);
  });
});

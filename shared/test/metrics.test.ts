import { describe, it, expect } from 'vitest';
import { createMetrics, withDeadline } from '../src/metrics';

describe('createMetrics', () => {
  it('gives each service its own registry: the same series twice in one process do not collide', async () => {
    const a = createMetrics({ service: 'SvWebsocket', instanceId: 'ws-1' });
    const b = createMetrics({ service: 'SvWebsocket', instanceId: 'ws-2' });
    a.counter('things_total', 'things').inc(2);
    b.counter('things_total', 'things').inc(5);
    expect(await a.render()).toMatch(/^simplechat_things_total\{service="SvWebsocket",instance_id="ws-1"\} 2$/m);
    expect(await b.render()).toMatch(/^simplechat_things_total\{service="SvWebsocket",instance_id="ws-2"\} 5$/m);
  });

  it('adds process and Node.js series only when asked', async () => {
    expect(await createMetrics({ service: 'SvDiscover' }).render()).not.toMatch(/process_cpu_seconds_total/);
    expect(await createMetrics({ service: 'SvDiscover', processMetrics: true }).render()).toMatch(/^process_cpu_seconds_total\{service="SvDiscover"\}/m);
  });

  it('reports dependencies read at scrape time', async () => {
    const m = createMetrics({ service: 'SvPersist' });
    let postgres = true;
    m.dependencies(async () => ({ postgres, rabbitmq: false }));
    expect(await m.render()).toMatch(/simplechat_dependency_up\{dependency="postgres",service="SvPersist"\} 1/);
    postgres = false;
    const text = await m.render();
    expect(text).toMatch(/simplechat_dependency_up\{dependency="postgres",service="SvPersist"\} 0/);
    expect(text).toMatch(/simplechat_dependency_up\{dependency="rabbitmq",service="SvPersist"\} 0/);
  });
});

describe('withDeadline', () => {
  it('answers the fallback when the work hangs or fails, and the result otherwise', async () => {
    expect(await withDeadline(new Promise<boolean>(() => undefined), 20, false)).toBe(false);
    expect(await withDeadline(Promise.reject(new Error('down')), 1000, false)).toBe(false);
    expect(await withDeadline(Promise.resolve(true), 1000, false)).toBe(true);
  });
});

/**
 * When internal batches leave: the idempotency reservations, the frames for
 * each peer and the publishes collect what the current tick adds and go out
 * together. Going out on the very next tick makes batches as small as the
 * event loop is fast: at a few thousand messages per second every tick sends
 * its own little Redis call, peer batch and publish, each costing a system
 * call here and a wake-up of the process at the other end, which on a
 * loaded host is most of the CPU a message costs. A pacer lets one batcher
 * flush at most once per `intervalMs`: after a quiet spell the flush still
 * runs on the next tick (no added latency at low rates), and under load the
 * flushes are spaced `intervalMs` apart, so batches grow with the load.
 * intervalMs 0: always the next tick.
 */
export type Pacer = (flush: () => void) => () => void;

export function createPacer(intervalMs: number, now: () => number = () => performance.now()): Pacer {
  return (flush) => {
    let isScheduled = false;
    let lastAt = -Infinity;
    const run = () => {
      isScheduled = false;
      lastAt = now();
      flush();
    };
    return () => {
      if (isScheduled) return;
      isScheduled = true;
      const wait = lastAt + intervalMs - now();
      if (wait <= 0) setImmediate(run);
      else setTimeout(run, wait);
    };
  };
}

/** The next tick, always (what every batcher did before pacing). */
export const eachTick: Pacer = createPacer(0);

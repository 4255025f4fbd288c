/**
 * A tiny typed event emitter that runs in browsers and Node alike (no
 * node:events). A listener that throws is reported on the console and does not
 * stop the other listeners, nor the client that emits.
 */

/** Event name -> listener signature. */
export type EventMap = { [event: string]: (...args: never[]) => void };

export class Emitter<E extends EventMap> {
  private readonly listeners = new Map<keyof E, Set<E[keyof E]>>();

  /** Adds a listener; returns the function that removes it. */
  on<K extends keyof E>(event: K, listener: E[K]): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => void set.delete(listener);
  }

  /** Adds a listener that runs at most once. */
  once<K extends keyof E>(event: K, listener: E[K]): () => void {
    const off = this.on(event, ((...args: Parameters<E[K]>) => {
      off();
      listener(...args);
    }) as E[K]);
    return off;
  }

  emit<K extends keyof E>(event: K, ...args: Parameters<E[K]>): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (err) {
        console.error(`simplechat client: a '${String(event)}' listener threw`, err);
      }
    }
  }
}

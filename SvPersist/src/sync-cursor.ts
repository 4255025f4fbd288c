/**
 * Positions over storage partitions: what a sync cursor, the cursor of a new connection and
 * the notifier's place stand for (their text form is shared/src/wire.ts's CURSOR_RE).
 *
 * Every partition stamps its rows from one sequence under its own lock, so within a
 * partition seq order is commit order; across partitions it is not. A position therefore
 * holds one seq per partition: "every row of partition p with a seq at or below pos[p] has
 * been seen". A partition the position does not name stands at its smallest component:
 * - a plain seq (what a build without partitions handed out) was the place of the one
 *   global order, so it holds for every partition;
 * - a partition created after a position was handed out draws seqs larger than anything
 *   the sequence had handed out then, hence larger than every component.
 */
import { CURSOR_PARTITIONS, UnavailableError } from '@simplechat/shared';

export { CURSOR_PARTITIONS };

export interface Position {
  /** the smallest component: every partition not in `at` stands here */
  readonly base: bigint;
  /** components above base, by partition */
  readonly at: ReadonlyMap<number, bigint>;
}

export const START: Position = { base: 0n, at: new Map() };

/** The component of partition p. */
export function componentOf(pos: Position, partition: number): bigint {
  return pos.at.get(partition) ?? pos.base;
}

/** Builds a position from components (partitions left out stand at `floor`, the smallest of them by default). */
export function positionOf(components: ReadonlyMap<number, bigint>, floor?: bigint): Position {
  let base = floor;
  for (const c of components.values()) if (base === undefined || c < base) base = c;
  const b = base ?? 0n;
  const at = new Map<number, bigint>();
  for (const [p, c] of [...components].sort(([a], [z]) => a - z)) if (c > b) at.set(p, c);
  return { base: b, at };
}

/** The text form: "seq" when every partition stands at one seq. */
export function formatPosition(pos: Position): string {
  let out = pos.base.toString();
  for (const [p, c] of pos.at) if (c > pos.base) out += `.${p}_${(c - pos.base).toString()}`;
  return out;
}

/** Reads a cursor; the HTTP layer has checked its shape (isCursor), so a bad one here is a bug of the caller. */
export function parsePosition(text: string | undefined): Position {
  if (text === undefined) return START;
  const [base, ...parts] = text.split('.');
  if (!/^\d{1,19}$/.test(base ?? '')) throw new UnavailableError(`not a storage cursor: ${JSON.stringify(text)}`);
  const b = BigInt(base as string);
  const at = new Map<number, bigint>();
  for (const part of parts) {
    const [p, delta] = part.split('_');
    const partition = Number(p);
    if (!Number.isInteger(partition) || partition < 0 || partition >= CURSOR_PARTITIONS || !/^\d{1,19}$/.test(delta ?? '')) throw new UnavailableError(`not a storage cursor: ${JSON.stringify(text)}`);
    at.set(partition, b + BigInt(delta as string));
  }
  return { base: b, at };
}

/**
 * Every component of `prev` raised to `next`'s where that is larger: positions never move
 * back. `complete`: `next` names every partition that exists, so the ones it does not name
 * hold no row yet and may stand at its smallest component.
 */
export function atLeast(prev: Position, next: ReadonlyMap<number, bigint>, complete: boolean): Position {
  const merged = new Map<number, bigint>();
  for (const p of new Set([...prev.at.keys(), ...next.keys()])) {
    const was = componentOf(prev, p);
    const now = next.get(p);
    merged.set(p, now !== undefined && now > was ? now : was);
  }
  if (complete && merged.size > 0) return positionOf(merged);
  return positionOf(merged, prev.base);
}

/** The 64 components as a Postgres int8[] bind parameter (index partition + 1). */
export function componentArray(pos: Position): string[] {
  return Array.from({ length: CURSOR_PARTITIONS }, (_, p) => componentOf(pos, p).toString());
}

/** Whether `later` stands at or past `earlier` in every partition. */
export function notBefore(later: Position, earlier: Position): boolean {
  for (let p = 0; p < CURSOR_PARTITIONS; p++) if (componentOf(later, p) < componentOf(earlier, p)) return false;
  return true;
}

/**
 * The books of a cluster suite's fault must balance: stored == acked, each
 * exactly once, every acked message seen by every connection of its
 * recipient, nothing stored that was not acked, no send left unacked.
 */
import { expect } from 'vitest';
import type { Books } from '../faults/books';

export function expectBalanced(books: Books, options: { notes?: string[]; late?: boolean } = {}): void {
  const summary = [...(options.notes ?? []), ...books.details].join('\n');
  expect(books.acked, summary).toBeGreaterThan(0);
  expect(books.lost, summary).toBe(0);
  expect(books.duplicated, summary).toBe(0);
  expect(books.notStored, summary).toBe(0);
  expect(books.notSeen, summary).toBe(0);
  expect(books.unexpectedStored, summary).toBe(0);
  expect(books.unacked, summary).toBe(0);
  // live delivery or sync within the sync interval of storage, where the suite asks for it
  if (options.late) expect(books.late, summary).toBe(0);
  expect(books.stored, summary).toBe(books.acked);
}

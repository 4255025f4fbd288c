/**
 * The write path's partitions. Every conversation belongs to one partition,
 * decided by its key alone, so all of its messages and receipts travel
 * through one queue and are stored under one partition lock, in order.
 * QUEUE_PARTITIONS must be the same on every gateway and every SvPersist.
 */
import type { Conversation } from './conversation';
import { conversationKey } from './conversation';

/** Settings accept 1..MAX_PARTITIONS partitions. */
export const MAX_PARTITIONS = 64;

/** FNV-1a (32 bit) of the key's UTF-16 code units: stable across processes and versions, and cheap. */
function fnv1a(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** The partition (0..partitions-1) of a conversation key ("a:b" or a room id). */
export function partitionOfKey(key: string, partitions: number): number {
  return partitions <= 1 ? 0 : fnv1a(key) % partitions;
}

export function partitionOf(conversation: Conversation, partitions: number): number {
  return partitionOfKey(conversationKey(conversation), partitions);
}

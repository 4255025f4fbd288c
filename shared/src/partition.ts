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

/**
 * FNV-1a (32 bit) of the key's UTF-16 code units, then MurmurHash3's final mix: stable across
 * processes and versions, and cheap. Without the mix, FNV-1a's low bits depend on few input bits
 * (its lowest bit is the parity of the code units' lowest bits), so a count of 2 or 4 would split
 * conversations by a letter's oddness, not evenly.
 */
function hash(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The partition (0..partitions-1) of a conversation key ("a:b" or a room id). */
export function partitionOfKey(key: string, partitions: number): number {
  return partitions <= 1 ? 0 : hash(key) % partitions;
}

export function partitionOf(conversation: Conversation, partitions: number): number {
  return partitionOfKey(conversationKey(conversation), partitions);
}

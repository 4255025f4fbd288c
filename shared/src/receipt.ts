/**
 * A receipt: a user's mark in one conversation, as it travels from the
 * gateway through the queue to storage (the `marks` table). Marks only move
 * forward; storage keeps the greatest of each.
 */
import type { Conversation } from './conversation';
import type { ReceiptKind } from './wire';

export interface Receipt {
  user: string;
  conversation: Conversation;
  kind: ReceiptKind;
  upTo: number;
  /** when the gateway accepted it (ms since the epoch) */
  ts: number;
}

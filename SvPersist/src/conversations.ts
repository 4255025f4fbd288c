/**
 * What a user's conversations are, read from the indexed tables only (never
 * a scan of the user's messages): whom it shares a conversation with.
 */
import type { Sequelize } from 'sequelize';
import { conversationKey, directConversation } from '@simplechat/shared';
import { createSelect, type StorageProblem } from './store';

export interface Conversations {
  /** the users of `others` that share a conversation with `user`: a direct message either way, or a room both are in now */
  sharedWith(user: string, others: readonly string[]): Promise<string[]>;
}

export interface ConversationsDeps {
  sequelize: Sequelize;
  onFailure?(problem: StorageProblem): void;
}

// $1: the user; $2: the others; $3: the key of the direct conversation with each, in the same order.
// A direct conversation exists once a message was accepted in it (it reserved positions).
const SHARED_WITH_SQL = `
  SELECT o.user_id FROM unnest($2::text[], $3::text[]) AS o(user_id, conversation_id)
  WHERE EXISTS (SELECT 1 FROM conversation_positions p WHERE p.conversation_id = o.conversation_id)
     OR EXISTS (SELECT 1 FROM room_members mine JOIN room_members theirs ON theirs.room_id = mine.room_id
                WHERE mine.user_id = $1 AND mine.to_position IS NULL AND theirs.user_id = o.user_id AND theirs.to_position IS NULL)`;

export function createConversations(deps: ConversationsDeps): Conversations {
  const select = createSelect(deps.sequelize, deps.onFailure);
  return {
    async sharedWith(user, others) {
      if (others.length === 0) return [];
      const keys = others.map((o) => conversationKey(directConversation(user, o)));
      const rows = await select<{ user_id: string }>(SHARED_WITH_SQL, [user, others, keys]);
      return rows.map((r) => r.user_id);
    },
  };
}

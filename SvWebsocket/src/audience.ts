/**
 * Who a conversation's messages go to. A direct message reaches both sides
 * (every connection of the recipient and the sender's other connections; a
 * message to oneself reaches the sending connection too). A room message
 * reaches every connection of every member but the sending connection.
 */
import type { Conversation } from '@simplechat/shared';
import type { RoomState } from './membership';

export interface Audience {
  users: readonly string[];
  /** whether the sending connection is left out (it has the ack) */
  skipsSender: boolean;
}

export function directAudience(conversation: Conversation & { kind: 'direct' }, from: string): Audience {
  if (conversation.a === conversation.b) return { users: [from], skipsSender: false };
  return { users: [conversation.a, conversation.b], skipsSender: true };
}

export function roomAudience(room: RoomState): Audience {
  return { users: room.members, skipsSender: true };
}

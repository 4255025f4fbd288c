/**
 * A conversation's Redis keys (its position counter, the end of its block of
 * positions, its receipt marks), which scripts touch together: on a Redis
 * Cluster they share the conversation's hash tag, so its slot.
 *
 * The block end records the replication id of the master that wrote it
 * (`end|replid`): a counter found on another master (a failover, which may
 * have lost the latest positions it handed out: replication is asynchronous)
 * is not trusted, and the next block is asked from storage, which never hands
 * out a position twice. A block end without one (written before) is taken as
 * it is.
 */
import { LUA_REPLID } from '@simplechat/shared';

export interface ConversationKeys {
  position(conversation: string): string;
  blockEnd(conversation: string): string;
  marks(conversation: string): string;
}

export function conversationKeys(keyPrefix: string, tag: (group: string) => string): ConversationKeys {
  return {
    position: (c) => `${keyPrefix}pos:${tag(c)}${c}`,
    blockEnd: (c) => `${keyPrefix}pos-end:${tag(c)}${c}`,
    marks: (c) => `${keyPrefix}marks:${tag(c)}${c}`,
  };
}

/**
 * Lua: counter(positionKey, blockEndKey, rid) returns the last position handed out and the end
 * of the block (either nil when missing); both nil, and deleted, when another master recorded
 * them. block_end(upTo, rid) is the value to record.
 */
export const LUA_COUNTER = `${LUA_REPLID}
local function counter(pk, ek, rid)
  local e = redis.call('GET', ek)
  local pos = tonumber(redis.call('GET', pk))
  if not e then return pos, nil end
  local bar = string.find(e, '|', 1, true)
  if bar and string.sub(e, bar + 1) ~= rid then
    redis.call('DEL', pk, ek)
    return nil, nil
  end
  return pos, tonumber(bar and string.sub(e, 1, bar - 1) or e)
end
local function block_end(upTo, rid)
  return string.format('%d', upTo) .. '|' .. rid
end
`;

/**
 * `typing`: relayed live to the other side of a direct conversation or to a
 * room's other members, never stored. Past the limit (typing.ts), into a room
 * the sender is not in, or to itself, it is dropped without an error.
 */
import { DomainError, type ServerFrame } from '@simplechat/shared';
import type { Handler } from './context';

export const typing: Handler<'typing'> = async (ctx, session, frame) => {
  const from = session.userId as string;
  if (frame.to !== undefined) {
    if (frame.to === from || !ctx.typing.allow(from, `@${frame.to}`)) return;
    ctx.router.route(JSON.stringify({ type: 'typing', from, to: frame.to } satisfies ServerFrame), [frame.to]);
    return;
  }
  if (!ctx.typing.allow(from, `#${frame.room}`)) return;
  let members: readonly string[];
  try {
    const state = await ctx.rooms.target(frame.room);
    if (!state.memberSet.has(from)) return;
    members = state.members;
  } catch (err) {
    if (err instanceof DomainError) return; // no such room: dropped like any typing the sender may not send
    throw err;
  }
  ctx.router.route(JSON.stringify({ type: 'typing', from, room: frame.room } satisfies ServerFrame), members.filter((u) => u !== from));
};

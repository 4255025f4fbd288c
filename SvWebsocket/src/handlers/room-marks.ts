/** `room.marks`: every current member's marks in a room, to its members (an addition to the contract). */
import { DomainError } from '@simplechat/shared';
import { idOf, type Handler } from './context';

export const roomMarks: Handler<'room.marks'> = async (ctx, session, frame) => {
  const state = await ctx.rooms.target(frame.room);
  if (!state.memberSet.has(session.userId as string)) throw new DomainError('forbidden', `you are not a member of room ${frame.room}; only members see its marks`);
  const stored = await ctx.fromStorage('room marks could not be read', () => ctx.persist.roomMarks(frame.room));
  session.send({ type: 'room.marks', ...idOf(frame), ...(await ctx.receipts.current(frame.room, state.members, stored)) });
};

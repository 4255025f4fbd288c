/** `room.marks`: every current member's marks in a room, to its members (an addition to the contract). */
import { idOf, type Handler } from './context';

export const roomMarks: Handler<'room.marks'> = async (ctx, session, frame) => {
  const state = await ctx.rooms.forMember(frame.room, session.userId as string, 'see its marks');
  const stored = await ctx.fromStorage('room marks could not be read', () => ctx.persist.roomMarks(frame.room));
  session.send({ type: 'room.marks', ...idOf(frame), ...(await ctx.receipts.current(frame.room, state.members, stored)) });
};

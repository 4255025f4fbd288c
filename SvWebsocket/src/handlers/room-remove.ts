/** `room.remove`: the owner removes a member (removing a non-member changes nothing). */
import { idOf, type Handler } from './context';

export const roomRemove: Handler<'room.remove'> = async (ctx, session, frame) => {
  session.send({ type: 'room.info', ...idOf(frame), ...(await ctx.rooms.remove({ userId: session.userId as string }, frame.room, frame.userId)) });
};

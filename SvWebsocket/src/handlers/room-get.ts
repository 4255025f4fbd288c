/** `room.get`: the room, to its members. */
import { idOf, type Handler } from './context';

export const roomGet: Handler<'room.get'> = async (ctx, session, frame) => {
  session.send({ type: 'room.info', ...idOf(frame), ...(await ctx.rooms.get({ userId: session.userId as string }, frame.room)) });
};

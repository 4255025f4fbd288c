/** `room.add`: the owner adds a member (adding one twice changes nothing). */
import { idOf, type Handler } from './context';

export const roomAdd: Handler<'room.add'> = async (ctx, session, frame) => {
  session.send({ type: 'room.info', ...idOf(frame), ...(await ctx.rooms.add({ userId: session.userId as string }, frame.room, frame.userId)) });
};

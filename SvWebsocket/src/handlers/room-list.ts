/** `room.list`: the caller's rooms, a page at a time, without member lists. */
import { idOf, type Handler } from './context';

export const roomList: Handler<'room.list'> = async (ctx, session, frame) => {
  const page = await ctx.rooms.list(session.userId as string, frame.after);
  session.send({ type: 'rooms', ...idOf(frame), rooms: page.rooms, more: page.more });
};

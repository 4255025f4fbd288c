/** `room.leave`: a member leaves; an owner hands ownership on, the last member ends the room. */
import { idOf, type Handler } from './context';

export const roomLeave: Handler<'room.leave'> = async (ctx, session, frame) => {
  await ctx.rooms.leave(session.userId as string, frame.room);
  session.send({ type: 'room.left', ...idOf(frame), room: frame.room });
};

/** One handler per client frame type; the gateway only dispatches through this table. */
import type { HandlerTable } from './context';
import { history } from './history';
import { refresh } from './refresh';
import { register } from './register';
import { roomCreate } from './room-create';
import { roomAdd } from './room-add';
import { roomRemove } from './room-remove';
import { roomLeave } from './room-leave';
import { roomGet } from './room-get';
import { roomList } from './room-list';
import { roomMarks } from './room-marks';
import { conversations } from './conversations';
import { mute } from './mute';
import { presenceUnwatch } from './presence-unwatch';
import { presenceWatch } from './presence-watch';
import { receipt } from './receipt';
import { send } from './send';
import { typing } from './typing';
import { sync } from './sync';

export const handlers: HandlerTable = {
  register,
  refresh,
  send,
  history,
  sync,
  'room.create': roomCreate,
  'room.add': roomAdd,
  'room.remove': roomRemove,
  'room.leave': roomLeave,
  'room.get': roomGet,
  'room.list': roomList,
  'room.marks': roomMarks,
  'presence.watch': presenceWatch,
  'presence.unwatch': presenceUnwatch,
  typing,
  receipt,
  conversations,
  mute,
};
export type { GatewayContext } from './context';

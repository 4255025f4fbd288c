/** One handler per client frame type; the gateway only dispatches through this table. */
import type { HandlerTable } from './context';
import { history } from './history';
import { refresh } from './refresh';
import { register } from './register';
import { send } from './send';
import { sync } from './sync';

export const handlers: HandlerTable = { register, refresh, send, history, sync };
export type { GatewayContext } from './context';

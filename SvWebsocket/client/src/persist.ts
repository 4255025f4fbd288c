/**
 * What survives a reload, in localStorage, one entry per user: the saved sync
 * cursor, the open conversation, known peers, the names of
 * the rooms seen (a former member may no longer ask for them) and the unacked
 * outbox (resent with the same ids, so a reload never duplicates a message).
 * Tokens are not stored. Storage may be unavailable (private mode, quota):
 * then the page simply forgets on reload.
 */

import { parseOutbox, type OutboxEntry } from './esm/index.js';

const PREFIX = 'simplechat:v1:';
const MAX_PEERS = 200;
const MAX_ROOM_NAMES = 500;

export interface UserState {
  cursor?: string;
  /** The open conversation: a peer's user id, or a room key (see store.ts). */
  peer?: string;
  /** Per peer, the time of the newest message seen (orders the conversation list after a reload). */
  peers: Record<string, number>;
  /** Room id -> name. */
  roomNames: Record<string, string>;
  /** The client's unacked sends (its persistence: see session.ts). */
  outbox: OutboxEntry[];
}

function read(key: string): unknown {
  try {
    const raw = localStorage.getItem(PREFIX + key);
    return raw === null ? undefined : JSON.parse(raw);
  } catch {
    return undefined;
  }
}

function write(key: string, value: unknown): void {
  try {
    localStorage.setItem(PREFIX + key, JSON.stringify(value));
  } catch {
    // Quota or disabled storage: persistence is best effort.
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function stringMap(v: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (isRecord(v)) for (const [k, x] of Object.entries(v)) if (typeof x === 'string') out[k] = x;
  return out;
}

function numberMap(v: unknown): Record<string, number> {
  const out: Record<string, number> = {};
  if (isRecord(v)) for (const [k, x] of Object.entries(v)) if (typeof x === 'number') out[k] = x;
  return out;
}

export function loadLastUser(): string | undefined {
  const v = read('lastUser');
  return typeof v === 'string' ? v : undefined;
}

export function saveLastUser(userId: string): void {
  write('lastUser', userId);
}

export function loadUserState(userId: string): UserState {
  const v = read(`user:${userId}`);
  const o = isRecord(v) ? v : {};
  return {
    cursor: typeof o['cursor'] === 'string' ? o['cursor'] : undefined,
    peer: typeof o['peer'] === 'string' ? o['peer'] : undefined,
    peers: numberMap(o['peers']),
    roomNames: stringMap(o['roomNames']),
    outbox: parseOutbox(o['outbox']),
  };
}

export function saveUserState(userId: string, state: UserState): void {
  const peers = Object.entries(state.peers)
    .sort((a, b) => b[1] - a[1])
    .slice(0, MAX_PEERS);
  const roomNames = Object.entries(state.roomNames).slice(-MAX_ROOM_NAMES);
  write(`user:${userId}`, { ...state, peers: Object.fromEntries(peers), roomNames: Object.fromEntries(roomNames) });
}

/**
 * The page: wires the form fields to a session and renders the store: the
 * conversation list (./sidebar), the open conversation with its peer's
 * presence, who is typing and the receipt ticks of this user's messages, and
 * the room panel. Every piece of user or server text goes into the DOM
 * through textContent or an attribute, never as markup.
 */
import { hhmm, make, presenceDot, presenceText, reconcile, setText, updatePresenceDot } from './dom.js';
import { loadLastUser, loadUserState, saveLastUser, saveUserState, type UserState } from './persist.js';
import { createSession, fetchDevToken, type Session, type Status } from './session.js';
import { createSidebar } from './sidebar.js';
import { createChatStore, roomKey, roomOfKey, type ChatMessage, type ChatStore, type RoomNote } from './store.js';
import { typingText } from './typing.js';
import { MAX_IDS_PER_FRAME, USER_ID_RE, USER_ID_RULE } from './esm/index.js';

const PEER_INPUT_DEBOUNCE_MS = 500;
const PERSIST_DEBOUNCE_MS = 100;
/** "last seen 5 min ago" is worded again this often */
const RELATIVE_TIME_REFRESH_MS = 30_000;
/** Within this many pixels of the bottom, new messages keep the view pinned to the bottom. */
const STICKY_PX = 48;

function byId<T extends HTMLElement>(id: string, type: { new (): T }): T {
  const el = document.getElementById(id);
  if (!(el instanceof type)) throw new Error(`index.html lacks #${id}`);
  return el;
}

const ui = {
  login: byId('login', HTMLFormElement),
  user: byId('user', HTMLInputElement),
  peer: byId('peer', HTMLInputElement),
  status: byId('status', HTMLElement),
  statusText: byId('status-text', HTMLElement),
  notice: byId('notice', HTMLElement),
  noticeText: byId('notice-text', HTMLElement),
  noticeClose: byId('notice-close', HTMLButtonElement),
  roomForm: byId('room-form', HTMLFormElement),
  roomName: byId('room-name', HTMLInputElement),
  roomMembers: byId('room-members', HTMLInputElement),
  roomPanel: byId('room-panel', HTMLElement),
  members: byId('members', HTMLUListElement),
  memberForm: byId('member-form', HTMLFormElement),
  memberId: byId('member-id', HTMLInputElement),
  roomLeave: byId('room-leave', HTMLButtonElement),
  roomState: byId('room-state', HTMLElement),
  send: byId('send', HTMLButtonElement),
  conversations: byId('conversations', HTMLUListElement),
  convEmpty: byId('conv-empty', HTMLElement),
  chatTitle: byId('chat-title', HTMLElement),
  chatPresence: byId('chat-presence', HTMLElement),
  chatPresenceText: byId('chat-presence-text', HTMLElement),
  mute: byId('mute', HTMLButtonElement),
  typing: byId('typing', HTMLElement),
  scroller: byId('scroller', HTMLElement),
  older: byId('older', HTMLButtonElement),
  messages: byId('messages', HTMLOListElement),
  chatEmpty: byId('chat-empty', HTMLElement),
  composer: byId('composer', HTMLFormElement),
  message: byId('message', HTMLTextAreaElement),
};

let session: Session | undefined;
let store: ChatStore | undefined;
let userState: UserState | undefined;
let current: string | undefined;
let status: Status = { kind: 'offline' };
const sidebar = createSidebar(ui.conversations, ui.convEmpty, (key) => {
  openConversation(key);
  ui.message.focus();
});
const chatDot = presenceDot();
ui.chatPresence.prepend(chatDot);

// ---- persistence ----------------------------------------------------------------

let persistTimer: ReturnType<typeof setTimeout> | undefined;
function schedulePersist(): void {
  persistTimer ??= setTimeout(flushPersist, PERSIST_DEBOUNCE_MS);
}
function flushPersist(): void {
  clearTimeout(persistTimer);
  persistTimer = undefined;
  if (session && userState) saveUserState(session.userId, userState);
}

// ---- notices --------------------------------------------------------------------

let noticeRepeat = 1;
function showNotice(text: string): void {
  if (!ui.notice.hidden && ui.notice.dataset['text'] === text) {
    noticeRepeat++;
    ui.noticeText.textContent = `${text} (×${noticeRepeat})`;
    return;
  }
  noticeRepeat = 1;
  ui.notice.dataset['text'] = text;
  ui.noticeText.textContent = text;
  ui.notice.hidden = false;
}
function hideNotice(): void {
  ui.notice.hidden = true;
  delete ui.notice.dataset['text'];
}

// ---- sessions ---------------------------------------------------------------------

function wsUrl(): string {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

function connect(): void {
  const userId = ui.user.value.trim();
  const peer = ui.peer.value.trim();
  if (userId === '') {
    showNotice('Enter your user id first.');
    ui.user.focus();
    return;
  }
  if (peer !== '' && !USER_ID_RE.test(peer)) {
    showNotice(`"Chat with" must be ${USER_ID_RULE}.`);
    ui.peer.focus();
    return;
  }
  if (session && session.userId === userId) {
    if (peer !== '') openConversation(peer);
    session.start();
    return;
  }
  if (session) {
    session.stop();
    flushPersist();
  }
  hideNotice();
  saveLastUser(userId);
  const state = loadUserState(userId);
  userState = state;
  current = undefined;
  renderedFor = undefined;
  sidebar.clear();
  memberEls.clear();
  store = createChatStore({
    me: userId,
    peers: state.peers,
    roomNames: state.roomNames,
    onChange: () => {
      schedulePersist();
      scheduleRender();
    },
  });
  session = createSession({
    userId,
    wsUrl: wsUrl(),
    fetchToken: fetchDevToken,
    store,
    state,
    persist: schedulePersist,
    onStatus: (s) => {
      status = s;
      renderStatus();
    },
    onNotice: showNotice,
    onUpdate: scheduleRender,
    onRoomCreated: (room) => {
      ui.roomName.value = '';
      ui.roomMembers.value = '';
      openConversation(roomKey(room));
      ui.message.focus();
    },
  });
  session.setVisible(document.visibilityState === 'visible');
  const first = peer !== '' ? peer : state.peer;
  if (first !== undefined) openConversation(first);
  session.start();
  scheduleRender();
  ui.message.focus();
}

/** Opens a conversation: a peer's user id, or a room key. */
function openConversation(key: string): void {
  const isRoom = roomOfKey(key) !== undefined;
  // "Chat with" names the peer of a direct chat; a room is picked from the list.
  const shown = isRoom ? '' : key;
  if (ui.peer.value.trim() !== shown) ui.peer.value = shown;
  if (!session) return;
  if (current !== key) {
    current = key;
    scheduleRender();
  }
  session.openConversation(key);
}

function sendMessage(): void {
  const body = ui.message.value;
  if (body.trim() === '') return;
  if (!session) {
    showNotice('Connect first: enter your user id and press Connect.');
    ui.user.focus();
    return;
  }
  const room = current !== undefined ? roomOfKey(current) : undefined;
  if (current !== undefined && room !== undefined) {
    if (store?.room(room)?.isMember === false) {
      showNotice('You are no longer a member of this room: it cannot be sent to.');
      return;
    }
    session.send(current, body);
    ui.message.value = '';
    isPinnedNext = true;
    return;
  }
  const peer = ui.peer.value.trim();
  if (!USER_ID_RE.test(peer)) {
    showNotice(`Who is it for? "Chat with" must be ${USER_ID_RULE}.`);
    ui.peer.focus();
    return;
  }
  openConversation(peer);
  session.send(peer, body);
  ui.message.value = '';
  isPinnedNext = true;
}

/** Reads the "New room" form: a name and comma-separated user ids. */
function createRoom(): void {
  if (!session) {
    showNotice('Connect first: enter your user id and press Connect.');
    ui.user.focus();
    return;
  }
  const name = ui.roomName.value.trim();
  if (name === '') {
    showNotice('Give the room a name.');
    ui.roomName.focus();
    return;
  }
  const members = [...new Set(ui.roomMembers.value.split(/[\s,]+/).filter((u) => u !== '' && u !== session?.userId))];
  const bad = members.find((u) => !USER_ID_RE.test(u));
  if (bad !== undefined) {
    showNotice(`"${bad}" is not a user id: members must be ${USER_ID_RULE}, separated by commas.`);
    ui.roomMembers.focus();
    return;
  }
  if (members.length > MAX_IDS_PER_FRAME) {
    showNotice(`At most ${MAX_IDS_PER_FRAME} members at creation; add the others afterwards.`);
    return;
  }
  session.createRoom(name, members);
}

function addMember(): void {
  const room = current !== undefined ? roomOfKey(current) : undefined;
  if (!session || room === undefined) return;
  const userId = ui.memberId.value.trim();
  if (!USER_ID_RE.test(userId)) {
    showNotice(`A member's user id must be ${USER_ID_RULE}.`);
    ui.memberId.focus();
    return;
  }
  session.addMember(room, userId);
  ui.memberId.value = '';
}

// ---- rendering ----------------------------------------------------------------------

let isRenderScheduled = false;
let isRendering = false;
function scheduleRender(): void {
  if (isRenderScheduled || isRendering) return;
  isRenderScheduled = true;
  queueMicrotask(() => {
    isRenderScheduled = false;
    render();
  });
}

function render(): void {
  isRendering = true;
  try {
    renderStatus();
    renderConversations();
    renderMessagesAndPanel();
  } finally {
    isRendering = false;
  }
}

let countdown: ReturnType<typeof setInterval> | undefined;
function renderStatus(): void {
  const who = session?.userId ?? '';
  let text: string;
  switch (status.kind) {
    case 'offline':
      text = status.reason ? `offline: ${status.reason}` : 'offline';
      break;
    case 'connecting':
      text = 'connecting…';
      break;
    case 'online':
      text = `online as ${who} on ${status.instanceId}`;
      break;
    case 'reconnecting':
      text = `reconnecting in ${Math.max(0, Math.ceil((status.at - Date.now()) / 1000))}s`;
      break;
  }
  ui.status.dataset['state'] = status.kind;
  if (ui.statusText.textContent !== text) ui.statusText.textContent = text;
  if (status.kind === 'reconnecting') countdown ??= setInterval(renderStatus, 250);
  else if (countdown !== undefined) {
    clearInterval(countdown);
    countdown = undefined;
  }
}

function renderConversations(): void {
  const entries = store ? store.summaries(current) : [];
  const s = session;
  const unread = sidebar.render({
    me: store?.me,
    current,
    entries,
    unread: (key) => s?.unread(key) ?? 0,
    isMuted: (key) => s?.isMuted(key) ?? false,
    presenceOf: (user) => s?.presenceOf(user),
    typists: (key) => s?.typists(key) ?? [],
  });
  document.title = unread > 0 ? `(${unread}) SimpleChat` : 'SimpleChat';
  // Presence of the peers the page shows: the list's direct conversations and the open one.
  const users = entries.filter((e) => e.room === undefined).map((e) => e.key);
  if (current !== undefined && roomOfKey(current) === undefined) users.unshift(current);
  s?.watch(users);
}

interface MsgEl {
  li: HTMLLIElement;
  from: HTMLElement;
  time: HTMLTimeElement;
  tick: HTMLElement;
  fail: HTMLElement;
  failText: HTMLElement;
}
let msgEls = new WeakMap<ChatMessage, MsgEl>();
let noteEls = new WeakMap<RoomNote, HTMLLIElement>();
let renderedFor: string | undefined;
let isPinnedNext = false;
/** Distance from the bottom to keep while older messages are prepended. */
let olderAnchor: number | undefined;

function msgEl(m: ChatMessage): MsgEl {
  let e = msgEls.get(m);
  if (e) return e;
  const li = make('li', 'msg');
  li.dataset['testid'] = 'msg';
  const from = make('div', 'from');
  from.dataset['testid'] = 'msg-from';
  const bubble = make('div', 'bubble');
  const body = make('div', 'body', m.body);
  const meta = make('div', 'meta');
  const time = make('time');
  const tick = make('span', 'tick');
  meta.append(time, tick);
  bubble.append(body, meta);
  const fail = make('div', 'fail');
  const failText = make('span');
  fail.append(failText);
  li.append(from, bubble, fail);
  e = { li, from, time, tick, fail, failText };
  msgEls.set(m, e);
  return e;
}

const STATE_LABEL: Record<ChatMessage['state'], string> = {
  sending: 'sending…',
  sent: 'sent',
  failed: 'not sent',
  received: '',
};

/** One tick once delivered, two once read. */
const TICK_TEXT = { sent: 'sent', delivered: '✓', read: '✓✓' } as const;

function updateMsgEl(e: MsgEl, m: ChatMessage, me: string, key: string): void {
  const isOwn = m.from === me;
  e.li.classList.toggle('own', isOwn);
  e.li.classList.toggle('theirs', !isOwn);
  e.li.dataset['state'] = m.state;
  // In a room each message says who wrote it.
  e.from.hidden = m.room === undefined || isOwn;
  setText(e.from, m.room !== undefined && !isOwn ? m.from : '');
  e.li.dataset['msgid'] = m.msgId ?? '';
  if (m.cid !== undefined) e.li.dataset['cid'] = m.cid;
  if (m.ts !== undefined) {
    setText(e.time, hhmm(m.ts));
    const d = new Date(m.ts);
    e.time.dateTime = d.toISOString();
    e.time.title = d.toLocaleString();
  }
  const tick = session?.tick(m, key);
  setText(e.tick, tick ? TICK_TEXT[tick.state] : STATE_LABEL[m.state]);
  if (tick) {
    e.li.dataset['receipt'] = tick.state;
    e.tick.title = tick.label;
    e.tick.setAttribute('aria-label', tick.label);
  } else {
    delete e.li.dataset['receipt'];
    e.tick.removeAttribute('title');
    e.tick.removeAttribute('aria-label');
  }
  e.fail.hidden = m.state !== 'failed';
  setText(e.failText, m.state === 'failed' ? `Not sent: ${m.error ?? 'refused by the server'}` : '');
}

function renderMessagesAndPanel(): void {
  renderChatHead();
  renderRoomPanel();
  renderMessages();
}

/** The open conversation's peer presence, who is typing in it, and its mute toggle. */
function renderChatHead(): void {
  const peer = current !== undefined && roomOfKey(current) === undefined ? current : undefined;
  const p = peer !== undefined ? session?.presenceOf(peer) : undefined;
  ui.chatPresence.hidden = peer === undefined;
  if (peer !== undefined) updatePresenceDot(chatDot, peer, p);
  setText(ui.chatPresenceText, presenceText(p));

  const typing = current !== undefined && session ? typingText(session.typists(current)) : '';
  setText(ui.typing, typing);
  ui.typing.hidden = typing === '';

  const isMuted = current !== undefined && session ? session.isMuted(current) : false;
  ui.mute.hidden = current === undefined || !session;
  ui.mute.setAttribute('aria-pressed', String(isMuted));
  setText(ui.mute, isMuted ? 'Unmute' : 'Mute');
  ui.mute.title = isMuted ? 'Muted: its unread messages do not count in the page title' : 'Mute this conversation';
}

function renderMessages(): void {
  const conv = store && current !== undefined ? store.conversation(current) : undefined;
  const isSwitch = renderedFor !== current;
  if (isSwitch) {
    msgEls = new WeakMap();
    noteEls = new WeakMap();
    olderAnchor = undefined;
  }
  const sc = ui.scroller;
  const wasAtBottom = sc.scrollHeight - sc.scrollTop - sc.clientHeight < STICKY_PX;

  const room = current !== undefined ? roomOfKey(current) : undefined;
  const roomName = room !== undefined ? (store?.room(room)?.name ?? room) : undefined;
  setText(ui.chatTitle, current === undefined ? 'No conversation open' : roomName !== undefined ? `Room: ${roomName}` : `Chat with ${current}`);
  const els: HTMLElement[] = [];
  if (conv && store) {
    for (const item of store.timeline(conv.key)) {
      if (item.kind === 'note') {
        els.push(noteEl(item.n, store.me));
        continue;
      }
      const e = msgEl(item.m);
      updateMsgEl(e, item.m, store.me, conv.key);
      els.push(e.li);
    }
  }
  reconcile(ui.messages, els);

  ui.older.hidden = !conv || !conv.hasOlder || conv.messages.length === 0;
  ui.older.disabled = conv?.history === 'loading';
  setText(ui.older, conv?.history === 'loading' ? 'Loading…' : 'Load older messages');

  let empty = '';
  if (!session) empty = 'Enter your user id and who to chat with, then press Connect.';
  else if (!conv) empty = 'Pick a conversation, or type a user id in “Chat with”.';
  else if (conv.messages.length === 0 && conv.notes.length === 0) empty = conv.history === 'loading' ? 'Loading history…' : 'No messages yet. Say hello!';
  setText(ui.chatEmpty, empty);
  ui.chatEmpty.hidden = empty === '';

  if (olderAnchor !== undefined && conv?.history !== 'loading') {
    sc.scrollTop = sc.scrollHeight - olderAnchor;
    olderAnchor = undefined;
  } else if (isSwitch || isPinnedNext || wasAtBottom) {
    sc.scrollTop = sc.scrollHeight;
  }
  isPinnedNext = false;
  renderedFor = current;
}

function noteText(n: RoomNote, me: string): string {
  const who = n.userId === me ? 'you' : n.userId;
  const by = n.by === null ? 'the server' : n.by === me ? 'you' : n.by;
  const was = n.userId === me ? 'were' : 'was';
  let text: string;
  switch (n.event) {
    case 'created':
      text = `${who} created the room`;
      break;
    case 'added':
      text = `${who} ${was} added by ${by}`;
      break;
    case 'removed':
      text = `${who} ${was} removed by ${by}`;
      break;
    case 'left':
      text = `${who} left`;
      break;
    case 'owner':
      text = n.userId === me ? 'you are now the owner' : `${who} is now the owner`;
      break;
  }
  // User ids are case-sensitive: only "you" is capitalized.
  return text.startsWith('you') ? `Y${text.slice(1)}` : text;
}

function noteEl(n: RoomNote, me: string): HTMLLIElement {
  let li = noteEls.get(n);
  if (li) return li;
  li = make('li', 'note');
  li.dataset['testid'] = 'room-note';
  li.dataset['event'] = n.event;
  const time = make('time', undefined, hhmm(n.ts));
  time.dateTime = new Date(n.ts).toISOString();
  li.append(make('span', undefined, noteText(n, me)), time);
  noteEls.set(n, li);
  return li;
}

interface MemberEl {
  li: HTMLLIElement;
  tag: HTMLElement;
  remove: HTMLButtonElement;
}
const memberEls = new Map<string, MemberEl>();

function memberEl(userId: string): MemberEl {
  let e = memberEls.get(userId);
  if (e) return e;
  const li = make('li', 'member');
  li.dataset['testid'] = 'member';
  li.dataset['user'] = userId;
  const tag = make('span', 'member-tag');
  const remove = make('button', 'member-remove', '×');
  remove.type = 'button';
  remove.dataset['testid'] = 'member-remove';
  remove.setAttribute('aria-label', `Remove ${userId}`);
  remove.title = `Remove ${userId}`;
  remove.addEventListener('click', () => {
    const room = current !== undefined ? roomOfKey(current) : undefined;
    if (room !== undefined) session?.removeMember(room, userId);
  });
  li.append(make('span', 'member-name', userId), tag, remove);
  e = { li, tag, remove };
  memberEls.set(userId, e);
  return e;
}

/** The members panel of an open room, and the composer: disabled once this user is out of the room. */
function renderRoomPanel(): void {
  const roomId = current !== undefined ? roomOfKey(current) : undefined;
  const r = roomId !== undefined ? store?.room(roomId) : undefined;
  ui.roomPanel.hidden = roomId === undefined;
  const me = store?.me;
  const isLeft = r?.isMember === false;
  const isOwner = r !== undefined && !isLeft && r.owner === me;
  const els: HTMLElement[] = [];
  for (const u of r?.members ?? []) {
    const e = memberEl(u);
    setText(e.tag, u === r?.owner ? 'owner' : u === me ? 'you' : '');
    e.tag.hidden = e.tag.textContent === '';
    e.remove.hidden = !isOwner || u === me;
    els.push(e.li);
  }
  reconcile(ui.members, els);
  ui.memberForm.hidden = !isOwner;
  ui.roomLeave.hidden = roomId === undefined || isLeft || r?.isMember === undefined;
  let state = '';
  if (roomId !== undefined && isLeft) state = 'You are no longer a member of this room: you can read what you saw, but not send.';
  else if (roomId !== undefined && r?.members === undefined) state = r?.memberCount !== undefined ? `${r.memberCount} members` : 'Loading members…';
  setText(ui.roomState, state);
  ui.roomState.hidden = state === '';
  ui.roomPanel.dataset['left'] = String(isLeft);

  ui.message.disabled = isLeft;
  ui.send.disabled = isLeft;
  ui.message.placeholder = isLeft ? 'You left this room.' : 'Write a message. Enter sends, Shift+Enter adds a line.';
}

// ---- events ---------------------------------------------------------------------------

ui.login.addEventListener('submit', (ev) => {
  ev.preventDefault();
  connect();
});

let peerTimer: ReturnType<typeof setTimeout> | undefined;
ui.peer.addEventListener('input', () => {
  clearTimeout(peerTimer);
  peerTimer = setTimeout(() => {
    const peer = ui.peer.value.trim();
    if (USER_ID_RE.test(peer)) openConversation(peer);
  }, PEER_INPUT_DEBOUNCE_MS);
});
ui.peer.addEventListener('change', () => {
  clearTimeout(peerTimer);
  const peer = ui.peer.value.trim();
  if (peer === '') return;
  if (USER_ID_RE.test(peer)) openConversation(peer);
  else showNotice(`"Chat with" must be ${USER_ID_RULE}.`);
});

ui.roomForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  createRoom();
});

ui.memberForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  addMember();
});

ui.roomLeave.addEventListener('click', () => {
  const room = current !== undefined ? roomOfKey(current) : undefined;
  if (session && room !== undefined) session.leaveRoom(room);
});

ui.composer.addEventListener('submit', (ev) => {
  ev.preventDefault();
  sendMessage();
});
ui.message.addEventListener('input', () => {
  if (current !== undefined && ui.message.value.trim() !== '') session?.typing(current);
});
ui.mute.addEventListener('click', () => {
  if (session && current !== undefined) session.mute(current, !session.isMuted(current));
});
ui.message.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    sendMessage();
  }
});

ui.older.addEventListener('click', () => {
  if (!session || current === undefined) return;
  olderAnchor = ui.scroller.scrollHeight - ui.scroller.scrollTop;
  session.loadOlder(current);
});

ui.noticeClose.addEventListener('click', hideNotice);

window.addEventListener('online', () => session?.reconnectNow());
window.addEventListener('pagehide', flushPersist);
document.addEventListener('visibilitychange', () => {
  const isVisible = document.visibilityState === 'visible';
  session?.setVisible(isVisible);
  if (!isVisible) flushPersist();
  else {
    scheduleRender();
    session?.syncNow();
  }
});
setInterval(scheduleRender, RELATIVE_TIME_REFRESH_MS);

// ---- debugging hook ---------------------------------------------------------------------

interface DebugState {
  readonly status: Status['kind'];
  readonly [key: string]: unknown;
}
declare global {
  interface Window {
    simplechat: { readonly state: DebugState };
  }
}

Object.defineProperty(window, 'simplechat', {
  value: Object.freeze({
    get state(): DebugState {
      const conversations =
        store?.summaries(current).map((s) => Object.freeze({ key: s.key, title: s.title, room: s.room, isLeft: s.isLeft, unread: session?.unread(s.key) ?? 0 })) ?? [];
      const base = session?.snapshot();
      return Object.freeze({ ...base, status: status.kind, conversations: Object.freeze(conversations) });
    },
  }),
  enumerable: true,
});

// ---- start ------------------------------------------------------------------------------

{
  const params = new URLSearchParams(location.search);
  const userId = params.get('user') ?? loadLastUser();
  const peer = params.get('peer') ?? (userId !== undefined ? loadUserState(userId).peer : undefined);
  if (userId) ui.user.value = userId;
  // The saved conversation may be a room (reopened by connect), not a peer for "Chat with".
  if (peer && roomOfKey(peer) === undefined) ui.peer.value = peer;
  render();
  // A reload (or ?user=) picks the session up again.
  if (userId && USER_ID_RE.test(userId)) connect();
  else ui.user.focus();
}

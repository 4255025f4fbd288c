/**
 * The page: wires the form fields to a session and renders the store. Every
 * piece of user or server text goes into the DOM through textContent or an
 * attribute, never as markup.
 */
import { loadLastUser, loadUserState, saveLastUser, saveUserState, type UserState } from './persist.js';
import { createSession, fetchDevToken, type Session, type Status } from './session.js';
import { createChatStore, type ChatMessage, type ChatStore, type ConversationSummary } from './store.js';
import { hhmm } from './util.js';
import { USER_ID_RE, USER_ID_RULE } from './wire.js';

const PEER_INPUT_DEBOUNCE_MS = 500;
const PERSIST_DEBOUNCE_MS = 100;
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
  conversations: byId('conversations', HTMLUListElement),
  convEmpty: byId('conv-empty', HTMLElement),
  chatTitle: byId('chat-title', HTMLElement),
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
  convEls.clear();
  store = createChatStore({
    me: userId,
    readUpTo: state.readUpTo,
    peers: state.peers,
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
  });
  const first = peer !== '' ? peer : state.peer;
  if (first !== undefined) openConversation(first);
  session.start();
  scheduleRender();
  ui.message.focus();
}

function openConversation(peer: string): void {
  if (ui.peer.value.trim() !== peer) ui.peer.value = peer;
  if (!session) return;
  if (current !== peer) {
    current = peer;
    scheduleRender();
  }
  session.openConversation(peer);
}

function sendMessage(): void {
  const body = ui.message.value;
  if (body.trim() === '') return;
  if (!session) {
    showNotice('Connect first: enter your user id and press Connect.');
    ui.user.focus();
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
    if (store && current !== undefined) store.markRead(current);
    renderStatus();
    renderConversations();
    renderMessages();
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

/** Puts `els` into `parent` in this order, moving as little as possible, and drops the rest. */
function reconcile(parent: HTMLElement, els: readonly HTMLElement[]): void {
  let ref = parent.firstChild;
  for (const el of els) {
    if (el === ref) ref = ref.nextSibling;
    else parent.insertBefore(el, ref);
  }
  while (ref) {
    const next = ref.nextSibling;
    ref.remove();
    ref = next;
  }
}

function make<K extends keyof HTMLElementTagNameMap>(tag: K, className?: string, text?: string): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function setText(el: HTMLElement, text: string): void {
  if (el.textContent !== text) el.textContent = text;
}

function shortTime(ts: number): string {
  const d = new Date(ts);
  const now = new Date();
  return d.toDateString() === now.toDateString() ? hhmm(ts) : d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
}

interface ConvEl {
  li: HTMLLIElement;
  button: HTMLButtonElement;
  time: HTMLElement;
  preview: HTMLElement;
  badge: HTMLElement;
}
const convEls = new Map<string, ConvEl>();

function convEl(peer: string): ConvEl {
  let c = convEls.get(peer);
  if (c) return c;
  const li = make('li');
  const button = make('button', 'conv');
  button.type = 'button';
  button.dataset['testid'] = 'conversation';
  button.dataset['peer'] = peer;
  const name = make('span', 'conv-name', peer);
  const time = make('span', 'conv-time');
  const preview = make('span', 'conv-preview');
  const badge = make('span', 'badge');
  badge.dataset['testid'] = 'unread';
  button.append(name, time, preview, badge);
  button.addEventListener('click', () => {
    openConversation(peer);
    ui.message.focus();
  });
  li.append(button);
  c = { li, button, time, preview, badge };
  convEls.set(peer, c);
  return c;
}

function renderConversations(): void {
  const list: ConversationSummary[] = store ? store.summaries(current) : [];
  const els: HTMLElement[] = [];
  let totalUnread = 0;
  for (const s of list) {
    const c = convEl(s.peer);
    totalUnread += s.unread;
    if (s.peer === current) c.button.setAttribute('aria-current', 'true');
    else c.button.removeAttribute('aria-current');
    setText(c.time, s.lastAt > 0 ? shortTime(s.lastAt) : '');
    const last = s.last;
    setText(c.preview, last ? `${last.from === store?.me ? 'You: ' : ''}${last.body.replace(/\s+/g, ' ').slice(0, 80)}` : '');
    setText(c.badge, s.unread > 0 ? String(s.unread) : '');
    c.badge.hidden = s.unread === 0;
    c.button.setAttribute('aria-label', `${s.peer}${s.unread > 0 ? `, ${s.unread} unread` : ''}`);
    els.push(c.li);
  }
  reconcile(ui.conversations, els);
  ui.convEmpty.hidden = list.length > 0;
  document.title = totalUnread > 0 ? `(${totalUnread}) SimpleChat` : 'SimpleChat';
}

interface MsgEl {
  li: HTMLLIElement;
  time: HTMLTimeElement;
  tick: HTMLElement;
  fail: HTMLElement;
  failText: HTMLElement;
  retry: HTMLButtonElement;
}
let msgEls = new WeakMap<ChatMessage, MsgEl>();
let renderedFor: string | undefined;
let isPinnedNext = false;
/** Distance from the bottom to keep while older messages are prepended. */
let olderAnchor: number | undefined;

function msgEl(m: ChatMessage): MsgEl {
  let e = msgEls.get(m);
  if (e) return e;
  const li = make('li', 'msg');
  li.dataset['testid'] = 'msg';
  const bubble = make('div', 'bubble');
  const body = make('div', 'body', m.body);
  const meta = make('div', 'meta');
  const time = make('time');
  const tick = make('span', 'tick');
  meta.append(time, tick);
  bubble.append(body, meta);
  const fail = make('div', 'fail');
  const failText = make('span');
  const retry = make('button', 'retry', 'Retry');
  retry.type = 'button';
  retry.addEventListener('click', () => {
    if (m.cid !== undefined) session?.retry(m.cid);
  });
  fail.append(failText, retry);
  li.append(bubble, fail);
  e = { li, time, tick, fail, failText, retry };
  msgEls.set(m, e);
  return e;
}

const STATE_LABEL: Record<ChatMessage['state'], string> = {
  sending: 'sending…',
  sent: 'sent',
  failed: 'not sent',
  received: '',
};

function updateMsgEl(e: MsgEl, m: ChatMessage, me: string): void {
  const isOwn = m.from === me;
  e.li.classList.toggle('own', isOwn);
  e.li.classList.toggle('theirs', !isOwn);
  e.li.dataset['state'] = m.state;
  e.li.dataset['msgid'] = m.msgId ?? '';
  if (m.cid !== undefined) e.li.dataset['cid'] = m.cid;
  if (m.ts !== undefined) {
    setText(e.time, hhmm(m.ts));
    const d = new Date(m.ts);
    e.time.dateTime = d.toISOString();
    e.time.title = d.toLocaleString();
  }
  setText(e.tick, STATE_LABEL[m.state]);
  e.fail.hidden = m.state !== 'failed';
  setText(e.failText, m.state === 'failed' ? `Not sent: ${m.error ?? 'refused by the server'}` : '');
  e.retry.hidden = m.retryable !== true;
}

function renderMessages(): void {
  const conv = store && current !== undefined ? store.conversation(current) : undefined;
  const isSwitch = renderedFor !== current;
  if (isSwitch) {
    msgEls = new WeakMap();
    olderAnchor = undefined;
  }
  const sc = ui.scroller;
  const wasAtBottom = sc.scrollHeight - sc.scrollTop - sc.clientHeight < STICKY_PX;

  setText(ui.chatTitle, current !== undefined ? `Chat with ${current}` : 'No conversation open');
  const els: HTMLElement[] = [];
  if (conv && store) {
    for (const m of conv.messages) {
      const e = msgEl(m);
      updateMsgEl(e, m, store.me);
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
  else if (conv.messages.length === 0) empty = conv.history === 'loading' ? 'Loading history…' : 'No messages yet. Say hello!';
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

ui.composer.addEventListener('submit', (ev) => {
  ev.preventDefault();
  sendMessage();
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
  if (document.visibilityState === 'hidden') flushPersist();
  else {
    scheduleRender();
    session?.syncNow();
  }
});

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
      const conversations = store?.summaries(current).map((s) => Object.freeze({ peer: s.peer, unread: s.unread })) ?? [];
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
  if (peer) ui.peer.value = peer;
  render();
  // A reload (or ?user=) picks the session up again.
  if (userId && USER_ID_RE.test(userId)) connect();
  else ui.user.focus();
}

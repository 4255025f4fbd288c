/**
 * Small DOM and wording helpers the page's views share. Every piece of user
 * or server text goes into the DOM through textContent or an attribute,
 * never as markup.
 */
import type { PresenceState } from './esm/index.js';

/** Puts `els` into `parent` in this order, moving as little as possible, and drops the rest. */
export function reconcile(parent: HTMLElement, els: readonly HTMLElement[]): void {
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

export function make<K extends keyof HTMLElementTagNameMap>(tag: K, className?: string, text?: string): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

export function setText(el: HTMLElement, text: string): void {
  if (el.textContent !== text) el.textContent = text;
}

export function hhmm(ts: number): string {
  const d = new Date(ts);
  return `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
}

function isToday(ts: number): boolean {
  return new Date(ts).toDateString() === new Date().toDateString();
}

function day(ts: number): string {
  return new Date(ts).toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
}

export function shortTime(ts: number): string {
  return isToday(ts) ? hhmm(ts) : day(ts);
}

/** "online", "last seen 5 min ago", "offline"; empty while the state is not known. */
export function presenceText(p: PresenceState | undefined, now = Date.now()): string {
  if (!p) return '';
  if (p.online) return 'online';
  if (p.lastSeen === undefined) return 'offline';
  const ago = Math.max(0, now - p.lastSeen);
  if (ago < 60_000) return 'last seen just now';
  if (ago < 3_600_000) return `last seen ${Math.floor(ago / 60_000)} min ago`;
  return `last seen ${isToday(p.lastSeen) ? 'today' : day(p.lastSeen)} at ${hhmm(p.lastSeen)}`;
}

/** A presence dot: `data-online` is true, false, or unknown (not learned yet). */
export function presenceDot(): HTMLSpanElement {
  const dot = make('span', 'presence');
  dot.dataset['testid'] = 'presence';
  dot.dataset['online'] = 'unknown';
  return dot;
}

export function updatePresenceDot(dot: HTMLElement, user: string, p: PresenceState | undefined): void {
  dot.dataset['user'] = user;
  const online = p === undefined ? 'unknown' : String(p.online);
  if (dot.dataset['online'] !== online) dot.dataset['online'] = online;
  const text = presenceText(p);
  dot.title = text;
  if (text !== '') dot.setAttribute('aria-label', `${user} is ${text.startsWith('last') ? `offline, ${text}` : text}`);
  else dot.removeAttribute('aria-label');
}

/**
 * The conversation list: direct conversations and rooms, newest first, each
 * line with the server's unread count, the peer's online dot, "typing…" in
 * place of the preview while someone types there, and a muted mark.
 */
import { make, presenceDot, reconcile, setText, shortTime, updatePresenceDot } from './dom.js';
import { roomOfKey, type ConversationSummary } from './store.js';
import { typingText } from './typing.js';
import type { PresenceState } from './esm/index.js';

/** What a render of the list draws from. */
export interface SidebarView {
  me: string | undefined;
  current: string | undefined;
  /** newest first */
  entries: readonly ConversationSummary[];
  unread(key: string): number;
  isMuted(key: string): boolean;
  presenceOf(user: string): PresenceState | undefined;
  typists(key: string): string[];
}

interface LineEl {
  li: HTMLLIElement;
  button: HTMLButtonElement;
  dot: HTMLElement | undefined;
  name: HTMLElement;
  muted: HTMLElement;
  time: HTMLElement;
  preview: HTMLElement;
  badge: HTMLElement;
}

export function createSidebar(list: HTMLUListElement, empty: HTMLElement, open: (key: string) => void) {
  const lines = new Map<string, LineEl>();

  function lineEl(key: string): LineEl {
    let e = lines.get(key);
    if (e) return e;
    const room = roomOfKey(key);
    const li = make('li');
    const button = make('button', 'conv');
    button.type = 'button';
    button.dataset['testid'] = 'conversation';
    const title = make('span', 'conv-title');
    let dot: HTMLElement | undefined;
    if (room !== undefined) {
      button.dataset['room'] = room;
      button.classList.add('room');
    } else {
      button.dataset['peer'] = key;
      dot = presenceDot();
      title.append(dot);
    }
    const name = make('span', 'conv-name', key);
    const muted = make('span', 'conv-muted', '🔕');
    muted.dataset['testid'] = 'muted';
    muted.title = 'Muted';
    title.append(name, muted);
    const time = make('span', 'conv-time');
    const preview = make('span', 'conv-preview');
    const badge = make('span', 'badge');
    badge.dataset['testid'] = 'unread';
    button.append(title, time, preview, badge);
    button.addEventListener('click', () => open(key));
    li.append(button);
    e = { li, button, dot, name, muted, time, preview, badge };
    lines.set(key, e);
    return e;
  }

  return {
    /** Draws the list; returns the unread count of the conversations that are not muted. */
    render(v: SidebarView): number {
      const els: HTMLElement[] = [];
      let total = 0;
      for (const s of v.entries) {
        const e = lineEl(s.key);
        const unread = v.unread(s.key);
        const isMuted = v.isMuted(s.key);
        if (!isMuted) total += unread;
        if (s.key === v.current) e.button.setAttribute('aria-current', 'true');
        else e.button.removeAttribute('aria-current');
        setText(e.name, s.title);
        e.button.dataset['left'] = String(s.isLeft);
        e.button.dataset['muted'] = String(isMuted);
        e.muted.hidden = !isMuted;
        if (e.dot) updatePresenceDot(e.dot, s.key, v.presenceOf(s.key));
        setText(e.time, s.lastAt > 0 ? shortTime(s.lastAt) : '');
        const typing = typingText(v.typists(s.key));
        const last = s.last;
        const who = !last ? '' : last.from === v.me ? 'You: ' : s.room !== undefined ? `${last.from}: ` : '';
        const preview = typing !== '' ? typing : last ? `${who}${last.body.replace(/\s+/g, ' ').slice(0, 80)}` : s.room !== undefined ? 'Room' : '';
        e.preview.classList.toggle('is-typing', typing !== '');
        setText(e.preview, s.isLeft ? `(left) ${preview}` : preview);
        setText(e.badge, unread > 0 ? String(unread) : '');
        e.badge.hidden = unread === 0;
        const kind = s.room !== undefined ? `Room ${s.title}${s.isLeft ? ' (left)' : ''}` : s.title;
        e.button.setAttribute('aria-label', `${kind}${unread > 0 ? `, ${unread} unread` : ''}${isMuted ? ', muted' : ''}`);
        els.push(e.li);
      }
      reconcile(list, els);
      empty.hidden = v.entries.length > 0;
      return total;
    },
    /** Another user signed in: forget the lines drawn for the previous one. */
    clear(): void {
      lines.clear();
    },
  };
}

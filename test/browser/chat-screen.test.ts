/**
 * The chat screen around the messages, in Debian's Chromium (playwright-core,
 * no browser download) against the real cluster, users on both instances:
 * the peer's online dot follows its connections, "typing…" shows while the
 * other side types, the ticks of a message move from sent to delivered (the
 * recipient's client has it: live, or through its catch-up) to read, the
 * unread badge counts what arrived while the conversation was not shown (or
 * the page was hidden) and drops to 0 once it is, and the server agrees
 * after a reload, as it does on a room's ticks; a mute is kept by the server. Every wait is on the DOM's
 * state. Screenshots go to test-results/ (ignored by git).
 */
/// <reference lib="dom" />
import { describe, it, expect } from 'vitest';
import { resolve } from 'node:path';
import type { Page } from 'playwright-core';
import { uid } from '../cluster';
import { browserPerFile, createRoom, msg, roomEntry, send, SHOTS } from './harness';

const h = browserPerFile();
const VIEWPORT = { width: 1100, height: 700 };
const openPage = (instance: number, user: string, peer?: string): Promise<Page> => h.open(instance, user, { viewport: VIEWPORT, ...(peer !== undefined ? { peer } : {}) });
const line = (page: Page, peer: string) => page.locator(`[data-testid="conversation"][data-peer="${peer}"]`);
const headDot = (page: Page, online: boolean | 'unknown') => page.locator(`[data-testid="chat-presence"] [data-testid="presence"][data-online="${String(online)}"]`);
/** one of this page's own messages, acked, with its receipt state */
const own = (page: Page, text: string, receipt: 'sent' | 'delivered' | 'read') => msg(page, text).and(page.locator(`.own[data-state="sent"][data-receipt="${receipt}"]`));
const badge = (page: Page, peer: string) => line(page, peer).getByTestId('unread');

/** Makes the page report itself hidden (or visible again), as a switched-away tab does. */
async function setHidden(page: Page, hidden: boolean): Promise<void> {
  await page.evaluate((isHidden) => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (isHidden ? 'hidden' : 'visible') });
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => isHidden });
    document.dispatchEvent(new Event('visibilitychange'));
  }, hidden);
}

describe('the chat screen', () => {
  it('the peer’s online dot turns on when it connects on the other instance and off with a last seen when it closes; "typing…" shows while it types and goes away', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await openPage(0, alice, bob);
    // bob has never connected
    await headDot(a, false).waitFor();
    await line(a, bob).locator('[data-testid="presence"][data-online="false"]').waitFor();

    const b = await openPage(1, bob, alice);
    await headDot(a, true).waitFor();
    await line(a, bob).locator('[data-testid="presence"][data-online="true"]').waitFor();
    expect(await a.getByTestId('chat-presence').textContent()).toContain('online');
    await headDot(b, true).waitFor();

    // bob types: alice sees it in the open conversation and in the list, then it goes away
    expect(await a.getByTestId('typing').isHidden()).toBe(true);
    await b.getByTestId('message').pressSequentially('hello al', { delay: 40 });
    await a.getByTestId('typing').filter({ hasText: `${bob} is typing…` }).waitFor();
    await line(a, bob).filter({ hasText: 'typing…' }).waitFor();
    await a.screenshot({ path: resolve(SHOTS, 'chat-screen-typing.png') });
    await a.getByTestId('typing').waitFor({ state: 'hidden' });
    // the typist's own page shows nothing of it
    expect(await b.getByTestId('typing').isHidden()).toBe(true);

    // a message ends the typing at once
    await b.getByTestId('message').pressSequentially('ice', { delay: 40 });
    await a.getByTestId('typing').waitFor();
    await b.getByTestId('message').press('Enter');
    await msg(a, 'hello alice').waitFor();
    await a.getByTestId('typing').waitFor({ state: 'hidden' });

    // bob closes his page: the dot goes off, with when he was last seen
    await b.close();
    await headDot(a, false).waitFor({ timeout: 15_000 });
    await line(a, bob).locator('[data-testid="presence"][data-online="false"]').waitFor();
    await expect.poll(() => a.getByTestId('chat-presence').textContent()).toMatch(/last seen/);
    await a.screenshot({ path: resolve(SHOTS, 'chat-screen-offline.png') });
    await a.close();
  }, 90_000);

  it('ticks move from sent to delivered to read; the unread badge counts while the conversation is not open (or the page is hidden) and drops to 0 once it is shown, and stays 0 after a reload; mute is kept by the server', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const carol = uid('carol');
    const a = await openPage(0, alice, bob);
    const b = await openPage(1, bob, carol);
    const bobsPage = `${h.c.httpUrl(1)}/client/?user=${bob}&peer=${carol}`;

    // bob's page goes away (it keeps its cursor): acked but not delivered
    await b.goto('about:blank');
    await headDot(a, false).waitFor({ timeout: 15_000 });
    await send(a, 'first, while bob is away');
    await own(a, 'first, while bob is away', 'sent').waitFor();

    // bob's page comes back with another conversation open: its catch-up brings the message, his client says delivered
    await b.goto(bobsPage);
    await own(a, 'first, while bob is away', 'delivered').waitFor();
    await badge(b, alice).filter({ hasText: /^1$/ }).waitFor();

    await send(a, 'second');
    await send(a, 'third');
    await own(a, 'second', 'delivered').waitFor();
    await own(a, 'third', 'delivered').waitFor();
    await badge(b, alice).filter({ hasText: /^3$/ }).waitFor();
    expect(await a.locator('[data-receipt="read"]').count()).toBe(0);
    expect(await b.title()).toBe('(3) SimpleChat');
    await b.screenshot({ path: resolve(SHOTS, 'chat-screen-unread.png') });

    // bob opens the conversation: the badge goes, alice's ticks turn to read
    await line(b, alice).click();
    await b.getByTestId('chat-title').filter({ hasText: `Chat with ${alice}` }).waitFor();
    await badge(b, alice).waitFor({ state: 'hidden' });
    for (const text of ['first, while bob is away', 'second', 'third']) await own(a, text, 'read').waitFor();
    expect(await own(a, 'third', 'read').locator('.tick').getAttribute('title')).toBe('Read');
    await a.screenshot({ path: resolve(SHOTS, 'chat-screen-read.png') });

    // the server counts them read: after a reload, with another conversation open, no badge
    await b.goto(bobsPage);
    await b.locator('[data-testid="status"][data-state="online"]').waitFor({ timeout: 15_000 });
    // the line's preview comes from the server's list: it has answered
    await line(b, alice).filter({ hasText: 'third' }).waitFor();
    await expect.poll(() => b.evaluate(() => (window as unknown as { simplechat: { state: { conversations: { key: string; unread: number }[] } } }).simplechat.state.conversations)).toContainEqual(expect.objectContaining({ key: alice, unread: 0 }));
    expect(await badge(b, alice).isHidden()).toBe(true);

    // a message while the conversation is open but the page hidden: delivered, counted; read once the page is visible
    await line(b, alice).click();
    await b.getByTestId('chat-title').filter({ hasText: `Chat with ${alice}` }).waitFor();
    await setHidden(b, true);
    await send(a, 'while bob looks elsewhere');
    await msg(b, 'while bob looks elsewhere').waitFor();
    await own(a, 'while bob looks elsewhere', 'delivered').waitFor();
    await badge(b, alice).filter({ hasText: /^1$/ }).waitFor();
    expect(await own(a, 'while bob looks elsewhere', 'read').count()).toBe(0);
    await setHidden(b, false);
    await own(a, 'while bob looks elsewhere', 'read').waitFor();
    await badge(b, alice).waitFor({ state: 'hidden' });

    // bob answers; alice has the conversation open and visible: read at once, never a badge on her side
    await send(b, 'seen it');
    await own(b, 'seen it', 'read').waitFor();
    expect(await badge(a, bob).isHidden()).toBe(true);

    // bob mutes the conversation: the server keeps it (shown again after a reload), and unmutes it
    await b.getByTestId('mute').click();
    await line(b, alice).getByTestId('muted').waitFor();
    await b.reload();
    await b.locator('[data-testid="status"][data-state="online"]').waitFor({ timeout: 15_000 });
    await line(b, alice).getByTestId('muted').waitFor();
    // the page's address opens carol's conversation: back to alice's
    await line(b, alice).click();
    await b.locator('[data-testid="mute"][aria-pressed="true"]').waitFor();
    await b.getByTestId('mute').click();
    await line(b, alice).getByTestId('muted').waitFor({ state: 'hidden' });
    await a.close();
    await b.close();
  }, 120_000);

  it('in a room a message is delivered once another member has it and read once every other member has shown it; each member’s badge counts until it opens the room', async () => {
    const [alice, bob, carol] = [uid('alice'), uid('bob'), uid('carol')] as const;
    const [a, b, k] = await Promise.all([openPage(0, alice), openPage(1, bob), openPage(0, carol)]);
    const room = await createRoom(a, 'Receipts', [bob, carol]);
    for (const p of [b, k]) await roomEntry(p, room).waitFor();

    await send(a, 'hello room');
    await own(a, 'hello room', 'delivered').waitFor();
    for (const p of [b, k]) await roomEntry(p, room).getByTestId('unread').filter({ hasText: /^1$/ }).waitFor();

    await roomEntry(b, room).click();
    await roomEntry(b, room).getByTestId('unread').waitFor({ state: 'hidden' });
    await expect.poll(() => own(a, 'hello room', 'delivered').locator('.tick').getAttribute('title')).toBe('Delivered to 2 of 2, read by 1');
    expect(await roomEntry(k, room).getByTestId('unread').textContent()).toBe('1');

    await roomEntry(k, room).click();
    await own(a, 'hello room', 'read').waitFor();
    expect(await own(a, 'hello room', 'read').locator('.tick').getAttribute('title')).toBe('Read by 2 of 2');
    await roomEntry(k, room).getByTestId('unread').waitFor({ state: 'hidden' });
    await a.screenshot({ path: resolve(SHOTS, 'chat-screen-room-read.png') });

    // after a reload the room's ticks come from the members' marks the server keeps (room.marks)
    await a.reload();
    await a.locator('[data-testid="status"][data-state="online"]').waitFor({ timeout: 15_000 });
    await own(a, 'hello room', 'read').waitFor();
    expect(await own(a, 'hello room', 'read').locator('.tick').getAttribute('title')).toBe('Read by 2 of 2');
    for (const p of [a, b, k]) await p.close();
  }, 120_000);
});

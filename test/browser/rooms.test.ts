/**
 * Rooms in the browser client (Debian's Chromium through playwright-core, no
 * browser download): three users on two instances create a room, see it
 * appear, talk in it with sender names, and see members removed, added back
 * and leaving as it happens; a user out of the room cannot send. Screenshots
 * go to test-results/ (ignored by git).
 */
import { describe, it, expect } from 'vitest';
import { resolve } from 'node:path';
import type { Page } from 'playwright-core';
import { uid } from '../cluster';
import { browserPerFile, createRoom, msg, roomEntry, send, SHOTS } from './harness';

const h = browserPerFile();
const openPage = (instance: number, user: string): Promise<Page> => h.open(instance, user, { viewport: { width: 1100, height: 700 } });
const note = (page: Page, text: string) => page.locator('[data-testid="room-note"]', { hasText: text });
const member = (page: Page, user: string) => page.locator(`[data-testid="member"][data-user="${user}"]`);

/** The message shows in the page once, with its sender's name above it. */
async function seenFrom(page: Page, text: string, from: string): Promise<void> {
  await msg(page, text).and(page.locator('[data-state="received"]')).waitFor();
  expect(await msg(page, text).count()).toBe(1);
  expect(await msg(page, text).getByTestId('msg-from').textContent()).toBe(from);
}

describe('rooms in the browser client', () => {
  it('three users on two instances: a room appears for its members, messages carry sender names, removal, re-adding and leaving show everywhere, and a user out of the room cannot send', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const carol = uid('carol');
    const a = await openPage(0, alice);
    const b = await openPage(1, bob);
    const k = await openPage(0, carol);

    // alice creates the room; its name is text, never markup
    const name = 'Team <img src=x onerror=alert(1)>';
    const room = await createRoom(a, name, [bob, carol]);
    for (const u of [alice, bob, carol]) await member(a, u).waitFor();
    await expect.poll(() => member(a, alice).textContent()).toContain('owner');

    // bob and carol see it appear in their lists, and open it
    for (const p of [b, k]) {
      await roomEntry(p, room).filter({ hasText: name }).waitFor();
      await roomEntry(p, room).click();
      await p.getByTestId('chat-title').filter({ hasText: `Room: ${name}` }).waitFor();
      for (const u of [alice, bob, carol]) await member(p, u).waitFor();
      // only the owner manages members
      expect(await p.getByTestId('member-add').isHidden()).toBe(true);
      expect(await p.getByTestId('member-remove').filter({ visible: true }).count()).toBe(0);
    }
    for (const p of [a, b, k]) expect(await p.locator('[data-testid="conversations"] img, [data-testid="chat-title"] img').count()).toBe(0);

    // everyone talks; the others see each message once, under its sender's name
    await send(a, 'hello team, alice here');
    await msg(a, 'hello team, alice here').and(a.locator('[data-state="sent"]')).waitFor();
    await seenFrom(b, 'hello team, alice here', alice);
    await seenFrom(k, 'hello team, alice here', alice);
    await send(b, 'bob from instance two');
    await seenFrom(a, 'bob from instance two', bob);
    await seenFrom(k, 'bob from instance two', bob);
    await send(k, 'carol says hi');
    await seenFrom(a, 'carol says hi', carol);
    await seenFrom(b, 'carol says hi', carol);

    // alice removes carol: the panels and timelines say so, carol's page is out of the room
    await member(a, carol).getByTestId('member-remove').click();
    await note(a, `${carol} was removed by you`).waitFor();
    await note(b, `${carol} was removed by ${alice}`).waitFor();
    await note(k, `You were removed by ${alice}`).waitFor();
    for (const p of [a, b]) await member(p, carol).waitFor({ state: 'detached' });
    await k.locator('[data-testid="room-state"]', { hasText: 'no longer a member' }).waitFor();
    await roomEntry(k, room).and(k.locator('[data-left="true"]')).waitFor();
    expect(await k.getByTestId('message').isDisabled()).toBe(true);
    expect(await k.getByTestId('send').isDisabled()).toBe(true);
    await send(b, 'said after carol was removed');
    await seenFrom(a, 'said after carol was removed', bob);

    // alice adds carol back: carol's room is live again, with the history of the room
    await a.getByTestId('member-id').fill(carol);
    await a.getByTestId('member-add').click();
    await note(b, `${carol} was added by ${alice}`).waitFor();
    await note(k, `You were added by ${alice}`).waitFor();
    await member(b, carol).waitFor();
    await roomEntry(k, room).and(k.locator('[data-left="false"]')).waitFor();
    await expect.poll(() => k.getByTestId('message').isDisabled()).toBe(false);
    await send(k, 'carol is back');
    await seenFrom(a, 'carol is back', carol);
    await seenFrom(b, 'carol is back', carol);

    // carol leaves by herself
    await k.getByTestId('room-leave').click();
    await note(a, `${carol} left`).waitFor();
    await note(b, `${carol} left`).waitFor();
    await note(k, 'You left').waitFor();
    await member(a, carol).waitFor({ state: 'detached' });
    expect(await k.getByTestId('message').isDisabled()).toBe(true);
    expect(await k.getByTestId('room-leave').isHidden()).toBe(true);
    await send(a, 'after carol left');
    await seenFrom(b, 'after carol left', alice);

    // a reload lists the room again (room.list) and reopens it with its history and sender names
    await b.reload();
    await b.locator('[data-testid="status"][data-state="online"]').waitFor({ timeout: 15_000 });
    await roomEntry(b, room).filter({ hasText: name }).waitFor();
    await b.getByTestId('chat-title').filter({ hasText: `Room: ${name}` }).waitFor();
    for (const text of ['hello team, alice here', 'carol says hi', 'after carol left']) await msg(b, text).first().waitFor();
    expect(await msg(b, 'carol says hi').getByTestId('msg-from').textContent()).toBe(carol);
    await member(b, alice).waitFor();

    await a.screenshot({ path: resolve(SHOTS, 'rooms-alice.png') });
    await b.screenshot({ path: resolve(SHOTS, 'rooms-bob-after-reload.png') });
    await k.screenshot({ path: resolve(SHOTS, 'rooms-carol-left.png') });
  }, 150_000);
});

/**
 * The browser client in Debian's Chromium (playwright-core, no browser
 * download): two pages on two instances chat both ways, reload shows history,
 * a dropped connection reconnects and catches up, and message text is never
 * interpreted as HTML. Screenshots go to test-results/ (ignored by git).
 */
import { describe, it, expect } from 'vitest';
import { resolve } from 'node:path';
import type { Page } from 'playwright-core';
import { uid } from '../cluster';
import { browserPerFile, msg, send, SHOTS } from './harness';

const h = browserPerFile();
const openChat = (instance: number, user: string, peer: string): Promise<Page> => h.open(instance, user, { peer });

describe('the browser client', () => {
  it('loads its whole module graph, the client package and its wire module included, without a failed request or a script error', async () => {
    const page = await h.browser.newPage();
    const failed: string[] = [];
    const scripts = new Map<string, string | undefined>();
    page.on('response', (r) => {
      if (r.status() >= 400) failed.push(`${r.status()} ${r.url()}`);
      if (r.request().resourceType() === 'script') scripts.set(new URL(r.url()).pathname, r.headers()['content-type']);
    });
    page.on('requestfailed', (r) => failed.push(`${r.failure()?.errorText ?? 'failed'} ${r.url()}`));
    page.on('pageerror', (err) => failed.push(`page error: ${err.message}`));
    await page.goto(`${h.c.httpUrl(0)}/client/`, { waitUntil: 'networkidle' });
    expect(failed).toEqual([]);
    await page.getByTestId('user').fill(uid('carol'));
    await page.getByTestId('register').click();
    await page.locator('[data-testid="status"][data-state="online"]').waitFor({ timeout: 15_000 });
    expect(failed).toEqual([]);
    for (const path of ['/client/app.js', '/client/session.js', '/client/esm/index.js', '/client/esm/chat-client.js', '/client/esm/frames.js', '/client/esm/wire.js']) expect(scripts.get(path), path).toMatch(/javascript/);
    await page.close();
  }, 60_000);

  it('two pages on two instances chat both ways, reload shows history, a drop reconnects and catches up, HTML stays text', async () => {
    const alice = uid('alice');
    const bob = uid('bob');
    const a = await openChat(0, alice, bob);
    const b = await openChat(1, bob, alice);

    await send(a, 'hello from instance one');
    await msg(a, 'hello from instance one').and(a.locator('[data-state="sent"]')).waitFor();
    await msg(b, 'hello from instance one').and(b.locator('[data-state="received"]')).waitFor();

    await send(b, 'hi back from instance two');
    await msg(a, 'hi back from instance two').and(a.locator('[data-state="received"]')).waitFor();
    await msg(b, 'hi back from instance two').and(b.locator('[data-state="sent"]')).waitFor();

    const xss = '<img src=x onerror=alert(1)>';
    await send(a, xss);
    await msg(b, xss).waitFor();
    // The ack follows the broker's confirm; the live copy may reach bob first.
    await msg(a, xss).and(a.locator('[data-state="sent"]')).waitFor();
    expect(await b.locator('[data-testid="messages"] img').count()).toBe(0);
    expect(await a.locator('[data-testid="messages"] img').count()).toBe(0);
    expect(await msg(b, xss).first().textContent()).toContain(xss);

    // a body over MAX_BODY_CHARS is refused (too_large): said why, with no Retry that could only fail again
    const long = `${'x'.repeat(4000)}y`;
    await send(a, long);
    const refused = msg(a, 'xxxxy').and(a.locator('[data-state="failed"]'));
    await refused.waitFor();
    expect(await refused.textContent()).toMatch(/Not sent: body is longer than 4000 characters; split it into several messages/);
    expect(await refused.locator('button.retry').isHidden()).toBe(true);

    // each message once, with an acked state on the sender's side
    for (const text of ['hello from instance one', 'hi back from instance two', xss]) {
      expect(await msg(a, text).count()).toBe(1);
      expect(await msg(b, text).count()).toBe(1);
    }
    expect(await a.locator('[data-testid="msg"][data-state="sending"]').count()).toBe(0);
    await a.screenshot({ path: resolve(SHOTS, 'chat-alice.png') });
    await b.screenshot({ path: resolve(SHOTS, 'chat-bob.png') });

    // reload: the conversation comes back from history
    await b.reload();
    await b.locator('[data-testid="status"][data-state="online"]').waitFor({ timeout: 15_000 });
    for (const text of ['hello from instance one', 'hi back from instance two', xss]) await msg(b, text).first().waitFor();

    // drop: bob's instance goes away; alice writes meanwhile; the instance comes back on its port
    const port = h.c.ws[1]?.port as number;
    await h.c.ws[1]?.close();
    await b.locator('[data-testid="status"]:not([data-state="online"])').waitFor();
    await send(a, 'written while bob was away');
    await msg(a, 'written while bob was away').and(a.locator('[data-state="sent"]')).waitFor();
    h.c.ws[1] = await h.c.addWs({ WS_PORT: String(port), INSTANCE_ID: 'ws-2' });
    h.c.ws.pop();
    await b.locator('[data-testid="status"][data-state="online"]').waitFor({ timeout: 30_000 });
    await msg(b, 'written while bob was away').waitFor({ timeout: 15_000 });
    expect(await msg(b, 'written while bob was away').count()).toBe(1);
    await b.screenshot({ path: resolve(SHOTS, 'chat-bob-after-reconnect.png') });
  }, 120_000);
});

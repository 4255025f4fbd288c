/**
 * What the browser tests share: a two-instance cluster and Debian's Chromium
 * (playwright-core, no browser download) for one test file, a page opened on
 * an instance and connected as a user, the page's message box, and rooms
 * made from its "New room" form.
 */
import { afterAll, beforeAll } from 'vitest';
import { existsSync, mkdirSync } from 'node:fs';
import { resolve } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { startCluster, type TestCluster } from '../cluster';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
/** screenshots (ignored by git) */
export const SHOTS = resolve(__dirname, '..', '..', 'test-results');

export interface BrowserHarness {
  readonly c: TestCluster;
  readonly browser: Browser;
  /** a page on instance `instance`, connected as `user` (chatting with `peer`, when given) */
  open(instance: number, user: string, options?: { peer?: string; viewport?: { width: number; height: number } }): Promise<Page>;
}

export function browserPerFile(): BrowserHarness {
  let cluster: TestCluster | undefined;
  let chromiumBrowser: Browser | undefined;
  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium); .ci/run does this`);
    mkdirSync(SHOTS, { recursive: true });
    cluster = await startCluster({ wsCount: 2 });
    chromiumBrowser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'] });
  }, 60_000);
  afterAll(async () => {
    await chromiumBrowser?.close();
    await cluster?.close();
  });
  const harness: BrowserHarness = {
    get c() {
      if (!cluster) throw new Error('the cluster starts in beforeAll');
      return cluster;
    },
    get browser() {
      if (!chromiumBrowser) throw new Error('the browser starts in beforeAll');
      return chromiumBrowser;
    },
    async open(instance, user, options = {}) {
      const page = await harness.browser.newPage(options.viewport ? { viewport: options.viewport } : {});
      page.on('dialog', (d) => {
        throw new Error(`unexpected dialog: ${d.message()}`);
      });
      await page.goto(`${harness.c.httpUrl(instance)}/client/`);
      await page.getByTestId('user').fill(user);
      if (options.peer !== undefined) await page.getByTestId('peer').fill(options.peer);
      await page.getByTestId('register').click();
      await page.locator('[data-testid="status"][data-state="online"]').waitFor({ timeout: 15_000 });
      return page;
    },
  };
  return harness;
}

export async function send(page: Page, text: string): Promise<void> {
  await page.getByTestId('message').fill(text);
  await page.getByTestId('message').press('Enter');
}

export const msg = (page: Page, text: string) => page.locator('[data-testid="msg"]', { hasText: text });

export const roomEntry = (page: Page, room: string) => page.locator(`[data-testid="conversation"][data-room="${room}"]`);

/** Creates a room from the page's "New room" form; resolves with its id once the page shows it open. */
export async function createRoom(page: Page, name: string, members: readonly string[]): Promise<string> {
  await page.getByTestId('room-name').fill(name);
  await page.getByTestId('room-members').fill(members.join(', '));
  await page.getByTestId('room-create').click();
  await page.getByTestId('chat-title').filter({ hasText: `Room: ${name}` }).waitFor();
  const room = await page.locator('[data-testid="conversation"][aria-current="true"][data-room]').getAttribute('data-room');
  if (room === null || !room.startsWith('r_')) throw new Error(`the open room has no room id: ${String(room)}`);
  return room;
}

/**
 * The services' own Prometheus counters (GET /metrics with the internal
 * token), read before and after a phase: how many messages travelled per AMQP
 * publish, per forward to a peer, per SvDiscover call. These explain the CPU
 * per message; they never decide a pass. A service without /metrics (an older
 * build) simply yields nothing.
 */
import { request } from 'undici';

export type Counters = Record<string, number>;

/** Counter and histogram _sum/_count samples, labels kept, default service labels dropped. */
export function parseCounters(text: string): Counters {
  const out: Counters = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (!m) continue;
    const name = (m[1] as string).replace(/^simplechat_/, '');
    if (!/(_total|_sum|_count)$/.test(name)) continue;
    const labels = (m[2] ?? '')
      .replace(/(^\{|\}$)/g, '')
      .split(',')
      .filter((l) => l && !/^(service|instance_id)=/.test(l))
      .join(',');
    const value = Number(m[3]);
    if (Number.isFinite(value)) out[labels ? `${name}{${labels}}` : name] = value;
  }
  return out;
}

export async function scrape(httpUrl: string, token: string): Promise<Counters> {
  try {
    const res = await request(`${httpUrl}/metrics`, { headers: { authorization: `Bearer ${token}` }, headersTimeout: 3000, bodyTimeout: 3000 });
    const text = await res.body.text();
    return res.statusCode === 200 ? parseCounters(text) : {};
  } catch {
    return {};
  }
}

/** The counters of every service named in `urls` (process name -> HTTP base URL). */
export async function scrapeServices(urls: Record<string, string>, token: string): Promise<Record<string, Counters>> {
  return Object.fromEntries(await Promise.all(Object.entries(urls).map(async ([name, url]) => [name, await scrape(url, token)] as const)));
}

/** delta() of each service's counters. */
export function deltaAll(before: Record<string, Counters>, after: Record<string, Counters>): Record<string, Counters> {
  return Object.fromEntries(Object.entries(after).map(([k, v]) => [k, delta(before[k] ?? {}, v)]));
}

export function delta(before: Counters, after: Counters): Counters {
  const out: Counters = {};
  for (const [k, v] of Object.entries(after)) {
    const d = v - (before[k] ?? 0);
    if (d > 0) out[k] = Math.round(d * 1e6) / 1e6;
  }
  return out;
}

/** Sum of every series of a metric across services (any labels). */
export function total(byService: Record<string, Counters>, name: string, label?: string): number {
  let n = 0;
  for (const c of Object.values(byService)) {
    for (const [k, v] of Object.entries(c)) {
      const base = k.split('{')[0];
      if (base === name && (label === undefined || k.includes(label))) n += v;
    }
  }
  return n;
}

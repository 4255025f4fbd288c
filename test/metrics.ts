/** Reading Prometheus text in tests: fetch a service's /metrics and pick series out of it. */
import { INTERNAL_TOKEN } from './helpers';

export async function scrape(baseUrl: string, token = INTERNAL_TOKEN): Promise<string> {
  const res = await fetch(`${baseUrl}/metrics`, { headers: { authorization: `Bearer ${token}` } });
  if (res.status !== 200) throw new Error(`GET ${baseUrl}/metrics answered ${res.status}`);
  return res.text();
}

/**
 * Sum of the samples of `name` whose labels include every given pair
 * (undefined when no sample matches, so a missing series fails loudly).
 */
export function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  let sum: number | undefined;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = new Map<string, string>();
    for (const pair of (m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) have.set(pair[1] as string, pair[2] as string);
    if (!Object.entries(labels).every(([k, v]) => have.get(k) === v)) continue;
    sum = (sum ?? 0) + Number(m[4]);
  }
  return sum;
}

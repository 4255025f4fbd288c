/**
 * The books of one scenario (issue 4):
 *   acked  = msgIds acked to senders (plus messages injected straight into the queue)
 *   stored = rows in Postgres
 *   seen   = per connection, what it got live, by sync, or (its own sends) by ack
 * It balances only when stored == acked (each exactly once), every acked
 * message was seen by every connection of its recipient, and nothing was
 * acked that is not stored.
 */
import type { Cluster } from './cluster';
import type { Conn, Load, SendRecord } from './load';
import { waitUntil } from './procs';

export interface Expected {
  msgId: string;
  sender: string;
  clientId: string;
  /** the recipient, or '#' and the room */
  to: string;
  body: string;
  /** the position the ack gave (injected messages have none) */
  seq?: number;
  /** time it counts from for recovery: the ack, or the injection */
  ackedAt: number;
  firstSentAt: number;
}

export interface Books {
  acked: number;
  stored: number;
  /** acked but not stored, or not seen by some connection of its recipient */
  lost: number;
  /** acked msgIds that are not stored (false acks) */
  notStored: number;
  /** (message, recipient connection) pairs never seen */
  notSeen: number;
  /** second messages: stored rows beyond one per (sender, id), acks with a second msgId, messages seen under a msgId that is not the one stored */
  duplicated: number;
  /** stored rows nobody was acked for */
  unexpectedStored: number;
  /** sends never acked (still pending when the books closed) */
  unacked: number;
  /** (message, connection) pairs seen later than syncIntervalMs (+ slack) after storage by a connection that stayed registered */
  late: number;
  /** the longest such lag, ms */
  maxLagMs: number;
  /** (message, connection) pairs first seen by sync although the connection was registered from before the send until then, for messages sent before the fault: the live path missed them with nothing wrong */
  missedLive: number;
  recoveryMs: number;
  details: string[];
}

interface Row {
  id: string;
  sender: string;
  client_id: string;
  recipient: string;
  body: string;
  stored_ms: number;
}

const SLOW_MS = 1000;
/** PROTOCOL.md: every acked message reaches every connection that stays registered at the latest syncIntervalMs after it was stored; this much more is allowed for the sync round trip and timer drift on a busy machine. */
const LAG_SLACK_MS = 2500;

export function expectedFromLoad(load: Load): Expected[] {
  const out: Expected[] = [];
  for (const r of load.records.values()) {
    if (!r.counted || r.msgId === undefined || r.ackedAt === undefined) continue;
    out.push({ msgId: r.msgId, sender: r.sender, clientId: r.id, to: r.to, body: r.body, ackedAt: r.ackedAt, firstSentAt: r.firstSentAt, ...(r.seq === undefined ? {} : { seq: r.seq }) });
  }
  return out;
}

/** Everything the books look at has settled (or the deadline passed): no send pending, every acked message stored and seen. */
export async function converge(cluster: Cluster, load: Load, extra: Expected[], timeoutMs: number): Promise<{ ms: number; settled: boolean }> {
  const started = Date.now();
  const isSettled = async (): Promise<boolean> => {
    const expected = [...expectedFromLoad(load), ...extra];
    if (load.pending() !== 0) return false;
    let stored: Set<string>;
    try {
      stored = new Set((await cluster.query<{ id: string }>('SELECT id FROM messages')).map((r) => r.id));
    } catch {
      return false; // storage down: not settled
    }
    return expected.every((e) => stored.has(e.msgId)) && expected.every((e) => load.connsOf(e.to).every((c) => c.seen.has(e.msgId)));
  };
  try {
    return { ms: await waitUntil('books settled', isSettled, timeoutMs, 200), settled: true };
  } catch {
    return { ms: Date.now() - started, settled: false };
  }
}

/** A stored row is for the acked target: its recipient, or its room ('#' and the room id). */
function isSameTarget(row: Record<string, unknown>, to: string): boolean {
  return to.startsWith('#') ? row.room_id === to.slice(1) && row.recipient === null : row.recipient === to && row.room_id === null;
}

export async function closeBooks(cluster: Cluster, load: Load, extra: Expected[], faultAt: number, syncIntervalMs: number): Promise<Books> {
  const details: string[] = [];
  const expected = [...expectedFromLoad(load), ...extra];
  const rows = await cluster.query<Row & Record<string, unknown>>('SELECT id, sender, client_id, recipient, room_id, position::int AS position, body, extract(epoch FROM stored_at) * 1000 AS stored_ms FROM messages');
  const storedById = new Map(rows.map((r) => [r.id, r]));
  const expectedById = new Map(expected.map((e) => [e.msgId, e]));

  let notStored = 0;
  for (const e of expected) {
    const row = storedById.get(e.msgId);
    if (!row) {
      notStored++;
      if (notStored <= 5) details.push(`acked ${e.msgId} (${e.sender} id ${e.clientId} -> ${e.to}) is not stored`);
    } else if (row.sender !== e.sender || !isSameTarget(row, e.to) || row.client_id !== e.clientId || row.body !== e.body) {
      notStored++;
      details.push(`stored ${e.msgId} differs from what was acked`);
    } else if (e.seq !== undefined && row.position !== e.seq) {
      notStored++;
      details.push(`stored ${e.msgId} at position ${String(row.position)}, acked at ${e.seq}`);
    }
  }

  let notSeen = 0;
  const lostIds = new Set<string>();
  for (const e of expected) {
    for (const c of load.connsOf(e.to)) {
      if (!c.seen.has(e.msgId)) {
        notSeen++;
        lostIds.add(e.msgId);
        if (notSeen <= 5) details.push(`${c.key} never saw ${e.msgId} from ${e.sender}`);
      }
    }
    if (!storedById.has(e.msgId)) lostIds.add(e.msgId);
  }

  // Second messages.
  let duplicated = 0;
  const perKey = new Map<string, number>();
  for (const r of rows) perKey.set(`${r.sender}|${r.client_id}`, (perKey.get(`${r.sender}|${r.client_id}`) ?? 0) + 1);
  for (const [k, count] of perKey) {
    if (count > 1) {
      duplicated += count - 1;
      details.push(`${count} rows for ${k}`);
    }
  }
  for (const r of load.records.values()) {
    if (r.ackMsgIds.size > 1) {
      duplicated += r.ackMsgIds.size - 1;
      details.push(`${r.sender} id ${r.id} was acked with ${r.ackMsgIds.size} msgIds: ${[...r.ackMsgIds].join(', ')}`);
    }
  }
  // A message shown under a msgId that is not the stored one of its (sender, id): clients cannot dedupe it.
  const phantom = new Set<string>();
  for (const c of load.conns) {
    for (const msgId of c.seen.keys()) {
      if (storedById.has(msgId) || expectedById.has(msgId)) continue;
      phantom.add(msgId);
    }
  }
  if (phantom.size > 0) {
    duplicated += phantom.size;
    details.push(`${phantom.size} msgIds seen by clients are neither stored nor acked (a second message): ${[...phantom].slice(0, 3).join(', ')}`);
  }

  let unexpectedStored = 0;
  for (const r of rows) {
    if (!expectedById.has(r.id)) {
      unexpectedStored++;
      if (unexpectedStored <= 3) details.push(`stored ${r.id} (${r.sender} id ${r.client_id}) was never acked`);
    }
  }

  // The timing promise, for connections that stayed registered from storage until they saw it.
  let late = 0;
  let maxLagMs = 0;
  let worstLag = '';
  for (const e of expected) {
    const row = storedById.get(e.msgId);
    if (!row) continue;
    const storedAt = Number(row.stored_ms);
    for (const c of load.connsOf(e.to)) {
      const s = c.seen.get(e.msgId);
      if (!s || s.at <= storedAt) continue;
      // registered at storedAt (its last event before it was a registration, not a close) and not dropped until it saw it
      const lastRegistration = Math.max(-Infinity, ...c.registrations.filter((r) => r.at <= storedAt).map((r) => r.at));
      const lastClose = Math.max(-Infinity, ...c.closeCodes.filter((cc) => cc.at <= storedAt).map((cc) => cc.at));
      const droppedMeanwhile = c.closeCodes.some((cc) => cc.at >= storedAt && cc.at <= s.at + 5000);
      if (lastRegistration === -Infinity || lastClose >= lastRegistration || droppedMeanwhile) continue;
      if (s.at - storedAt > maxLagMs) {
        maxLagMs = s.at - storedAt;
        worstLag = `${c.key} saw ${e.msgId} (${e.sender} -> ${e.to}, sent ${e.firstSentAt - faultAt} ms after the fault, acked +${e.ackedAt - e.firstSentAt} ms) by ${s.source} ${Math.round(s.at - storedAt)} ms after it was stored at fault+${Math.round(storedAt - faultAt)}; registrations ${c.registrations.map((r) => `${r.instanceId}@${r.at - faultAt}`).join(',')}; closes ${c.closeCodes.map((cc) => `${cc.code}@${cc.at - faultAt}`).join(',')}`;
      }
      if (s.at - storedAt > syncIntervalMs + LAG_SLACK_MS) {
        late++;
        if (late <= 3) details.push(`${c.key} saw ${e.msgId} ${s.at - storedAt} ms after it was stored (sync interval ${syncIntervalMs} ms)`);
      }
    }
  }

  // Live deliveries missed before anything was broken.
  let missedLive = 0;
  for (const e of expected) {
    if (e.firstSentAt >= faultAt) continue;
    const record = load.records.get(`${e.sender}|${e.clientId}`);
    for (const c of load.connsOf(e.to)) {
      const s = c.seen.get(e.msgId);
      if (!s || s.source !== 'sync') continue;
      const registeredBefore = c.registrations.some((r) => r.at < e.firstSentAt);
      const closedMeanwhile = c.closeCodes.some((cc) => cc.at >= e.firstSentAt - 5000 && cc.at <= s.at);
      if (!registeredBefore || closedMeanwhile) continue;
      missedLive++;
      if (missedLive <= 3) details.push(`missed live: ${c.key} (on ${c.registrations.map((r) => r.instanceId).join(',')}) saw ${e.msgId} (${e.sender} on ${record?.senderInstance ?? '?'} -> ${e.to}, sent ${e.firstSentAt - faultAt} ms after the fault) only by sync, ${s.at - e.firstSentAt} ms after the send`);
    }
  }

  if (maxLagMs > syncIntervalMs) details.push(`longest lag after storage: ${worstLag}`);
  const unacked = [...load.records.values()].filter((r) => r.counted && r.msgId === undefined).length;
  if (unacked > 0) details.push(`${unacked} sends never acked`);

  return {
    acked: expected.length,
    stored: rows.length,
    lost: lostIds.size,
    notStored,
    notSeen,
    duplicated,
    unexpectedStored,
    unacked,
    late,
    maxLagMs,
    missedLive,
    recoveryMs: recoveryTime(load, expected, faultAt),
    details,
  };
}

/**
 * From the fault until service was whole again: the last message it slowed
 * down was done (a message counts as slowed when its ack took over 1 s from
 * the first attempt, or a recipient connection saw it over 1 s after the
 * ack), and every connection it dropped was registered again. 0 when it
 * slowed nothing and dropped no one.
 */
export function recoveryTime(load: Load, expected: Expected[], faultAt: number): number {
  let end = faultAt;
  for (const e of expected) {
    if (e.firstSentAt < faultAt - SLOW_MS) continue;
    let done = e.ackedAt;
    let isSlow = e.ackedAt - e.firstSentAt > SLOW_MS;
    for (const c of load.connsOf(e.to)) {
      const s = c.seen.get(e.msgId);
      if (!s) continue;
      done = Math.max(done, s.at);
      if (s.at - e.ackedAt > SLOW_MS) isSlow = true;
    }
    if (isSlow) end = Math.max(end, done);
  }
  for (const c of load.conns) {
    for (const close of c.closeCodes) {
      if (close.at < faultAt) continue;
      const back = c.registrations.find((r) => r.at > close.at);
      if (back) end = Math.max(end, back.at);
    }
  }
  return end - faultAt;
}

export function connsOn(load: Load, instanceId: string): Conn[] {
  return load.conns.filter((c) => c.client.state === 'ready' && c.client.instanceId === instanceId);
}

export function recordsBetween(load: Load, from: number, to: number): SendRecord[] {
  return [...load.records.values()].filter((r) => r.firstSentAt >= from && r.firstSentAt <= to);
}

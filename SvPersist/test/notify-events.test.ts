/** Pure parts of notifications: events from missed rows, and the retry schedule with its delay queues. */
import { describe, expect, it } from 'vitest';
import { toEvents, MAX_MESSAGES_PER_EVENT } from '../src/missed';
import { notifyTopology, retryDelayMs, RETRY_SCHEDULE } from '../src/notify-topology';

function row(notifyTo: string, i: number, room?: string) {
  return { notify_to: notifyTo, id: `M${i}`, sender: 'alice', recipient: room ? null : notifyTo, room_id: room ?? null, body: `body ${i}`, ts: String(1_700_000_000_000 + i), seq: String(1000 + i), position: String(i) };
}

describe('events from missed rows', () => {
  it('one recipient per event, at most 100 messages each, in the order given, each row once', () => {
    const rows = [...Array.from({ length: 230 }, (_, i) => row('bob', i)), row('carol', 300, 'r_1'), row('dave', 301)];
    let n = 0;
    const events = toEvents(rows, { includeBody: true, now: 5, newEventId: () => `E${++n}` });
    expect(events.map((e) => [e.recipient, JSON.parse(e.body).messages.length])).toEqual([['bob', 100], ['bob', 100], ['bob', 30], ['carol', 1], ['dave', 1]]);
    expect(events.flatMap((e) => JSON.parse(e.body).messages.map((m: { msgId: string }) => m.msgId))).toEqual(rows.map((r) => r.id));
    expect(MAX_MESSAGES_PER_EVENT).toBe(100);
    const carol = JSON.parse(events[3]?.body ?? '');
    expect(carol).toEqual({ type: 'messages.missed', eventId: 'E4', recipient: 'carol', messages: [{ msgId: 'M300', from: 'alice', room: 'r_1', body: 'body 300', ts: 1_700_000_000_300, seq: 300 }], ts: 5 });
    expect(events[1]?.firstMs).toBe(1_700_000_000_100);
  });

  it('without bodies when NOTIFY_INCLUDE_BODY=false', () => {
    const [event] = toEvents([row('bob', 1)], { includeBody: false, now: 5, newEventId: () => 'E' });
    expect(JSON.parse(event?.body ?? '').messages).toEqual([{ msgId: 'M1', from: 'alice', to: 'bob', ts: 1_700_000_000_001, seq: 1 }]);
  });
});

describe('the retry schedule', () => {
  it('1 s, 5 s, 30 s, 2 min, 10 min, then 30 min, each in a delay queue named after its delay', () => {
    expect([1, 2, 3, 4, 5, 6, 7, 40].map((failed) => retryDelayMs(RETRY_SCHEDULE, failed))).toEqual([1000, 5000, 30_000, 120_000, 600_000, 1_800_000, 1_800_000, 1_800_000]);
    expect([...notifyTopology('sc.').delayQueues.values()]).toEqual(['sc.notify.delay.1s', 'sc.notify.delay.5s', 'sc.notify.delay.30s', 'sc.notify.delay.2m', 'sc.notify.delay.10m', 'sc.notify.delay.30m']);
    expect(notifyTopology('sc.', { delaysMs: [250], giveUpAfterMs: 1000 }).delayQueues.get(250)).toBe('sc.notify.delay.250ms');
    expect(RETRY_SCHEDULE.giveUpAfterMs).toBe(24 * 3600_000);
  });
});

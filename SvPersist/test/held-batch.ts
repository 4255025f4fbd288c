/** A batch of one partition left in flight on purpose: its seq is drawn and its row written, and it commits only when told. */
import { Client } from 'pg';
import { conversationKey, peerOf, type Envelope } from '@simplechat/shared';
import { partitionLockSql } from '../src/store';

export interface HeldBatch {
  /** the seq its row drew */
  seq: string;
  commit(): Promise<void>;
  rollback(): Promise<void>;
}

/** Stores `m` on `partition` as a writer would (its lock, the sequence, its watermark), and keeps the transaction open. */
export async function holdBatch(databaseUrl: string, partition: number, m: Envelope): Promise<HeldBatch> {
  const db = new Client({ connectionString: databaseUrl });
  db.on('error', () => undefined);
  await db.connect();
  const c = m.conversation;
  await db.query('BEGIN');
  await db.query(`SELECT ${partitionLockSql(partition)}`);
  const { rows } = await db.query<{ seq: string }>(
    `INSERT INTO messages (id, seq, partition, sender, recipient, room_id, conversation_id, position, client_id, body, created_at)
     VALUES ($1, nextval('messages_seq'), $2, $3, $4, $5, $6, $7, $8, $9, to_timestamp($10 / 1000.0)) RETURNING seq::text AS seq`,
    [m.msgId, partition, m.from, c.kind === 'direct' ? peerOf(c, m.from) : null, c.kind === 'room' ? c.id : null, conversationKey(c), m.seq, m.clientId, m.body, m.ts],
  );
  const seq = (rows[0] as { seq: string }).seq;
  await db.query('UPDATE messages_cursor SET seq = $1::int8, moved_at = now() WHERE id = $2', [seq, partition + 1]);
  let isEnded = false;
  const end = async (sql: string) => {
    if (isEnded) return;
    isEnded = true;
    try {
      await db.query(sql);
    } finally {
      await db.end();
    }
  };
  return { seq, commit: () => end('COMMIT'), rollback: () => end('ROLLBACK') };
}

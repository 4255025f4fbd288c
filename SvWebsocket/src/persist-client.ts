/** Reads from SvPersist: history, sync, the current cursor, stored idempotency keys. */
import { historyResponse, syncResponse, cursorResponse, byClientResponse, positionsResponse, type JsonClient, type WireMessage } from '@simplechat/shared';

export interface PersistClient {
  history(user: string, peer: string, before: string | undefined, limit: number): Promise<{ messages: WireMessage[]; more: boolean }>;
  sync(user: string, after: string | undefined, limit: number): Promise<{ messages: WireMessage[]; cursor: string; more: boolean }>;
  cursor(): Promise<{ cursor: string; newestTs: number | null }>;
  byClient(sender: string, clientId: string): Promise<WireMessage | null>;
  /** the next `count` positions of a conversation; resolves with the last of them */
  reservePositions(conversation: string, count: number): Promise<number>;
}

export function createPersistClient(client: JsonClient): PersistClient {
  const q = (params: Record<string, string | number | undefined>) =>
    new URLSearchParams(Object.entries(params).filter((e): e is [string, string | number] => e[1] !== undefined).map(([k, v]): [string, string] => [k, String(v)])).toString();
  return {
    history: (user, peer, before, limit) => client.request('GET', `/internal/history?${q({ user, with: peer, before, limit })}`, historyResponse),
    sync: (user, after, limit) => client.request('GET', `/internal/sync?${q({ user, after, limit })}`, syncResponse),
    async cursor() {
      const res = await client.request('GET', '/internal/cursor', cursorResponse);
      return { cursor: res.cursor, newestTs: res.newestTs ?? null };
    },
    async byClient(sender, clientId) {
      return (await client.request('GET', `/internal/messages/by-client?${q({ sender, clientId })}`, byClientResponse)).message;
    },
    async reservePositions(conversation, count) {
      return (await client.request('POST', '/internal/positions', positionsResponse, { conversation, count })).upTo;
    },
  };
}

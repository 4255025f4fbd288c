/**
 * A real Redis Cluster for the tests: three masters and three replicas,
 * `redis-server` child processes on loopback ports inside 7101-7199 (their
 * bus ports are 10000 higher), nothing kept on disk, in a temporary
 * directory. It can find the master of a key's slot, stop its replica and cut
 * its link (so that the master's next writes are never replicated), SIGKILL
 * the master and wait until a replica took its slots over. close() kills every process and
 * removes the directory; the fault suite's exit hooks (procs.ts) do the same
 * when a test fails or the runner dies.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { mkdirSync } from 'node:fs';
import { createConnection } from 'node:net';
import { promisify } from 'node:util';
import { createClient } from 'redis';
import { removeDir, startProc, stopProc, tempDir, waitUntil, type Proc } from '../faults/procs';

const run = promisify(execFile);

/** The ports this suite may use (its bus ports are +10000). */
export const PORT_RANGE = { from: 7101, to: 7199 } as const;
const NODE_TIMEOUT_MS = 1500;

export interface ClusterNode {
  readonly port: number;
  /** the current process (a new one after restart()) */
  readonly proc: Proc;
  isRunning(): boolean;
}

export interface SlotOwner {
  slot: number;
  /** the port of the master serving the slot */
  master: number;
  /** the ports of its replicas */
  replicas: number[];
}

export interface RedisClusterHandle {
  /** REDIS_CLUSTER_NODES: every node, host:port, comma-separated */
  readonly seeds: string;
  readonly nodes: readonly ClusterNode[];
  readonly dir: string;
  /** the master (and replicas) serving a key's slot now, as a live node sees it */
  ownerOf(key: string): Promise<SlotOwner>;
  /** SIGSTOP / SIGCONT one node (a replica that stops replicating, a master that hangs) */
  pause(port: number): void;
  resume(port: number): void;
  /**
   * A master drops its replicas' links (CLIENT KILL TYPE replica): what it accepts from then on
   * reaches them only once they reconnected. With its replica paused (pause() first: a paused
   * replica would still read what its socket buffered), those writes exist on the master alone.
   */
  dropReplicaLinks(masterPort: number): Promise<void>;
  /** SIGKILL a node; resolves once the process is gone */
  kill(port: number): Promise<void>;
  /** INFO replication of a node, field by field (master_repl_offset, second_repl_offset...) */
  replication(port: number): Promise<Record<string, string>>;
  /** starts a killed node again (same port and nodes.conf): a master that was failed over comes back as a replica; resolves once it replicates */
  restart(port: number): Promise<void>;
  /** resolves once no live node sees `oldMaster` serving slots any more and every live node says cluster_state:ok */
  waitFailover(oldMaster: number, timeoutMs: number): Promise<void>;
  close(): Promise<void>;
}

function isPortFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ host: '127.0.0.1', port });
    s.setTimeout(300);
    s.once('connect', () => (s.destroy(), resolve(false)));
    s.once('error', () => resolve(true));
    s.once('timeout', () => (s.destroy(), resolve(false)));
  });
}

/** count ports in PORT_RANGE whose port and bus port are both free, from a random start (two runs seldom collide). */
async function freePorts(count: number): Promise<number[]> {
  const size = PORT_RANGE.to - PORT_RANGE.from + 1;
  const start = Math.floor(Math.random() * size);
  const found: number[] = [];
  for (let i = 0; i < size && found.length < count; i++) {
    const port = PORT_RANGE.from + ((start + i) % size);
    if ((await isPortFree(port)) && (await isPortFree(port + 10_000))) found.push(port);
  }
  if (found.length < count) throw new Error(`Redis Cluster test: fewer than ${count} free ports in ${PORT_RANGE.from}-${PORT_RANGE.to}`);
  return found;
}

async function withNode<T>(port: number, fn: (c: ReturnType<typeof createClient>) => Promise<T>): Promise<T> {
  const c = createClient({ socket: { host: '127.0.0.1', port, connectTimeout: 1000, reconnectStrategy: false } });
  c.on('error', () => undefined);
  await c.connect();
  try {
    return await fn(c);
  } finally {
    c.destroy();
  }
}

const clusterInfo = (port: number) => withNode(port, (c) => c.sendCommand(['CLUSTER', 'INFO'])).then(String);

export async function startRedisCluster(): Promise<RedisClusterHandle> {
  const dir = tempDir('redis-cluster');
  const ports = await freePorts(6);
  const nodes: { port: number; proc: Proc; isRunning(): boolean }[] = [];
  const startNode = (port: number) => {
    const data = join(dir, String(port));
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--cluster-enabled', 'yes', '--cluster-config-file', join(data, 'nodes.conf'), '--cluster-node-timeout', String(NODE_TIMEOUT_MS), '--save', '', '--appendonly', 'no', '--dir', data, '--daemonize', 'no'];
    return startProc(`redis-${port}`, 'redis-server', args, { logFile: join(dir, `redis-${port}.log`) });
  };
  const close = async () => {
    await Promise.all(nodes.map((n) => stopProc(n.proc, 'SIGKILL', 2000)));
    removeDir(dir);
  };
  try {
    for (const port of ports) {
      mkdirSync(join(dir, String(port)));
      const n = { port, proc: startNode(port), isRunning: () => n.proc.isRunning() };
      nodes.push(n);
    }
    await waitUntil('redis cluster nodes up', async () => (await Promise.all(ports.map(isPortFree))).every((free) => !free), 10_000, 50);
    await run('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '1', '--cluster-yes'], { timeout: 30_000 });
    await waitUntil('cluster_state:ok on every node', async () => (await Promise.all(ports.map(clusterInfo))).every((info) => info.includes('cluster_state:ok')), 20_000, 100);
    // Every replica in sync with its master: a failover before that would find no replica to promote.
    await waitUntil(
      'every replica replicating',
      async () => {
        const roles = await Promise.all(ports.map((p) => withNode(p, (c) => c.sendCommand(['INFO', 'replication'])).then(String)));
        const replicas = roles.filter((r) => r.includes('role:slave'));
        return replicas.length === 3 && replicas.every((r) => r.includes('master_link_status:up'));
      },
      20_000,
      100,
    );
  } catch (err) {
    await close();
    throw err;
  }

  const live = () => nodes.filter((n) => n.isRunning());
  const node = (port: number) => {
    const n = nodes.find((x) => x.port === port);
    if (!n) throw new Error(`no cluster node on port ${port}`);
    return n;
  };

  async function ownerOf(key: string, except?: number): Promise<SlotOwner> {
    let lastErr: unknown;
    for (const n of live()) {
      if (n.port === except) continue;
      try {
        return await withNode(n.port, async (c) => {
          const slot = Number(await c.sendCommand(['CLUSTER', 'KEYSLOT', key]));
          // CLUSTER NODES, not SLOTS: Redis 7 leaves out of SLOTS the replicas whose offset it does not know yet.
          const lines = String(await c.sendCommand(['CLUSTER', 'NODES'])).trim().split('\n').map((l) => l.split(' '));
          const portOf = (addr: string) => Number(addr.split('@')[0]?.split(':')[1]);
          const serves = (ranges: string[]) => ranges.some((r) => {
            const [from, to = from] = r.split('-').map(Number);
            return slot >= (from as number) && slot <= (to as number);
          });
          const master = lines.find((f) => (f[2] ?? '').includes('master') && !(f[2] ?? '').includes('fail') && serves(f.slice(8)));
          if (!master) throw new Error(`slot ${slot} is served by no node`);
          const replicas = lines.filter((f) => (f[2] ?? '').includes('slave') && !(f[2] ?? '').includes('fail') && f[3] === master[0]).map((f) => portOf(f[1] as string));
          return { slot, master: portOf(master[1] as string), replicas };
        });
      } catch (err) {
        lastErr = err;
      }
    }
    throw new Error(`no live cluster node answered: ${String(lastErr)}`);
  }

  return {
    seeds: ports.map((p) => `127.0.0.1:${p}`).join(','),
    nodes,
    dir,
    ownerOf: (key) => ownerOf(key),
    pause: (port) => node(port).proc.signal('SIGSTOP'),
    resume: (port) => node(port).proc.signal('SIGCONT'),
    async dropReplicaLinks(masterPort) {
      await withNode(masterPort, (c) => c.sendCommand(['CLIENT', 'KILL', 'TYPE', 'replica']));
    },
    async kill(port) {
      await stopProc(node(port).proc, 'SIGKILL', 1000);
    },
    async replication(port) {
      const info = String(await withNode(port, (c) => c.sendCommand(['INFO', 'replication'])));
      return Object.fromEntries(info.split('\r\n').filter((l) => l.includes(':')).map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1)]));
    },
    async restart(port) {
      const n = nodes.find((x) => x.port === port);
      if (!n || n.isRunning()) throw new Error(`cluster node ${port} is not stopped`);
      n.proc = startNode(port);
      await waitUntil(
        `node ${port} replicating again`,
        async () => {
          const info = String(await withNode(port, (c) => c.sendCommand(['INFO', 'replication'])));
          return info.includes('role:slave') && info.includes('master_link_status:up') && (await clusterInfo(port)).includes('cluster_state:ok');
        },
        20_000,
        100,
      );
    },
    async waitFailover(oldMaster, timeoutMs) {
      await waitUntil(
        `a replica took over from ${oldMaster}`,
        async () => {
          const views = await Promise.all(live().map((n) => withNode(n.port, async (c) => ({ nodes: String(await c.sendCommand(['CLUSTER', 'NODES'])), info: await clusterInfo(n.port) }))));
          const servesSlots = (line: string) => {
            const [, addr = '', flags = ''] = line.split(' ');
            return addr.startsWith(`127.0.0.1:${oldMaster}@`) && flags.split(',').includes('master') && line.trim().split(' ').length > 8;
          };
          return views.every((v) => v.info.includes('cluster_state:ok') && !v.nodes.split('\n').some(servesSlots));
        },
        timeoutMs,
        100,
      );
    },
    close,
  };
}

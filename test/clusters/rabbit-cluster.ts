/**
 * A three-node RabbitMQ cluster on this host for tests, following the recipe
 * of DESIGN.md ("Clusters on this machine"): each node its own config file
 * (listener on 127.0.0.1:<port>), node name, AMQP and distribution ports,
 * mnesia and log directories in a temporary directory the rabbitmq user owns,
 * one shared Erlang cookie, run as the rabbitmq user with one scheduler.
 * Nodes 2 and 3 join node 1. The system's broker on 5672 is not touched (epmd
 * is shared, which is fine). Every process and directory goes in close(),
 * and in the fault suite's exit handlers when a test dies first.
 */
import { execFile } from 'node:child_process';
import { chownSync, mkdirSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { removeDir, startProc, stopProc, tempDir, waitUntil, type Proc } from '../faults/procs';
import { amqpAnswers, runAs } from '../faults/infra';

const run = promisify(execFile);
const RABBITMQ_SERVER = '/usr/lib/rabbitmq/bin/rabbitmq-server';
const RABBITMQCTL = '/usr/lib/rabbitmq/bin/rabbitmqctl';

export interface RabbitNode {
  readonly index: number;
  /** rcN-<run>@localhost */
  readonly name: string;
  readonly port: number;
  readonly url: string;
  readonly proc: Proc | undefined;
  /** starts (again, with its data) and waits until it answers AMQP */
  start(): Promise<number>;
  /** SIGKILL to the node's whole process group */
  kill(): Promise<void>;
  isRunning(): boolean;
}

export interface RabbitCluster {
  nodes: RabbitNode[];
  /** every node's URL, for AMQP_URLS */
  urls: string[];
  /** rabbitmqctl against a running node, with the cluster's cookie */
  ctl(args: string[], timeoutMs?: number): Promise<string>;
  /** the node holding the leader of a quorum queue */
  leaderOf(queue: string): Promise<RabbitNode>;
  runningNodes(): Promise<string[]>;
  close(): Promise<void>;
}

export interface RabbitClusterOptions {
  /** AMQP ports of the three nodes; the distribution port of each is 20000 above */
  ports: [number, number, number];
}

export async function startRabbitCluster(options: RabbitClusterOptions): Promise<RabbitCluster> {
  const runId = randomBytes(3).toString('hex');
  const dir = tempDir('rabbit-cluster');
  const user = runAs('rabbitmq');
  const cookie = randomBytes(16).toString('hex').toUpperCase();
  const own = (path: string) => {
    if (user.uid !== undefined) chownSync(path, user.uid, user.gid ?? user.uid);
  };
  own(dir);

  const nodes: RabbitNode[] = options.ports.map((port, i) => {
    const home = join(dir, `rc${i + 1}`);
    mkdirSync(home, { recursive: true });
    writeFileSync(join(home, 'rabbitmq.conf'), `listeners.tcp.local = 127.0.0.1:${port}\n`);
    writeFileSync(join(home, 'enabled_plugins'), '[].\n');
    writeFileSync(join(home, 'rabbitmq-env.conf'), 'ERL_EPMD_ADDRESS=127.0.0.1\n');
    writeFileSync(join(home, '.erlang.cookie'), cookie);
    chmodSync(join(home, '.erlang.cookie'), 0o400);
    for (const f of ['', 'rabbitmq.conf', 'enabled_plugins', 'rabbitmq-env.conf', '.erlang.cookie']) own(join(home, f));
    const name = `rc${i + 1}-${runId}@localhost`;
    const url = `amqp://guest:guest@127.0.0.1:${port}`;
    let proc: Proc | undefined;
    const node: RabbitNode = {
      index: i,
      name,
      port,
      url,
      get proc() {
        return proc;
      },
      isRunning: () => proc?.isRunning() ?? false,
      async start() {
        const t0 = Date.now();
        proc = startProc(`rabbitmq ${name}`, RABBITMQ_SERVER, [], {
          ...user,
          cwd: home,
          env: {
            PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
            LANG: 'C.UTF-8',
            HOME: home,
            RABBITMQ_NODENAME: name,
            RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1',
            RABBITMQ_NODE_PORT: String(port),
            RABBITMQ_DIST_PORT: String(port + 20000),
            RABBITMQ_CONFIG_FILE: join(home, 'rabbitmq.conf'),
            RABBITMQ_CONF_ENV_FILE: join(home, 'rabbitmq-env.conf'),
            RABBITMQ_ENABLED_PLUGINS_FILE: join(home, 'enabled_plugins'),
            RABBITMQ_MNESIA_BASE: join(home, 'mnesia'),
            RABBITMQ_LOG_BASE: join(home, 'log'),
            RABBITMQ_LOGS: '-',
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: '+S 1:1 +sbwt none',
            ERL_EPMD_ADDRESS: '127.0.0.1',
          },
          logFile: join(dir, `rc${i + 1}.log`),
        });
        const p = proc;
        await waitUntil(
          `RabbitMQ node ${name} up`,
          async () => {
            if (!p.isRunning()) throw new Error(`${name} exited (${await p.exited}):\n${p.tail(20)}`);
            return amqpAnswers(url);
          },
          90_000,
          250,
        );
        return Date.now() - t0;
      },
      async kill() {
        if (!proc) return;
        proc.killGroup();
        await proc.exited;
      },
    };
    return node;
  });

  const ctl = async (args: string[], timeoutMs = 60_000): Promise<string> => {
    const target = nodes.find((n) => n.isRunning()) ?? nodes[0];
    const { stdout } = await run(RABBITMQCTL, ['--erlang-cookie', cookie, '-q', '-n', (target as RabbitNode).name, ...args], { timeout: timeoutMs, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir, ERL_EPMD_ADDRESS: '127.0.0.1', LANG: 'C.UTF-8' } });
    return stdout;
  };
  const ctlOn = async (node: RabbitNode, args: string[]) => {
    await run(RABBITMQCTL, ['--erlang-cookie', cookie, '-q', '-n', node.name, ...args], { timeout: 60_000, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir, ERL_EPMD_ADDRESS: '127.0.0.1', LANG: 'C.UTF-8' } });
  };

  async function runningNodes(): Promise<string[]> {
    const status = JSON.parse(await ctl(['cluster_status', '--formatter', 'json'])) as { running_nodes?: string[] };
    return status.running_nodes ?? [];
  }

  let closing: Promise<void> | undefined;
  const cluster: RabbitCluster = {
    nodes,
    urls: nodes.map((n) => n.url),
    ctl,
    runningNodes,
    async leaderOf(queue) {
      const rows = JSON.parse(await ctl(['list_queues', 'name', 'leader', '--formatter', 'json'])) as { name: string; leader: string }[];
      const leader = rows.find((r) => r.name === queue)?.leader;
      const node = nodes.find((n) => n.name === leader);
      if (!node) throw new Error(`no leader known for ${queue} (${JSON.stringify(rows.filter((r) => r.name === queue))})`);
      return node;
    },
    close() {
      closing ??= (async () => {
        await Promise.all(nodes.map((n) => (n.proc ? stopProc(n.proc, 'SIGKILL', 5000) : undefined)));
        if (!process.env.KEEP_FAULTS_DIR) removeDir(dir);
      })();
      return closing;
    },
  };

  try {
    await Promise.all(nodes.map((n) => n.start()));
    for (const n of nodes.slice(1)) {
      await ctlOn(n, ['stop_app']);
      await ctlOn(n, ['join_cluster', (nodes[0] as RabbitNode).name]);
      await ctlOn(n, ['start_app']);
    }
    await waitUntil('three running RabbitMQ nodes', async () => (await runningNodes()).length === 3, 60_000, 500);
  } catch (err) {
    await cluster.close();
    throw err;
  }
  return cluster;
}

/**
 * The benchmark's command line: its help text, the options it takes and their
 * checks. parseOptions only reads the arguments it is given (index.ts passes
 * process.argv), so it runs in tests as is.
 */
import { parseArgs } from 'node:util';

export const HELP = `npm run bench [-- options]

  --quick              smoke run (fewer users, shorter steps; under 2 minutes)
  --instances N        SvWebsocket instances of the private cluster, an even number from 2 to 8
                       (default 2): users alternate over them, half on odd-numbered, half on
                       even-numbered ones; cross-instance messages go from one half to the other,
                       same-instance ones stay on the sender's instance
  --ws URL1,URL2,...   use running SvWebsocket instances (ws://host:port/ws, an even number of
                       them) instead of a private cluster; needs JWT_SECRET (env, .env or --jwt-secret); skips the writer drain
                       and SimpleChat's connection memory (no process to measure)
  --jwt-secret S       HS256 secret of the cluster given with --ws
  --users N            connected users, split over two instances (default 1000, quick 200)
  --rates A,B,...      offered rates of the steps in msg/s (default 250,500,1000,2000,5000,10000,15000,20000,30000;
                       quick 500,2000,5000,10000,20000)
  --step-ms MS         length of a step (default 5000, quick 2000)
  --hold-ms MS         length of the headline runs (default 30000, quick 5000): the highest step
                       rate that passed past its first second is held; once one holds, the gap to
                       the next step up is halved, at most twice, to find a higher rate held
  --warmup-ms MS       time at a rate, not counted, before each hold at it (default 5000, quick 1000)
  --backlog N          messages in the writer's backlog (default 200000, quick 50000)
  --per-payload N      messages per AMQP message in that backlog (default 100)
  --connections N      idle authenticated connections on one instance (default 10000, quick 2000)
  --workers N          load generator processes, 1 or 2 (default 2)
  --body N             message body length in characters (default 100)
  --only LIST          run only some parts: raw,cross,same,hold,sio,drain,conn,rooms,presence,receipts,partitions
                       (sio: Socket.IO with its Redis adapter, cross-node, at the same steps;
                       rooms: one member sending into a room, SimpleChat then Socket.IO with its
                       Redis adapter on as many nodes as gateways, steps and holds; needs the
                       private cluster; presence: a cluster of its own with 3 gateways, watchers
                       on ws-1 told when the targets' gateway is killed, then when it is drained;
                       receipts: cross-instance steps without and with a delivered and a read
                       receipt for every message, alternated, CPU per message compared)
  --room-sizes A,B     members of the rooms, one after the other (default 100,1000; quick 50,200)
  --room-deliveries L  room steps as deliveries/s aimed at; a step sends deliveries/members msg/s
                       (2 significant digits) from one member (default 5000,10000,20000,40000,
                       80000,120000; quick 2000,10000); a room rate is held with 0 lost and
                       delivery p99 < 100 ms
  --presence-users N   presence watchers on one gateway, and target users on another (default 1000,
                       quick 200)
  --presence-watch N   targets each watcher watches, spread so every target is watched by as many
                       watchers (default 200, quick 100; at most 500)
  --receipt-rates A,B  rates of the receipts part in msg/s (default 1000,2000; quick 1000); steps of
                       --step-ms
  --partitions LIST    partitions of the write path to compare (e.g. 1,2,4; 1 to 64): for each, a cluster
                       with QUEUE_PARTITIONS=N and two SvPersist drains a --backlog split by partition
                       (rows/s, CPU per row, advisory lock waits); then the message path on classic and
                       quorum queues of the local broker and on quorum queues of a three-node RabbitMQ
                       cluster the bench starts (CPU per message, broker included). Alone it runs only
                       this part (add --only to run others too); --only partitions runs it with 1,2,4
  --partition-rates L  cross-instance step rates of the queue-type comparison (default 1000,2000;
                       quick 1000), steps of --step-ms
  --rabbit-ports P,P,P AMQP ports of the three-node RabbitMQ cluster (default 5801,5802,5803; each
                       node's distribution port is 20000 above)
  --env K=V            extra setting for every service (repeatable), e.g. --env PUBLISH_CHANNELS=8
                       (presence sets LEASE_MS=10000 and PRESENCE_RECONCILE_MS=1000 unless given here)
  --ws-node-flag F     extra node flag for the SvWebsocket processes of the private cluster
                       (repeatable; V8 flags NODE_OPTIONS refuses), e.g. --ws-node-flag=--single-threaded-gc
  --cpu-prof           run the services and load processes with --cpu-prof; print their top self-time functions
  --deadline-s S       stop everything after S seconds (default 1500, quick 170, when a part other
                       than partitions runs; rooms add 1200, quick 200; presence and receipts add 300,
                       quick 150; partitions add 240 per partition count and 600, quick 60 and 300)
`;

export interface Options {
  quick: boolean;
  ws?: string[];
  jwtSecret?: string;
  users: number;
  /** SvWebsocket instances (even) */
  instances: number;
  rates: number[];
  stepMs: number;
  holdMs: number;
  warmupMs: number;
  drainMs: number;
  backlog: number;
  perPayload: number;
  connections: number;
  workers: number;
  body: number;
  only: Set<string>;
  roomSizes: number[];
  roomDeliveries: number[];
  presenceUsers: number;
  presenceWatch: number;
  receiptRates: number[];
  env: Record<string, string>;
  wsNodeFlags: string[];
  cpuProf: boolean;
  deadlineS: number;
  /** partition counts of the partitions part (empty: not run) */
  partitions: number[];
  partitionRates: number[];
  rabbitPorts: [number, number, number];
}

export type ParsedOptions = { kind: 'options'; options: Options } | { kind: 'help' } | { kind: 'problems'; problems: string[] };

export function parseOptions(args: string[]): ParsedOptions {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: 'boolean' },
      ws: { type: 'string' },
      'jwt-secret': { type: 'string' },
      users: { type: 'string' },
      rates: { type: 'string' },
      'step-ms': { type: 'string' },
      'hold-ms': { type: 'string' },
      'warmup-ms': { type: 'string' },
      backlog: { type: 'string' },
      'per-payload': { type: 'string' },
      connections: { type: 'string' },
      workers: { type: 'string' },
      body: { type: 'string' },
      only: { type: 'string' },
      'room-sizes': { type: 'string' },
      'room-deliveries': { type: 'string' },
      'presence-users': { type: 'string' },
      'presence-watch': { type: 'string' },
      'receipt-rates': { type: 'string' },
      instances: { type: 'string' },
      env: { type: 'string', multiple: true },
      'ws-node-flag': { type: 'string', multiple: true },
      'cpu-prof': { type: 'boolean' },
      'deadline-s': { type: 'string' },
      partitions: { type: 'string' },
      'partition-rates': { type: 'string' },
      'rabbit-ports': { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) return { kind: 'help' };
  const quick = values.quick === true;
  const problems: string[] = [];
  const int = (name: string, v: string | undefined, def: number, min: number, max: number) => {
    if (v === undefined) return def;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) problems.push(`--${name} must be a whole number from ${min} to ${max}`);
    return n;
  };
  const rates = (values.rates ?? (quick ? '500,2000,5000,10000,20000' : '250,500,1000,2000,5000,10000,15000,20000,30000')).split(',').map(Number);
  if (rates.some((r) => !Number.isFinite(r) || r < 10 || r > 1_000_000)) problems.push('--rates must be numbers from 10 to 1000000, comma-separated');
  const env: Record<string, string> = {};
  for (const kv of values.env ?? []) {
    const m = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(kv);
    if (!m) problems.push(`--env ${kv}: expected NAME=value`);
    else env[m[1] as string] = m[2] as string;
  }
  const wsNodeFlags = values['ws-node-flag'] ?? [];
  for (const f of wsNodeFlags) if (!/^--[a-z0-9][a-z0-9_-]*(=\S+)?$/.test(f)) problems.push(`--ws-node-flag ${f}: expected one node flag, e.g. --ws-node-flag=--single-threaded-gc`);
  const parts = ['raw', 'cross', 'same', 'hold', 'sio', 'drain', 'conn', 'rooms', 'presence', 'receipts'];
  // --partitions alone runs only its part; with --only, the parts named too
  const only = new Set(values.only ? values.only.split(',') : values.partitions !== undefined ? ['partitions'] : parts);
  if (values.partitions !== undefined) only.add('partitions');
  for (const p of only) if (!parts.includes(p) && p !== 'partitions') problems.push(`--only: unknown part ${p} (one of ${[...parts, 'partitions'].join(',')})`);
  const list = (name: string, v: string | undefined, def: string, min: number, max: number) => {
    const ns = (v ?? def).split(',').map(Number);
    if (ns.length === 0 || ns.some((n) => !Number.isInteger(n) || n < min || n > max)) problems.push(`--${name} must be whole numbers from ${min} to ${max}, comma-separated`);
    return ns;
  };
  const roomSizes = list('room-sizes', values['room-sizes'], quick ? '50,200' : '100,1000', 4, 1000);
  const receiptRates = list('receipt-rates', values['receipt-rates'], quick ? '1000' : '1000,2000', 10, 1_000_000);
  const roomDeliveries = list('room-deliveries', values['room-deliveries'], quick ? '2000,10000' : '5000,10000,20000,40000,80000,120000', 10, 10_000_000).sort((a, b) => a - b);
  const partitions = only.has('partitions') ? [...new Set(list('partitions', values.partitions, '1,2,4', 1, 64))].sort((a, b) => a - b) : [];
  const partitionRates = list('partition-rates', values['partition-rates'], quick ? '1000' : '1000,2000', 10, 1_000_000);
  const rabbitPorts = list('rabbit-ports', values['rabbit-ports'], '5801,5802,5803', 1024, 45_535);
  if (rabbitPorts.length !== 3 || new Set(rabbitPorts).size !== 3) problems.push('--rabbit-ports needs three different ports');
  const otherParts = parts.some((p) => only.has(p));
  const deadlineDefault =
    (otherParts ? (quick ? 170 : 1500) : 0) +
    (only.has('rooms') ? (quick ? 200 : 1200) : 0) +
    (only.has('presence') || only.has('receipts') ? (quick ? 150 : 300) : 0) +
    (partitions.length ? (quick ? 300 + 60 * partitions.length : 600 + 240 * partitions.length) : 0);
  const ws = values.ws?.split(',').filter(Boolean);
  if (ws && (ws.length < 2 || ws.length % 2 !== 0)) problems.push('--ws needs an even number of URLs (two or more)');
  const o: Options = {
    quick,
    ...(ws ? { ws } : {}),
    ...(values['jwt-secret'] ? { jwtSecret: values['jwt-secret'] } : {}),
    users: int('users', values.users, quick ? 200 : 1000, 8, 100_000),
    instances: ws ? ws.length : int('instances', values.instances, 2, 2, 8),
    rates: rates.sort((a, b) => a - b),
    stepMs: int('step-ms', values['step-ms'], quick ? 2000 : 5000, 500, 600_000),
    holdMs: int('hold-ms', values['hold-ms'], quick ? 5000 : 30_000, 500, 600_000),
    warmupMs: int('warmup-ms', values['warmup-ms'], quick ? 1000 : 5000, 0, 600_000),
    drainMs: quick ? 3000 : 5000,
    backlog: int('backlog', values.backlog, quick ? 50_000 : 200_000, 1000, 10_000_000),
    perPayload: int('per-payload', values['per-payload'], 100, 1, 5000),
    connections: int('connections', values.connections, quick ? 2000 : 10_000, 10, 200_000),
    workers: int('workers', values.workers, 2, 1, 2),
    body: int('body', values.body, 100, 40, 4000),
    only,
    roomSizes,
    roomDeliveries,
    presenceUsers: int('presence-users', values['presence-users'], quick ? 200 : 1000, 2, 100_000),
    presenceWatch: int('presence-watch', values['presence-watch'], quick ? 100 : 200, 1, 500),
    receiptRates,
    env,
    wsNodeFlags,
    cpuProf: values['cpu-prof'] === true,
    deadlineS: int('deadline-s', values['deadline-s'], deadlineDefault, 30, 24 * 3600),
    partitions,
    partitionRates,
    rabbitPorts: rabbitPorts as [number, number, number],
  };
  if (o.instances % 2 !== 0) problems.push('--instances must be an even number (half the users on each side)');
  if (o.partitions.length && o.ws) problems.push('--partitions starts clusters of its own: it cannot run against --ws');
  if (problems.length) return { kind: 'problems', problems };
  return { kind: 'options', options: o };
}

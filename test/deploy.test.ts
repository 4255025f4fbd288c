/**
 * The deployment files in deploy/ are checked statically (no image registry is
 * reachable here, so nothing is built or run): every variable they set is one
 * the config schemas know, every flag is a real flag, every command they run
 * exists (compiled entry points, npm scripts), and the pieces refer to each
 * other consistently (ports, probes, grace periods, names).
 */
import { describe, it, expect } from 'vitest';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { resolve } from 'node:path';
import { parse, parseAllDocuments } from 'yaml';
import { SERVICES } from '../scripts/config-docs';
import { flagName, type ConfigSpec } from '../shared/src/config';

const ROOT = resolve(__dirname, '..');
const DEPLOY = resolve(ROOT, 'deploy');
const scripts = (JSON.parse(readFileSync(resolve(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts;
const ALL_ENV = new Set(SERVICES.flatMap((s) => Object.values(s.spec).map((o) => o.env)));

type Dict = Record<string, unknown>;
const isDict = (v: unknown): v is Dict => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The service a command runs: node <Service>/dist/main.js ... */
function serviceOf(command: readonly string[]): { name: string; spec: ConfigSpec } | undefined {
  for (const arg of command) {
    const m = /^(?:\/app\/)?(\w+)\/dist\/main\.js$/.exec(arg);
    if (m) {
      const svc = SERVICES.find((s) => s.name === m[1]);
      if (!svc) throw new Error(`command runs ${arg}, which is no SimpleChat service`);
      return svc;
    }
  }
  return undefined;
}

/** Problems with a command: a missing entry point, an unknown flag, an unknown npm script. */
function commandProblems(command: readonly string[]): string[] {
  const problems: string[] = [];
  const svc = serviceOf(command);
  for (const arg of command) {
    const m = /^(?:\/app\/)?(\w+)\/dist\/main\.js$/.exec(arg);
    if (!m) continue;
    if (!existsSync(resolve(ROOT, m[1] as string, 'src/main.ts'))) problems.push(`${arg}: no ${m[1]}/src/main.ts`);
    if (!existsSync(resolve(ROOT, m[1] as string, 'dist/main.js'))) problems.push(`${arg}: tsc -b does not produce it`);
  }
  if (svc) {
    const flags = new Set(['help', ...Object.values(svc.spec).map((o) => flagName(o))]);
    for (const arg of command) if (arg.startsWith('--') && !flags.has(arg.slice(2).split('=')[0] as string)) problems.push(`${svc.name} has no flag ${arg}`);
  }
  for (const m of command.join(' ').matchAll(/npm run ([\w:.-]+)/g)) if (!scripts[m[1] as string]) problems.push(`no npm script ${m[1]}`);
  if (!svc && !/npm run /.test(command.join(' '))) problems.push(`runs neither a service nor an npm script: ${command.join(' ')}`);
  return problems;
}

function unknownEnv(names: Iterable<string>, spec: ConfigSpec | undefined): string[] {
  const known = spec ? new Set(Object.values(spec).map((o) => o.env)) : ALL_ENV;
  return [...names].filter((n) => !known.has(n));
}

function specValue(spec: ConfigSpec, env: string, values: Record<string, string>): string | undefined {
  return values[env] ?? Object.values(spec).find((o) => o.env === env)?.default;
}

// ---- Dockerfile --------------------------------------------------------------

interface TsConfig {
  compilerOptions?: { outDir?: string };
  references?: { path: string }[];
}

/** Where tsc -b writes a workspace's output: its tsconfig's outDir, or those of the projects a solution tsconfig references (relative to the workspace). */
function tscOutDirs(workspace: string): string[] {
  const config = JSON.parse(readFileSync(resolve(workspace, 'tsconfig.json'), 'utf8')) as TsConfig;
  if (config.compilerOptions?.outDir !== undefined) return [config.compilerOptions.outDir];
  return (config.references ?? []).map((r) => {
    const ref = JSON.parse(readFileSync(resolve(workspace, r.path), 'utf8')) as TsConfig;
    return ref.compilerOptions?.outDir ?? '';
  });
}

describe('deploy/Dockerfile', () => {
  const text = readFileSync(resolve(DEPLOY, 'Dockerfile'), 'utf8');
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  const stages: { name: string; lines: string[] }[] = [];
  for (const l of lines) {
    const from = /^FROM\s+\S+(?:\s+AS\s+(\S+))?$/i.exec(l);
    if (from) stages.push({ name: from[1] ?? String(stages.length), lines: [] });
    else stages.at(-1)?.lines.push(l);
  }
  const runtime = stages.at(-1);

  it('is multi-stage: builds with npm ci and tsc -b, runs as a non-root user with production dependencies only', () => {
    expect(stages.map((s) => s.name)).toEqual(expect.arrayContaining(['build', 'migrate', 'runtime']));
    expect(runtime?.name).toBe('runtime');
    const build = stages.find((s) => s.name === 'build')?.lines.join('\n') ?? '';
    expect(build).toMatch(/RUN npm ci\b/);
    expect(build).toMatch(/RUN npx tsc -b/);
    expect(runtime?.lines.join('\n')).toMatch(/RUN npm ci --omit=dev/);
    for (const stage of stages.filter((s) => s.name !== 'build')) {
      const user = stage.lines.filter((l) => /^USER\s/i.test(l)).at(-1);
      expect(user, `stage ${stage.name}`).toBeDefined();
      expect(user).not.toMatch(/\s(root|0)$/);
    }
    expect(existsSync(resolve(DEPLOY, 'Dockerfile.dockerignore'))).toBe(true);
  });

  it('copies only what exists: sources from the repository, tsc output from the build stage', () => {
    for (const l of lines.filter((x) => /^COPY\s/i.test(x))) {
      const parts = l.split(/\s+/).slice(1);
      const from = parts.find((p) => p.startsWith('--from='))?.slice(7);
      const paths = parts.filter((p) => !p.startsWith('--'));
      const sources = paths.slice(0, -1);
      for (const src of sources) {
        if (from) {
          expect(stages.map((s) => s.name), l).toContain(from);
          const m = /^\/app\/(\w+)\/dist$/.exec(src);
          expect(m, `${l}: copies a tsc output directory`).not.toBeNull();
          expect(tscOutDirs(resolve(ROOT, m?.[1] as string)), l).toSatisfy((dirs: string[]) => dirs.length > 0 && dirs.every((d) => d === 'dist' || d.startsWith('dist/')));
        } else {
          expect(existsSync(resolve(ROOT, src)), `${l}: ${src} exists`).toBe(true);
        }
      }
    }
  });

  it('runs a compiled service by default and npm scripts in the migrate stage', () => {
    for (const stage of stages.filter((s) => s.name !== 'build')) {
      const cmd = stage.lines.find((l) => /^CMD\s/i.test(l));
      expect(cmd, stage.name).toBeDefined();
      expect(commandProblems(JSON.parse((cmd as string).slice(4)) as string[])).toEqual([]);
    }
  });
});

// ---- docker-compose.yml --------------------------------------------------------

describe('deploy/docker-compose.yml', () => {
  const compose = parse(readFileSync(resolve(DEPLOY, 'docker-compose.yml'), 'utf8'), { merge: true }) as { services: Record<string, Dict> };
  const ours = Object.entries(compose.services).filter(([, s]) => isDict(s.build) || /^simplechat/.test(String(s.image)));
  const envOf = (s: Dict): Record<string, string> => {
    const env = s.environment;
    if (Array.isArray(env)) return Object.fromEntries(env.map((e: string) => [e.split('=')[0], e.split('=').slice(1).join('=')]));
    return Object.fromEntries(Object.entries((env as Dict | undefined) ?? {}).map(([k, v]) => [k, String(v)]));
  };

  it('runs every SimpleChat container with a real command and only variables its config schema knows', () => {
    expect(ours.map(([n]) => n).sort()).toEqual(['discover', 'migrate', 'persist', 'ws-1', 'ws-2']);
    for (const [name, s] of ours) {
      const command = s.command as string[];
      expect(Array.isArray(command), `${name}: command as a list`).toBe(true);
      expect(commandProblems(command), name).toEqual([]);
      expect(unknownEnv(Object.keys(envOf(s)), serviceOf(command)?.spec), `${name}: unknown variables`).toEqual([]);
    }
  });

  it('builds from deploy/Dockerfile stages that exist', () => {
    const dockerfile = readFileSync(resolve(DEPLOY, 'Dockerfile'), 'utf8');
    for (const [name, s] of ours) {
      const build = s.build as { context: string; dockerfile: string; target: string } | undefined;
      expect(build, name).toBeDefined();
      expect(existsSync(resolve(DEPLOY, build?.context ?? '', build?.dockerfile ?? ''))).toBe(true);
      expect(dockerfile, name).toMatch(new RegExp(`^FROM .* AS ${build?.target}$`, 'm'));
    }
  });

  it('wires the services to each other: URLs, ports, dependencies, the proxy, grace periods', () => {
    const names = Object.keys(compose.services);
    for (const [name, s] of Object.entries(compose.services)) {
      const deps = Array.isArray(s.depends_on) ? (s.depends_on as string[]) : Object.keys((s.depends_on as Dict | undefined) ?? {});
      for (const d of deps) expect(names, `${name} depends on ${d}`).toContain(d);
      for (const v of (s.volumes as string[] | undefined) ?? []) if (v.startsWith('./')) expect(existsSync(resolve(DEPLOY, v.split(':')[0] as string)), v).toBe(true);
    }
    const portOf = (svc: string) => {
      const s = compose.services[svc] as Dict;
      const spec = serviceOf(s.command as string[])?.spec as ConfigSpec;
      const envName = Object.values(spec).find((o) => flagName(o) === 'port')?.env as string;
      return specValue(spec, envName, envOf(s));
    };
    const wsInstances = ours.filter(([, s]) => serviceOf(s.command as string[])?.name === 'SvWebsocket');
    const ids = new Set<string>();
    for (const [name, s] of wsInstances) {
      const env = envOf(s);
      expect(env.PUBLIC_URL, `${name} advertises its compose name, not localhost`).toBe(`http://${name}:${portOf(name)}`);
      for (const [key, target] of [['DISCOVER_URL', 'discover'], ['PERSIST_URL', 'persist']] as const) expect(env[key]).toBe(`http://${target}:${portOf(target)}`);
      const command = s.command as string[];
      ids.add(command[command.indexOf('--instance-id') + 1] as string);
      expect(Number.parseInt(String(s.stop_grace_period), 10) * 1000).toBeGreaterThan(Number(specValue(serviceOf(command)?.spec as ConfigSpec, 'SHUTDOWN_TIMEOUT_MS', env)));
    }
    expect(ids.size).toBe(wsInstances.length);
    expect(envOf(compose.services.discover as Dict).DISCOVER_HOST).toBe('0.0.0.0');
    expect(envOf(compose.services.persist as Dict).PERSIST_HOST).toBe('0.0.0.0');

    const nginx = readFileSync(resolve(DEPLOY, 'nginx.conf'), 'utf8');
    const upstream = [...nginx.matchAll(/^\s*server\s+([\w.-]+):(\d+)/gm)].map((m) => `${m[1]}:${m[2]}`);
    expect(upstream.sort()).toEqual(wsInstances.map(([n]) => `${n}:${portOf(n)}`).sort());
    expect(nginx).toMatch(/proxy_set_header Upgrade \$http_upgrade;/);
    expect(nginx).toMatch(/location ~\* \^\/\+\(internal\|metrics\)/);
  });
});

// ---- Kubernetes ------------------------------------------------------------------

describe('deploy/k8s', () => {
  const files = readdirSync(resolve(DEPLOY, 'k8s')).filter((f) => f.endsWith('.yaml'));
  const docs = files.flatMap((f) => parseAllDocuments(readFileSync(resolve(DEPLOY, 'k8s', f), 'utf8')).map((d) => ({ file: f, doc: d.toJS() as Dict })));
  const ofKind = (kind: string) => docs.filter((d) => d.doc.kind === kind).map((d) => d.doc);
  const byName = (kind: string) => new Map(ofKind(kind).map((d) => [(d.metadata as Dict).name as string, d]));
  const configMaps = byName('ConfigMap');
  const secrets = byName('Secret');
  const workloads = [...ofKind('Deployment'), ...ofKind('Job')];
  interface Container {
    name: string;
    command: string[];
    env?: { name: string; value?: string; valueFrom?: Dict }[];
    envFrom?: { configMapRef?: { name: string }; secretRef?: { name: string } }[];
    ports?: { name?: string; containerPort: number }[];
    readinessProbe?: { httpGet: { path: string; port: string | number } };
    livenessProbe?: { httpGet: { path: string; port: string | number } };
    lifecycle?: { preStop?: { exec?: { command: string[] } } };
  }
  const podSpec = (w: Dict) => ((w.spec as Dict).template as Dict).spec as Dict & { containers: Container[]; terminationGracePeriodSeconds?: number };

  /** Every variable a container gets, with its literal value when it has one (ConfigMap or value). */
  function containerEnv(c: Container): { values: Record<string, string>; names: string[]; problems: string[] } {
    const values: Record<string, string> = {};
    const names: string[] = [];
    const problems: string[] = [];
    for (const from of c.envFrom ?? []) {
      if (from.configMapRef) {
        const cm = configMaps.get(from.configMapRef.name);
        if (!cm) problems.push(`no ConfigMap ${from.configMapRef.name}`);
        for (const [k, v] of Object.entries((cm?.data as Dict | undefined) ?? {})) {
          values[k] = String(v);
          names.push(k);
        }
      } else problems.push(`${c.name}: envFrom other than a ConfigMap cannot be checked`);
    }
    const helpers = new Set<string>();
    for (const e of c.env ?? []) for (const m of (e.value ?? '').matchAll(/\$\((\w+)\)/g)) helpers.add(m[1] as string);
    for (const e of c.env ?? []) {
      const ref = (e.valueFrom?.secretKeyRef ?? e.valueFrom?.configMapKeyRef) as { name: string; key: string } | undefined;
      if (ref) {
        const obj = e.valueFrom?.secretKeyRef ? secrets.get(ref.name) : configMaps.get(ref.name);
        const data = { ...((obj?.data as Dict | undefined) ?? {}), ...((obj?.stringData as Dict | undefined) ?? {}) };
        if (!(ref.key in data)) problems.push(`${e.name}: ${ref.name} has no key ${ref.key}`);
      }
      if (e.value !== undefined) values[e.name] = e.value;
      if (!helpers.has(e.name)) names.push(e.name);
    }
    return { values, names, problems };
  }

  it('kustomization lists every manifest', () => {
    const kustomization = parse(readFileSync(resolve(DEPLOY, 'k8s/kustomization.yaml'), 'utf8')) as { resources: string[] };
    expect([...kustomization.resources].sort()).toEqual(files.filter((f) => f !== 'kustomization.yaml').sort());
  });

  it('every container runs a real command and gets only variables its config schema knows', () => {
    expect(workloads.length).toBeGreaterThanOrEqual(4);
    for (const w of workloads) {
      for (const c of podSpec(w).containers) {
        expect(commandProblems(c.command), c.name).toEqual([]);
        const env = containerEnv(c);
        expect(env.problems, c.name).toEqual([]);
        expect(unknownEnv(env.names, serviceOf(c.command)?.spec), `${c.name}: unknown variables`).toEqual([]);
      }
      expect((podSpec(w).securityContext as Dict | undefined)?.runAsNonRoot, String((w.metadata as Dict).name)).toBe(true);
    }
  });

  it('services probe /health/ready and /health/live on the port they listen on, and get more grace than their drain deadline', () => {
    for (const w of ofKind('Deployment')) {
      const spec = podSpec(w);
      for (const c of spec.containers) {
        const svc = serviceOf(c.command);
        expect(svc, c.name).toBeDefined();
        const env = containerEnv(c).values;
        const portEnv = Object.values(svc?.spec ?? {}).find((o) => flagName(o) === 'port')?.env as string;
        const listens = Number(specValue(svc?.spec as ConfigSpec, portEnv, env));
        const portOf = (p: string | number | undefined) => (typeof p === 'number' ? p : c.ports?.find((x) => x.name === p)?.containerPort);
        expect(c.ports?.map((p) => p.containerPort)).toContain(listens);
        expect(c.readinessProbe?.httpGet.path).toBe('/health/ready');
        expect(portOf(c.readinessProbe?.httpGet.port)).toBe(listens);
        expect(c.livenessProbe?.httpGet.path).toBe('/health/live');
        expect(portOf(c.livenessProbe?.httpGet.port)).toBe(listens);
        const shutdownMs = Number(specValue(svc?.spec as ConfigSpec, 'SHUTDOWN_TIMEOUT_MS', env));
        const preStop = c.lifecycle?.preStop?.exec?.command;
        const preStopMs = preStop?.[0] === 'sleep' ? Number(preStop[1]) * 1000 : 0;
        expect((spec.terminationGracePeriodSeconds ?? 30) * 1000, c.name).toBeGreaterThan(shutdownMs + preStopMs);
        if (svc?.name === 'SvWebsocket') {
          const pub = c.env?.find((e) => e.name === 'PUBLIC_URL')?.value ?? '';
          expect(pub).toBe(`http://$(POD_IP):${listens}`);
          expect(c.env?.find((e) => e.name === 'POD_IP')?.valueFrom).toEqual({ fieldRef: { fieldPath: 'status.podIP' } });
        }
      }
    }
  });

  it('Services select pods that exist and target their ports; the ingress exposes neither /internal nor /metrics', () => {
    const services = ofKind('Service');
    for (const s of services) {
      const selector = (s.spec as Dict).selector as Record<string, string>;
      const pods = ofKind('Deployment').filter((d) => Object.entries(selector).every(([k, v]) => (((d.spec as Dict).template as Dict).metadata as { labels: Record<string, string> }).labels[k] === v));
      expect(pods, String((s.metadata as Dict).name)).toHaveLength(1);
      for (const p of (s.spec as { ports: { targetPort: string | number }[] }).ports) {
        const ports = podSpec(pods[0] as Dict).containers.flatMap((c) => c.ports ?? []);
        expect(ports.some((x) => x.name === p.targetPort || x.containerPort === p.targetPort)).toBe(true);
      }
    }
    const serviceNames = new Set(services.map((s) => (s.metadata as Dict).name));
    for (const ing of ofKind('Ingress')) {
      for (const rule of (ing.spec as { rules: { http: { paths: { path: string; backend: { service: { name: string } } }[] } }[] }).rules) {
        for (const p of rule.http.paths) {
          expect(serviceNames).toContain(p.backend.service.name);
          // no catch-all path: it would route /internal and /metrics too
          expect(p.path).not.toBe('/');
          expect(p.path).not.toMatch(/^\/(internal|metrics)/i);
        }
      }
    }
  });
});

// ---- docker-compose.cluster.yml ------------------------------------------------

describe('deploy/docker-compose.cluster.yml', () => {
  const text = readFileSync(resolve(DEPLOY, 'docker-compose.cluster.yml'), 'utf8');
  // `!override` (Compose's replace-instead-of-merge) is a custom tag: read as the plain value.
  const cluster = parse(text.replaceAll(' !override', ''), { merge: true }) as { services: Record<string, Dict> };
  const base = parse(readFileSync(resolve(DEPLOY, 'docker-compose.yml'), 'utf8'), { merge: true }) as { services: Record<string, Dict> };
  const envOf = (s: Dict | undefined): Record<string, string> => Object.fromEntries(Object.entries((s?.environment as Dict | undefined) ?? {}).map(([k, v]) => [k, String(v)]));
  const commandOf = (name: string) => (cluster.services[name]?.command ?? base.services[name]?.command) as string[] | undefined;

  it('gives every SimpleChat service the cluster settings, each a variable its config schema knows', () => {
    const ours = Object.keys(cluster.services).filter((n) => commandOf(n)?.some((a) => /dist\/main\.js$/.test(a)));
    expect(ours.sort()).toEqual(['discover', 'persist', 'persist-2', 'ws-1', 'ws-2']);
    for (const name of ours) {
      const env = { ...envOf(base.services[name]), ...envOf(cluster.services[name]) };
      expect(unknownEnv(Object.keys(env), serviceOf(commandOf(name) as string[])?.spec), `${name}: unknown variables`).toEqual([]);
    }
    for (const name of ['discover', 'ws-1', 'ws-2']) expect(envOf(cluster.services[name]).REDIS_CLUSTER_NODES?.split(','), name).toHaveLength(3);
    for (const name of ['persist', 'persist-2', 'ws-1', 'ws-2']) {
      const env = envOf(cluster.services[name]);
      expect(env.AMQP_URLS?.split(','), name).toHaveLength(3);
      expect(env.QUEUE_PARTITIONS, name).toBe('4');
    }
    for (const name of ['persist', 'persist-2']) expect(envOf(cluster.services[name]).DATABASE_READ_URL, name).toMatch(/@postgres-replica:5432\//);
  });

  it('runs six Redis nodes joined into one cluster, three RabbitMQ nodes and a Postgres replica, at addresses the settings name', () => {
    const redisNodes = Object.keys(cluster.services).filter((n) => /^redis-\d$/.test(n));
    expect(redisNodes).toHaveLength(6);
    const addresses = redisNodes.map((n) => ((cluster.services[n]?.networks as Dict).default as Dict).ipv4_address as string);
    const init = (cluster.services['redis-cluster-init']?.command as string[]).join(' ');
    for (const a of addresses) expect(init).toContain(`${a}:6379`);
    for (const seed of envOf(cluster.services.discover).REDIS_CLUSTER_NODES?.split(',') ?? []) expect(addresses.map((a) => `${a}:6379`)).toContain(seed);
    const rabbitNodes = Object.keys(cluster.services).filter((n) => /^rabbitmq-\d$/.test(n));
    expect(rabbitNodes).toHaveLength(3);
    const conf = readFileSync(resolve(DEPLOY, 'cluster/rabbitmq.conf'), 'utf8');
    for (const n of rabbitNodes) {
      expect(cluster.services[n]?.hostname).toBe(n);
      expect(conf).toContain(`rabbit@${n}`);
      expect(envOf(cluster.services['ws-1']).AMQP_URLS).toContain(`@${n}:5672`);
    }
    expect((cluster.services['postgres-replica']?.command as string[]).join(' ')).toMatch(/pg_basebackup -h postgres -U replicator .* -R /);
    expect(readFileSync(resolve(DEPLOY, 'cluster/postgres-primary.sh'), 'utf8')).toMatch(/CREATE ROLE replicator WITH REPLICATION/);
    for (const [name, s] of Object.entries(cluster.services)) {
      const deps = Object.keys((s.depends_on as Dict | undefined) ?? {});
      for (const d of deps) expect([...Object.keys(cluster.services), ...Object.keys(base.services)], `${name} depends on ${d}`).toContain(d);
    }
  });
});

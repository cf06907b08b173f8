// The benchmark: starts each variant app in a child process (bench/server.ts), drives it with
// autocannon over loopback, alternating the variants of one framework round by round, and prints
// requests/s, p50/p99 latency and the ratios to the baselines (medians over rounds). Writes the
// same to bench/results/latest.json. Run it with `pnpm bench` (which builds the packages and
// finds or starts a PostgreSQL, as the tests do); see bench/README.md. With --latency, every
// server reaches PostgreSQL through a proxy that adds that round-trip time (latency-proxy.ts).
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { dirname, join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import {
  type LatencyProxy,
  measureRoundTrip,
  type ProxyStats,
  type RoundTrip,
  startLatencyProxy,
  targetOf,
  throughProxy,
} from './latency-proxy.js';
import { type Child, load, median, type Sample, serverEnv, startServer, stopServer, table } from './measure.js';
import {
  type Comparison,
  comparisonsFor,
  FRAMEWORKS,
  type Framework,
  type Measured,
  measurementsFor,
  ROUTES,
  type Route,
  type ServerName,
  serversFor,
  variantLabel,
} from './variants.js';

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const ROOT = dirname(BENCH_DIR);
const RESULTS_DIR = join(BENCH_DIR, 'results');
const PROFILE_DIR = join(RESULTS_DIR, 'profiles');

const USAGE = `usage: pnpm bench [options]
  --rounds N        rounds per framework; each round measures every variant once (default 5)
  --duration S      seconds of load per measurement (default 5)
  --warmup S        seconds of load per route and server before the first round (default 1)
  --connections N   concurrent HTTP connections of the load generator (default 16)
  --pool N          pool size of every variant (default 10)
  --only NAME       fastify, express or koa; repeatable (default: all three)
  --route NAME      insert or no-query; repeatable (default: both)
  --latency MS      put a proxy between the servers and PostgreSQL that adds MS to every round
                    trip (half each way; 0 = the proxy alone); default: no proxy
  --profile         run the servers under node --cpu-prof, into bench/results/profiles/<server>/
                    (summarise with: npx tsx bench/profile.ts bench/results/profiles/<server>)`;

interface Options {
  readonly rounds: number;
  readonly duration: number;
  readonly warmup: number;
  readonly connections: number;
  readonly pool: number;
  readonly frameworks: readonly Framework[];
  readonly routes: readonly Route[];
  /** Round trip added by the proxy (ms); null: the servers connect to PostgreSQL directly. */
  readonly latency: number | null;
  readonly profile: boolean;
}

function positive(name: string, value: string | undefined, fallback: number, integer = true): number {
  if (value === undefined) return fallback;
  const number = Number(value);
  if (
    !Number.isFinite(number) ||
    number < 0 ||
    (integer && !Number.isInteger(number)) ||
    (name !== 'warmup' && number === 0)
  ) {
    throw new Error(`--${name} must be a positive ${integer ? 'integer' : 'number'}, got ${value}\n${USAGE}`);
  }
  return number;
}

function latency(value: string | undefined): number | null {
  if (value === undefined) return null;
  const number = Number(value);
  if (value.trim() === '' || !Number.isFinite(number) || number < 0) {
    throw new Error(`--latency must be a round-trip time in ms, 0 or more, got ${value}\n${USAGE}`);
  }
  return number;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      rounds: { type: 'string' },
      duration: { type: 'string' },
      warmup: { type: 'string' },
      connections: { type: 'string' },
      pool: { type: 'string' },
      only: { type: 'string', multiple: true },
      route: { type: 'string', multiple: true },
      latency: { type: 'string' },
      profile: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const only = values.only ?? [...FRAMEWORKS];
  for (const name of only) {
    if (!(FRAMEWORKS as readonly string[]).includes(name))
      throw new Error(`--only ${name}: not one of ${FRAMEWORKS.join(', ')}`);
  }
  const routes = values.route ?? [...ROUTES];
  for (const name of routes) {
    if (!(ROUTES as readonly string[]).includes(name))
      throw new Error(`--route ${name}: not one of ${ROUTES.join(', ')}`);
  }
  return {
    rounds: positive('rounds', values.rounds, 5),
    duration: positive('duration', values.duration, 5, false),
    warmup: positive('warmup', values.warmup, 1, false),
    connections: positive('connections', values.connections, 16),
    pool: positive('pool', values.pool, 10),
    frameworks: FRAMEWORKS.filter((framework) => only.includes(framework)),
    routes: ROUTES.filter((route) => routes.includes(route)),
    latency: latency(values.latency),
    profile: values.profile,
  };
}

const key = ({ server, route }: Measured): string => `${server} ${route}`;

interface MeasuredResult {
  readonly framework: Framework;
  readonly route: Route;
  readonly variant: string;
  readonly server: ServerName;
  readonly reqPerSec: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly cpuMicrosPerRequest: number;
  readonly errors: number;
  readonly non2xx: number;
  readonly rounds: readonly Sample[];
}

interface ComparisonResult {
  readonly framework: Framework;
  readonly route: Route;
  readonly subject: string;
  readonly baseline: string;
  /** Median over rounds of subject req/s ÷ baseline req/s measured in the same round. */
  readonly ratio: number;
  readonly target: number;
  readonly met: boolean;
  readonly perRound: readonly number[];
  /** Median over rounds of the baseline's server CPU per request ÷ the subject's (1 = as cheap). */
  readonly cpuRatio: number;
}

/** What the servers answered, warm-up included. */
interface Tally {
  /** Requests per server: divides a CPU profile's busy time. */
  readonly served: Map<ServerName, number>;
  /** 2xx answers of the insert route: the table must hold at least as many rows. */
  insertsAnswered: number;
}

function count(tally: Tally, m: Measured, sample: Sample): void {
  tally.served.set(m.server, (tally.served.get(m.server) ?? 0) + sample.completed);
  if (m.route === 'insert') tally.insertsAnswered += sample.completed - sample.non2xx;
}

async function benchFramework(
  framework: Framework,
  env: NodeJS.ProcessEnv,
  options: Options,
  samples: Map<string, Sample[]>,
  tally: Tally,
): Promise<void> {
  const servers = new Map<ServerName, Child>();
  try {
    for (const name of serversFor(framework))
      servers.set(name, await startServer(name, env, options.profile ? join(PROFILE_DIR, name) : undefined));
    const measurements = measurementsFor(framework).filter((m) => options.routes.includes(m.route));
    const serverOf = (name: ServerName): Child => {
      const child = servers.get(name);
      if (child === undefined) throw new Error(`${name} is not running`);
      return child;
    };
    if (options.warmup > 0) {
      log(`${framework}: warming up ${measurements.length} × ${options.warmup} s`);
      for (const m of measurements) {
        count(tally, m, await load(serverOf(m.server), m.route, options.warmup, options.connections));
      }
    }
    for (let round = 0; round < options.rounds; round++) {
      // Reversed every other round, so that no variant always runs first (A B, B A, …).
      const order = round % 2 === 0 ? measurements : [...measurements].reverse();
      for (const m of order) {
        await sleep(200);
        const sample = await load(serverOf(m.server), m.route, options.duration, options.connections);
        count(tally, m, sample);
        const list = samples.get(key(m)) ?? [];
        list.push(sample);
        samples.set(key(m), list);
        const faults = sample.errors + sample.non2xx > 0 ? `  (${sample.errors} errors, ${sample.non2xx} non-2xx)` : '';
        log(
          `[${framework} round ${round + 1}/${options.rounds}] ${m.route.padEnd(8)} ${variantLabel(m.server, m.route).padEnd(17)} ` +
            `${Math.round(sample.reqPerSec).toString().padStart(6)} req/s  p50 ${sample.p50} ms  p99 ${sample.p99} ms  ` +
            `${sample.cpuMicrosPerRequest.toFixed(1)} µs CPU/req${faults}`,
        );
      }
    }
  } finally {
    await Promise.all([...servers.values()].map(stopServer));
  }
}

function summarise(options: Options, samples: Map<string, Sample[]>) {
  const measured: MeasuredResult[] = [];
  const comparisons: ComparisonResult[] = [];
  for (const framework of options.frameworks) {
    for (const m of measurementsFor(framework).filter((m) => options.routes.includes(m.route))) {
      const rounds = samples.get(key(m)) ?? [];
      measured.push({
        framework,
        route: m.route,
        variant: variantLabel(m.server, m.route),
        server: m.server,
        reqPerSec: median(rounds.map((s) => s.reqPerSec)),
        p50Ms: median(rounds.map((s) => s.p50)),
        p99Ms: median(rounds.map((s) => s.p99)),
        cpuMicrosPerRequest: median(rounds.map((s) => s.cpuMicrosPerRequest)),
        errors: rounds.reduce((sum, s) => sum + s.errors, 0),
        non2xx: rounds.reduce((sum, s) => sum + s.non2xx, 0),
        rounds,
      });
    }
    for (const c of comparisonsFor(framework, options.latency)) {
      if (options.routes.includes(c.subject.route)) comparisons.push(compare(framework, c, samples));
    }
  }
  return { measured, comparisons };
}

function compare(framework: Framework, c: Comparison, samples: Map<string, Sample[]>): ComparisonResult {
  const subject = samples.get(key(c.subject)) ?? [];
  const baseline = samples.get(key(c.baseline)) ?? [];
  const perRound = subject.map((s, i) => s.reqPerSec / (baseline[i]?.reqPerSec ?? Number.NaN));
  const ratio = median(perRound);
  const cpuRatio = median(
    subject.map((s, i) => (baseline[i]?.cpuMicrosPerRequest ?? Number.NaN) / s.cpuMicrosPerRequest),
  );
  return {
    framework,
    route: c.subject.route,
    subject: variantLabel(c.subject.server, c.subject.route),
    baseline: variantLabel(c.baseline.server, c.baseline.route),
    ratio,
    target: c.target,
    met: ratio >= c.target,
    perRound,
    cpuRatio,
  };
}

// --- output ------------------------------------------------------------------------------------

function log(line: string): void {
  console.error(line);
}

const ms = (value: number): string => (Number.isInteger(value) ? String(value) : value.toFixed(2));

function render(summary: ReturnType<typeof summarise>): string {
  const measuredTable = table(
    ['framework', 'route', 'variant', 'req/s', 'p50 ms', 'p99 ms', 'server CPU µs/req', 'errors'],
    summary.measured.map((m) => [
      m.framework,
      m.route,
      m.variant,
      Math.round(m.reqPerSec).toLocaleString('en-US'),
      ms(m.p50Ms),
      ms(m.p99Ms),
      m.cpuMicrosPerRequest.toFixed(1),
      String(m.errors + m.non2xx),
    ]),
    [3, 4, 5, 6, 7],
  );
  const ratioTable = table(
    ['framework', 'route', 'ratio (req/s)', 'median', 'rounds', 'target', '', 'CPU/req ratio'],
    summary.comparisons.map((c) => [
      c.framework,
      c.route,
      `${c.subject} / ${c.baseline}`,
      c.ratio.toFixed(3),
      c.perRound.map((r) => r.toFixed(2)).join(' '),
      `>= ${c.target.toFixed(2)}`,
      c.met ? 'met' : 'MISSED',
      c.cpuRatio.toFixed(3),
    ]),
    [3, 7],
  );
  return `${measuredTable}\n\n${ratioTable}`;
}

// --- main --------------------------------------------------------------------------------------

/** The proxy of a --latency run, and what a round trip measured before the load. */
interface Latency {
  readonly proxy: LatencyProxy;
  readonly direct: RoundTrip;
  readonly proxied: RoundTrip;
}

async function startLatency(databaseUrl: string, roundTripMs: number): Promise<Latency> {
  const proxy = await startLatencyProxy(targetOf(databaseUrl), roundTripMs);
  try {
    const direct = await measureRoundTrip(databaseUrl, 200);
    const proxied = await measureRoundTrip(throughProxy(databaseUrl, proxy.port), 200);
    return { proxy, direct, proxied };
  } catch (err) {
    await proxy.close();
    throw err;
  }
}

function describeLatency(latency: Latency | undefined, stats: ProxyStats | undefined): string {
  if (latency === undefined) return 'latency: none added (servers connect to PostgreSQL directly)';
  const rt = (r: RoundTrip): string => `p50 ${r.p50Ms.toFixed(2)} ms, p99 ${r.p99Ms.toFixed(2)} ms`;
  const load =
    stats === undefined
      ? ''
      : `; under load: one way p50 ${stats.oneWayP50Ms.toFixed(2)} ms, p99 ${stats.oneWayP99Ms.toFixed(2)} ms, ` +
        `proxy thread ${Math.round(stats.eventLoopUtilization * 100)} % busy`;
  return (
    `latency: ${latency.proxy.roundTripMs} ms round trip added by the proxy; SELECT 1 before the load: ` +
    `direct ${rt(latency.direct)}, through the proxy ${rt(latency.proxied)}${load}`
  );
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const databaseUrl = process.env.DATABASE_URL;
  if (!databaseUrl) throw new Error('DATABASE_URL is not set: run `pnpm bench`, which finds or starts a PostgreSQL.');
  const started = Date.now();
  const table = `bench_${process.pid}_${randomBytes(4).toString('hex')}`;
  const admin = new pg.Client({ connectionString: databaseUrl, application_name: 'context_db_bench_admin' });
  await admin.connect();
  const { rows } = await admin.query<{ server_version: string }>('SHOW server_version');
  await admin.query(`CREATE TABLE ${table} (id serial PRIMARY KEY, text text NOT NULL)`);
  const latency = options.latency === null ? undefined : await startLatency(databaseUrl, options.latency);
  if (latency !== undefined) log(describeLatency(latency, undefined));
  const serverUrl = latency === undefined ? databaseUrl : throughProxy(databaseUrl, latency.proxy.port);
  const env = serverEnv(serverUrl, table, options.pool);
  const loadBefore = os.loadavg();
  const samples = new Map<string, Sample[]>();
  const tally: Tally = { served: new Map(), insertsAnswered: 0 };
  let rowsInserted = 0;
  let proxyStats: ProxyStats | undefined;
  try {
    for (const framework of options.frameworks) await benchFramework(framework, env, options, samples, tally);
    const counted = await admin.query<{ count: string }>(`SELECT count(*) FROM ${table}`);
    rowsInserted = Number(counted.rows[0]?.count ?? 0);
    proxyStats = await latency?.proxy.stats();
  } finally {
    await latency?.proxy.close();
    await admin.query(`DROP TABLE IF EXISTS ${table}`).catch(() => {});
    await admin.end();
  }
  const summary = summarise(options, samples);
  const elapsedSeconds = Math.round((Date.now() - started) / 1000);
  const cpus = os.cpus();
  const machine = {
    cpus: cpus.length,
    cpuModel: cpus[0]?.model ?? 'unknown',
    node: process.version,
    postgres: rows[0]?.server_version ?? 'unknown',
    loadAverageBefore: loadBefore.map((l) => Number(l.toFixed(2))),
    loadAverageAfter: os.loadavg().map((l) => Number(l.toFixed(2))),
  };
  const header = describeLatency(latency, proxyStats);
  const rendered = render(summary);
  console.log(`${header}\n\n${rendered}`);
  console.log(
    `\n${options.rounds} rounds × ${options.duration} s, ${options.connections} connections, pool ${options.pool}, ` +
      `${options.latency === null ? 'no added latency' : `${options.latency} ms round trip added`}; ` +
      `${machine.cpus} × ${machine.cpuModel}, Node ${machine.node}, PostgreSQL ${machine.postgres}; ` +
      `load average ${machine.loadAverageBefore[0]} → ${machine.loadAverageAfter[0]}; ${elapsedSeconds} s`,
  );
  await mkdir(RESULTS_DIR, { recursive: true });
  const file = join(RESULTS_DIR, 'latest.json');
  const latencyResult =
    latency === undefined
      ? null
      : {
          roundTripMs: latency.proxy.roundTripMs,
          selectOneDirect: latency.direct,
          selectOneThroughProxy: latency.proxied,
          proxy: proxyStats,
        };
  await writeFile(
    file,
    `${JSON.stringify(
      {
        date: new Date().toISOString(),
        options,
        machine,
        latency: latencyResult,
        elapsedSeconds,
        ...summary,
        requestsServed: Object.fromEntries(tally.served),
        insertsAnswered: tally.insertsAnswered,
        rowsInserted,
        table: `${header}\n\n${rendered}`,
      },
      null,
      2,
    )}\n`,
  );
  log(`wrote ${relative(ROOT, file)}${options.profile ? ` and profiles in ${relative(ROOT, PROFILE_DIR)}` : ''}`);
  let invalid = 0;
  for (const m of summary.measured.filter((m) => m.errors + m.non2xx > 0)) {
    log(`invalid: ${m.framework} ${m.route} ${m.variant} had ${m.errors} errors and ${m.non2xx} non-2xx responses`);
    invalid++;
  }
  // Every 2xx insert committed a row; a few more rows may come from requests still in flight
  // when a measurement stopped.
  log(`${rowsInserted} rows inserted for ${tally.insertsAnswered} insert requests answered 2xx`);
  if (rowsInserted < tally.insertsAnswered) {
    log(`invalid: the table holds fewer rows than insert requests answered 2xx`);
    invalid++;
  }
  return invalid > 0 ? 1 : 0;
}

process.exitCode = await main();

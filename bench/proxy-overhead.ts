// What the latency proxy costs by itself: each variant runs twice, one server connected to
// PostgreSQL directly and one through the proxy, measured alternately in the same rounds (so that
// both see the same neighbours on a shared machine), on the insert route.
//
//   pnpm build && tsx scripts/with-db.ts tsx bench/proxy-overhead.ts [--latency 0] [--rounds 5]
//     [--duration 3] [--connections 16] [--pool 10] [--server fastify-plain]…
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { measureRoundTrip, startLatencyProxy, targetOf, throughProxy } from './latency-proxy.js';
import { type Child, load, median, type Sample, serverEnv, startServer, stopServer, table } from './measure.js';
import { isServerName, type ServerName } from './variants.js';

const { values } = parseArgs({
  options: {
    latency: { type: 'string', default: '0' },
    rounds: { type: 'string', default: '5' },
    duration: { type: 'string', default: '3' },
    connections: { type: 'string', default: '16' },
    pool: { type: 'string', default: '10' },
    server: { type: 'string', multiple: true, default: ['fastify-plain', 'fastify-context-db'] },
  },
});
const [latency, rounds, duration, connections, pool] = [
  values.latency,
  values.rounds,
  values.duration,
  values.connections,
  values.pool,
].map(Number) as [number, number, number, number, number];
const servers = values.server.filter(isServerName);
if (servers.length !== values.server.length) throw new Error(`--server: one of bench/variants.ts's SERVERS`);
const databaseUrl = process.env.DATABASE_URL;
if (!databaseUrl) throw new Error('DATABASE_URL is not set: run through scripts/with-db.ts');

const tableName = `bench_${process.pid}_${randomBytes(4).toString('hex')}`;
const admin = new pg.Client({ connectionString: databaseUrl, application_name: 'context_db_bench_admin' });
await admin.connect();
await admin.query(`CREATE TABLE ${tableName} (id serial PRIMARY KEY, text text NOT NULL)`);
const proxy = await startLatencyProxy(targetOf(databaseUrl), latency);
const proxied = throughProxy(databaseUrl, proxy.port);
const started = performance.now();
const pairs: { name: ServerName; direct: Child; proxied: Child; samples: [Sample, Sample][] }[] = [];
let proxiedRequests = 0;
try {
  const [rttDirect, rttProxied] = [await measureRoundTrip(databaseUrl, 200), await measureRoundTrip(proxied, 200)];
  console.log(
    `SELECT 1 round trip p50: direct ${rttDirect.p50Ms.toFixed(3)} ms, through the proxy (${latency} ms added) ${rttProxied.p50Ms.toFixed(3)} ms`,
  );
  for (const name of servers) {
    pairs.push({
      name,
      direct: await startServer(name, serverEnv(databaseUrl, tableName, pool), undefined),
      proxied: await startServer(name, serverEnv(proxied, tableName, pool), undefined),
      samples: [],
    });
  }
  for (const pair of pairs) {
    await load(pair.direct, 'insert', 1, connections);
    proxiedRequests += (await load(pair.proxied, 'insert', 1, connections)).completed;
  }
  for (let round = 0; round < rounds; round++) {
    for (const pair of pairs) {
      const order = round % 2 === 0 ? [pair.direct, pair.proxied] : [pair.proxied, pair.direct];
      const measured = new Map<Child, Sample>();
      for (const child of order) {
        await sleep(200);
        measured.set(child, await load(child, 'insert', duration, connections));
      }
      const direct = measured.get(pair.direct);
      const viaProxy = measured.get(pair.proxied);
      if (direct === undefined || viaProxy === undefined) throw new Error('a measurement is missing');
      proxiedRequests += viaProxy.completed;
      pair.samples.push([direct, viaProxy]);
      console.error(
        `[round ${round + 1}/${rounds}] ${pair.name}: direct ${Math.round(direct.reqPerSec)} req/s, ` +
          `through the proxy ${Math.round(viaProxy.reqPerSec)} req/s`,
      );
    }
  }
  const stats = await proxy.stats();
  const busyMicros = stats.eventLoopUtilization * (performance.now() - started) * 1000;
  const rows = pairs.map(({ name, samples }) => [
    name,
    Math.round(median(samples.map(([d]) => d.reqPerSec))).toLocaleString('en-US'),
    Math.round(median(samples.map(([, p]) => p.reqPerSec))).toLocaleString('en-US'),
    median(samples.map(([d, p]) => p.reqPerSec / d.reqPerSec)).toFixed(3),
    samples.map(([d, p]) => (p.reqPerSec / d.reqPerSec).toFixed(2)).join(' '),
    median(samples.map(([d]) => d.cpuMicrosPerRequest)).toFixed(1),
    median(samples.map(([, p]) => p.cpuMicrosPerRequest)).toFixed(1),
    String(samples.reduce((sum, [d, p]) => sum + d.errors + d.non2xx + p.errors + p.non2xx, 0)),
  ]);
  console.log(
    table(
      [
        'insert',
        'direct req/s',
        'proxy req/s',
        'proxy / direct',
        'rounds',
        'direct CPU µs/req',
        'proxy CPU µs/req',
        'errors',
      ],
      rows,
      [1, 2, 3, 5, 6, 7],
    ),
  );
  console.log(
    `\nproxy thread: ${Math.round(stats.eventLoopUtilization * 100)} % busy over the run, ` +
      `${(busyMicros / Math.max(proxiedRequests, 1)).toFixed(1)} µs per request through it ` +
      `(${stats.chunks} chunks, ${(stats.chunks / Math.max(proxiedRequests, 1)).toFixed(1)} per request); ` +
      `${rounds} rounds × ${duration} s, ${connections} connections, pool ${pool}, Node ${process.version}`,
  );
} finally {
  for (const pair of pairs) await Promise.all([stopServer(pair.direct), stopServer(pair.proxied)]);
  await proxy.close();
  await admin.query(`DROP TABLE IF EXISTS ${tableName}`).catch(() => {});
  await admin.end();
}

// `pnpm chaos [--requests N] [--concurrency C] [--seed S] [--frameworks fastify,express,koa]
// [--model-runs M]`: the model-based interleaving test with M runs on a pool of 16 and M/4 on a
// pool of 2 (default 5000, or CONTEXT_DB_MODEL_RUNS; its seed is CONTEXT_DB_MODEL_SEED or S), then the chaos mix with N
// requests per framework (default 20000; gated requests resumed by another request's handler,
// clients leaving while a statement runs and route deadlines passing included), then an isolation
// burst of C concurrent requests per framework (default 2000), then the mix again with a graceful
// shutdown (server drained, then db.close()) half-way through. Prints the report; exits 1 on a
// model counterexample, or on any disagreement, half write, unexpected status, hang, leak, held
// connection, idle transaction or long statement left running.
import { parseArgs } from 'node:util';
import { DbConnect } from '@context-db/core';
import pg from 'pg';
import { type Framework, formatReport, frameworks, type MixReport, startMix } from '../fixtures/chaos.js';
import { runModel } from './model.js';

const { values } = parseArgs({
  options: {
    requests: { type: 'string', default: '20000' },
    burst: { type: 'string', default: '2000' },
    concurrency: { type: 'string', default: '32' },
    seed: { type: 'string', default: String(Date.now() % 100_000) },
    frameworks: { type: 'string', default: frameworks.join(',') },
    pool: { type: 'string', default: '10' },
    'model-runs': { type: 'string', default: process.env.CONTEXT_DB_MODEL_RUNS ?? '5000' },
  },
});
const url = process.env.DATABASE_URL;
if (!url) throw new Error('DATABASE_URL is not set: run `pnpm chaos`, which finds or starts a PostgreSQL.');
const requests = Number(values.requests);
const burst = Number(values.burst);
const concurrency = Number(values.concurrency);
const seed = Number(values.seed);
const poolMax = Number(values.pool);
const selected = values.frameworks.split(',') as Framework[];
const modelRuns = Number(values['model-runs']);
const modelSeed = Number(process.env.CONTEXT_DB_MODEL_SEED ?? seed);

const admin = new pg.Pool({ connectionString: url, max: 3, application_name: 'context_db_chaos_admin' });
const failures: string[] = [];

function check(report: MixReport): void {
  const bad = (
    [
      'disagreements',
      'halfWritten',
      'unexpectedStatus',
      'hangs',
      'leaks',
      'checkedOut',
      'idleInTransaction',
      'uncancelled',
    ] as const
  ).filter((name) => report[name] !== 0);
  if (bad.length > 0) failures.push(`${report.framework}: ${bad.map((name) => `${name}=${report[name]}`).join(', ')}`);
}

async function run(
  framework: Framework,
  label: string,
  count: number,
  parallel: number,
  connectionTimeoutMillis: number,
  shutdownAfter?: number,
) {
  const appName = `context_db_chaos_${process.pid}_${framework}`;
  const table = `chaos_${process.pid}_${framework}_${label}`;
  await admin.query(
    `CREATE TABLE ${table} (id serial PRIMARY KEY, text text NOT NULL, key text, CONSTRAINT ${table}_key UNIQUE (key) DEFERRABLE INITIALLY DEFERRED)`,
  );
  const db = new DbConnect({
    connectionString: url,
    poolConfig: { max: poolMax, application_name: appName, connectionTimeoutMillis },
    onPoolError: () => {},
  });
  const mix = await startMix(framework, { db, appName, table, admin }, { graceful: shutdownAfter !== undefined });
  try {
    const report = await mix.run({
      requests: count,
      concurrency: parallel,
      seed,
      // A request may wait connectionTimeoutMillis for a connection: only past that is it a hang.
      timeoutMs: connectionTimeoutMillis + 15_000,
      ...(shutdownAfter !== undefined && { shutdownAfter }),
    });
    console.log(`[${label}] ${formatReport(report)}`);
    check(report);
    if (shutdownAfter !== undefined && report.shutdownMs === undefined) failures.push(`${framework}: no shutdown`);
  } finally {
    await mix.server.close();
    await db.close();
    await admin.query(`DROP TABLE IF EXISTS ${table}`);
  }
}

if (modelRuns > 0) {
  for (const [pool, runs] of [
    [16, modelRuns],
    [2, Math.max(1, Math.round(modelRuns / 4))],
  ] as const) {
    const model = await runModel(url, runs, modelSeed, pool);
    console.log(
      `[model] ${model.runs} interleaved runs on a pool of ${pool} (seed ${model.seed}) in ${model.seconds.toFixed(1)} s`,
    );
    if (model.failure !== undefined) {
      console.log(model.failure);
      failures.push(`model (pool ${pool}): counterexample (replay with CONTEXT_DB_MODEL_SEED=${model.seed})`);
    }
  }
}
console.log(
  `chaos: ${requests} mixed requests per framework (concurrency ${concurrency}), then ${burst} at once; pool max ${poolMax}; seed ${seed}`,
);
for (const framework of selected) {
  if (requests > 0) await run(framework, 'mix', requests, concurrency, 10_000);
  // All at once: isolation under load; requests wait for one of poolMax connections.
  if (burst > 0) await run(framework, 'burst', burst, burst, 60_000);
  // SIGTERM in the middle of the mix: what is in flight finishes and agrees, the rest is refused.
  if (requests > 0)
    await run(framework, 'shutdown', Math.ceil(requests / 4), concurrency, 10_000, Math.ceil(requests / 8));
}
await admin.end();
if (failures.length > 0) {
  console.log(`FAILED\n${failures.join('\n')}`);
  process.exit(1);
}
console.log(
  'chaos: 0 model counterexamples, 0 disagreements, 0 half writes, 0 hangs, 0 leaks, 0 connections held, 0 idle in transaction, 0 long statements left running',
);

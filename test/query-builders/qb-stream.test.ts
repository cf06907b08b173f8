// Review of issue #13: Kysely .stream() on ContextDbDialect where a web service uses it — as a
// response body, and on outsideContext: 'pool' when the stream fails or is left early.
import { Readable } from 'node:stream';
import { runInNewCtx } from '@context-db/core';
import { contextDbPlugin } from '@context-db/fastify';
import Fastify from 'fastify';
import { sql } from 'kysely';
import t from 'tap';
import { kyselyOnTestDb } from '../fixtures/builders.js';
import { activity, admin, checkedOut, createTable, eventually } from '../fixtures/db.js';

const { db, appName, kdb, scripts, test } = kyselyOnTestDb(t);

async function tableOf(t: Parameters<typeof createTable>[0], count: number): Promise<string> {
  const table = await createTable(t);
  await admin.query(`INSERT INTO ${table} (text) SELECT 'row-' || g FROM generate_series(1, ${count}) g`);
  return table;
}

t.test('a Fastify route streaming a Kysely .stream() as its response body sends every row', async (t) => {
  const table = await tableOf(t, 20);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  // The reason to stream in a web service: rows go out as they are read, not held in memory.
  app.post('/export', async (_request, reply) => {
    // The export is logged in the same request: it must commit only with a successful answer.
    await kdb.insertInto(table).values({ text: 'export-logged' }).execute();
    const rows = kdb.selectFrom(table).select('text').orderBy('id').stream(5);
    async function* lines() {
      for await (const row of rows) yield `${row.text}\n`;
    }
    return reply.type('text/plain').send(Readable.from(lines()));
  });
  const res = await app.inject({ method: 'POST', url: '/export' }).catch((err: Error) => ({
    statusCode: -1,
    body: `inject failed: ${err.message}`,
  }));
  const logged = (await admin.query(`SELECT 1 FROM ${table} WHERE text = 'export-logged'`)).rowCount;
  t.ok(
    (res.statusCode >= 200 && res.statusCode < 400) || logged === 0,
    `no failed answer over committed writes: answered ${res.statusCode} (-1: response destroyed), the request's row committed: ${logged === 1}`,
  );
  t.equal(res.statusCode, 200);
  t.equal(res.body.split('\n').filter(Boolean).length, 21, `all 21 rows in the body, got: ${res.body.slice(0, 200)}`);
  t.ok(await eventually(() => checkedOut(db) === 0), 'the connection went back');
});

test("outsideContext: 'pool': a stream failing mid-way gives its connection back", async (t) => {
  const table = await tableOf(t, 6);
  const seen: string[] = [];
  // Row 4 divides by zero: the first chunks arrive, then a FETCH fails.
  const failing = (async () => {
    for await (const row of scripts
      .selectFrom(table)
      .select(sql<string>`text || (1 / (id - 4))`.as('text'))
      .orderBy('id')
      .stream(1)) {
      seen.push(row.text);
    }
  })();
  await t.rejects(failing, { code: '22012' });
  t.equal(seen.length, 3, 'three rows came before the failing one');
  t.ok(await eventually(() => checkedOut(db) === 0), 'no connection checked out');
  t.equal((await activity(appName)).idleInTransaction, 0);
});

test("outsideContext: 'pool': breaking out of a stream commits nothing half-way and gives the connection back", async (t) => {
  const table = await tableOf(t, 10);
  for await (const row of scripts.selectFrom(table).select('text').orderBy('id').stream(2)) {
    if (row.text === 'row-3') break;
  }
  t.ok(await eventually(() => checkedOut(db) === 0), 'no connection checked out');
  const cursors = await admin.query(
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND state LIKE 'idle in%'`,
    [appName],
  );
  t.equal(cursors.rows[0]?.n, 0);
});

test('a stream left unfinished when its context ends is read to its end afterwards, then gives its connection back', async (t) => {
  const table = await tableOf(t, 10);
  const left = await runInNewCtx(async () => {
    const rows = kdb.selectFrom(table).select('text').orderBy('id').stream(3)[Symbol.asyncIterator]();
    t.same((await rows.next()).value, { text: 'row-1' });
    return rows;
  });
  t.equal(checkedOut(db), 1, 'the context committed; its connection stays with the open stream');
  t.equal((await activity(appName)).idleInTransaction, 0, 'not in a transaction: the cursor is held past COMMIT');
  const cursors = await runInNewCtx(async () =>
    Number((await sql<{ n: string }>`SELECT count(*) AS n FROM pg_cursors`.execute(kdb)).rows[0]?.n),
  );
  t.equal(cursors, 0, "the next context's connection carries no cursor");
  // The consumer comes back after its context ended: the rest of the rows, then the connection goes back.
  const rest: string[] = [];
  for (let next = await left.next(); !next.done; next = await left.next()) rest.push(next.value.text);
  t.same(rest, ['row-2', 'row-3', 'row-4', 'row-5', 'row-6', 'row-7', 'row-8', 'row-9', 'row-10']);
  t.equal(checkedOut(db), 0, 'given back when the stream ended');
});

test('a stream broken off after its context ended closes its cursor and gives the connection back, reset', async (t) => {
  const table = await tableOf(t, 10);
  const pid = async () => (await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(kdb)).rows[0]?.pid;
  const { left, first } = await runInNewCtx(async () => {
    const rows = kdb.selectFrom(table).select('text').orderBy('id').stream(2)[Symbol.asyncIterator]();
    await rows.next();
    return { left: rows, first: await pid() };
  });
  await left.next();
  await left.return?.(undefined);
  t.equal(checkedOut(db), 0);
  // The pool hands the same connection to the next context: no cursor, no transaction left on it.
  const next = await runInNewCtx(async () => ({
    pid: await pid(),
    cursors: Number((await sql<{ n: string }>`SELECT count(*) AS n FROM pg_cursors`.execute(kdb)).rows[0]?.n),
  }));
  t.equal(next.pid, first, 'the same connection, back in the pool');
  t.equal(next.cursors, 0);
});

// Core session.stream() (a cursor WITH HOLD kept across the request's
// COMMIT) behind Kysely's .stream(), as a response body. Attacks: a body whose first chunk comes
// before the query (a JSON array's '['), a stream read part-way in the handler and dropped, the
// session state a streaming request leaves on its connection, two streams on one session, a
// deadline while the first chunk is fetched, many streaming requests on a small pool. Real
// PostgreSQL, Fastify.
import { Readable } from 'node:stream';
import type { DbConnect } from '@context-db/core';
import { contextDbPlugin } from '@context-db/fastify';
import { ContextDbDialect } from '@context-db/kysely';
import Fastify from 'fastify';
import { type Generated, Kysely, sql } from 'kysely';
import t, { type Test } from 'tap';
import { activity, admin, checkedOut, createTable, eventually, testDb } from '../fixtures/db.js';

interface Database {
  [table: string]: { id: Generated<number>; text: string };
}

/** A test with its own DbConnect, ending with nothing checked out and nothing idle in transaction. */
function check(
  name: string,
  options: { todo?: string | undefined; max?: number },
  fn: (t: Test, db: DbConnect, kdb: Kysely<Database>) => Promise<void>,
): void {
  const { max = 10, todo } = options;
  t.test(name, todo === undefined ? {} : { todo }, async (t) => {
    const { db, appName } = testDb(t, { max, connectionTimeoutMillis: 3000 });
    const kdb = new Kysely<Database>({ dialect: new ContextDbDialect({ db }) });
    await fn(t, db, kdb);
    t.ok(await eventually(() => checkedOut(db) === 0), 'no connection checked out');
    t.equal((await activity(appName)).idleInTransaction, 0, 'no connection idle in transaction');
  });
}

async function tableOf(t: Test, count: number): Promise<string> {
  const table = await createTable(t);
  await admin.query(`INSERT INTO ${table} (text) SELECT 'row-' || g FROM generate_series(1, ${count}) g`);
  return table;
}

const logged = async (table: string) =>
  (await admin.query(`SELECT 1 FROM ${table} WHERE text = 'export-logged'`)).rowCount;

async function fastify(t: Test, db: DbConnect, route: () => Promise<unknown>, deadline?: number) {
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db, ...(deadline !== undefined && { deadline }) });
  app.post('/export', async (_request, reply) => reply.type('text/plain').send(await route()));
  return async () => {
    const res = await app
      .inject({ method: 'POST', url: '/export' })
      .catch((err: Error) => ({ statusCode: -1, body: `inject failed: ${err.message}` }));
    return { status: res.statusCode, body: res.body };
  };
}

check(
  'a JSON array body: "[" goes out before the rows are queried, then every row follows',
  {
    todo: 'known limitation (Kysely README, Streams): a stream whose query starts after the body sent its first chunk finds the request committed and is refused (SessionClosedError): a 200 cut short',
  },
  async (t, db, kdb) => {
    void db;
    const table = await tableOf(t, 20);
    const call = await fastify(t, db, async () => {
      await kdb.insertInto(table).values({ text: 'export-logged' }).execute();
      const rows = kdb.selectFrom(table).select('text').where('text', '<>', 'export-logged').orderBy('id').stream(5);
      async function* json() {
        yield '[';
        let first = true;
        for await (const row of rows) {
          yield `${first ? '' : ','}${JSON.stringify(row.text)}`;
          first = false;
        }
        yield ']';
      }
      return Readable.from(json());
    });
    const res = await call();
    t.equal(await logged(table), 1, "the request's write committed");
    t.equal(res.status, 200);
    let parsed: unknown;
    try {
      parsed = JSON.parse(res.body);
    } catch {
      parsed = `not JSON: ${res.body.slice(0, 120)}`;
    }
    t.equal(Array.isArray(parsed) ? parsed.length : parsed, 20, 'a complete JSON array of the 20 rows');
  },
);

check(
  'a stream read part-way in the handler and dropped does not keep the pool’s only connection',
  {
    max: 1,
  },
  async (t, db, kdb) => {
    const table = await tableOf(t, 20);
    // Kept only so that the test can end it after its assertions (the app itself drops it).
    const dropped: AsyncIterator<unknown>[] = [];
    t.teardown(() => Promise.all(dropped.map((rows) => rows.return?.())));
    const call = await fastify(t, db, async () => {
      await kdb.insertInto(table).values({ text: 'export-logged' }).execute();
      const rows = kdb.selectFrom(table).select('text').orderBy('id').stream(5)[Symbol.asyncIterator]();
      const first = await rows.next(); // peek at the first row, then answer without the rest
      dropped.push(rows);
      return JSON.stringify(first.value);
    });
    const first = await call();
    t.equal(first.status, 200);
    t.ok(await eventually(() => checkedOut(db) === 0), 'the connection went back after the answer');
    const next = await call();
    t.equal(next.status, 200, `the next request gets the connection (answered ${next.status})`);
    await Promise.all(dropped.map((rows) => rows.return?.()));
  },
);

check('a streaming request’s SET and temporary table do not reach the next request', { max: 1 }, async (t, db, kdb) => {
  const table = await tableOf(t, 12);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.post('/export', async (_request, reply) => {
    await sql`SET statement_timeout = '4321s'`.execute(kdb);
    await sql`CREATE TEMP TABLE review_left_behind (x int)`.execute(kdb);
    await sql`SELECT set_config('review.left', 'yes', false)`.execute(kdb);
    const rows = kdb.selectFrom(table).select('text').orderBy('id').stream(5);
    async function* lines() {
      for await (const row of rows) yield `${row.text}\n`;
    }
    return reply.type('text/plain').send(Readable.from(lines()));
  });
  app.post('/state', async () => {
    const { rows } = await sql<{
      timeout: string;
      temp: string | null;
      left: string | null;
      cursors: number;
    }>`SELECT current_setting('statement_timeout') AS timeout, to_regclass('pg_temp.review_left_behind')::text AS temp,
              current_setting('review.left', true) AS left, (SELECT count(*)::int FROM pg_cursors) AS cursors`.execute(
      kdb,
    );
    return rows[0];
  });
  const exported = await app.inject({ method: 'POST', url: '/export' });
  t.equal(exported.statusCode, 200);
  t.equal(exported.body.split('\n').filter(Boolean).length, 12);
  t.ok(await eventually(() => checkedOut(db) === 0), 'the connection went back');
  const state = (await app.inject({ method: 'POST', url: '/state' })).json();
  t.equal(state.timeout, '0', 'SET was reset');
  t.equal(state.temp, null, 'the temporary table is gone');
  t.ok(state.left === '' || state.left === null, 'set_config was reset');
  t.equal(state.cursors, 0, 'no cursor left');
});

check(
  'two streams on one session, both begun in the handler, read to their ends in the body',
  {},
  async (t, db, kdb) => {
    const a = await tableOf(t, 9);
    const b = await tableOf(t, 7);
    const call = await fastify(t, db, async () => {
      const first = kdb.selectFrom(a).select('text').orderBy('id').stream(2)[Symbol.asyncIterator]();
      const second = kdb.selectFrom(b).select('text').orderBy('id').stream(3)[Symbol.asyncIterator]();
      const heads = [await first.next(), await second.next()];
      async function* lines() {
        for (const head of heads) if (!head.done) yield `${head.value.text}\n`;
        for (let next = await first.next(); !next.done; next = await first.next()) yield `a:${next.value.text}\n`;
        for (let next = await second.next(); !next.done; next = await second.next()) yield `b:${next.value.text}\n`;
      }
      return Readable.from(lines());
    });
    const res = await call();
    t.equal(res.status, 200);
    t.equal(res.body.split('\n').filter(Boolean).length, 16, 'every row of both');
  },
);

check('a deadline passing while the first chunk is fetched answers 503 and commits nothing', {}, async (t, db, kdb) => {
  const table = await tableOf(t, 5);
  const call = await fastify(
    t,
    db,
    async () => {
      await kdb.insertInto(table).values({ text: 'export-logged' }).execute();
      const rows = kdb
        .selectFrom(table)
        .select(sql<string>`text || pg_sleep(0.5)::text`.as('text'))
        .where('text', '<>', 'export-logged')
        .stream(5);
      async function* lines() {
        for await (const row of rows) yield `${row.text}\n`;
      }
      return Readable.from(lines());
    },
    300,
  );
  const res = await call();
  t.ok(res.status < 200 || res.status >= 300 || (await logged(table)) === 1, 'a 2xx only if committed');
  t.equal(res.status, 503, `a deadline answer (got ${res.status})`);
  t.equal(await logged(table), 0, 'nothing committed');
});

check('a route whose only database work is a stream body answers every row', {}, async (t, db, kdb) => {
  const table = await tableOf(t, 20);
  const call = await fastify(t, db, async () => {
    const rows = kdb.selectFrom(table).select('text').orderBy('id').stream(5);
    async function* lines() {
      for await (const row of rows) yield `${row.text}\n`;
    }
    return Readable.from(lines());
  });
  const res = await call();
  t.equal(res.status, 200, `answered ${res.status}: ${res.body.slice(0, 160)}`);
  t.equal(res.body.split('\n').filter(Boolean).length, 20, 'every row');
});

check('twelve streaming requests on a pool of two all answer every row', { max: 2 }, async (t, db, kdb) => {
  const table = await tableOf(t, 300);
  const call = await fastify(t, db, async () => {
    await kdb.insertInto(table).values({ text: 'export-logged' }).execute();
    const rows = kdb.selectFrom(table).select('text').where('text', '<>', 'export-logged').orderBy('id').stream(10);
    async function* lines() {
      for await (const row of rows) yield `${row.text}\n`;
    }
    return Readable.from(lines());
  });
  const results = await Promise.all(Array.from({ length: 12 }, () => call()));
  t.same(
    results.map((r) => `${r.status}:${r.body.split('\n').filter(Boolean).length}`),
    Array.from({ length: 12 }, () => '200:300'),
  );
});

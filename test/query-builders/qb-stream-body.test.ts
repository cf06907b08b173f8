// A Kysely .stream() as the response body, through Fastify, Express and Koa: the request's writes
// commit before the first byte leaves (a 2xx means committed), the rows are read after that
// COMMIT from the session's cursor WITH HOLD, and the connection goes back when the body ends,
// when the client goes away mid-body, when the request rolls back, and when the stream is never
// read. A row that fails once the first chunk went out fails the COMMIT (PostgreSQL computes the
// rest of a held cursor there), so the answer is an error and nothing commits.
import http from 'node:http';
import { pipeline, Readable } from 'node:stream';
import { contextDb as expressContextDb } from '@context-db/express';
import { contextDbPlugin } from '@context-db/fastify';
import { contextDb as koaContextDb } from '@context-db/koa';
import { ContextDbDialect } from '@context-db/kysely';
import express from 'express';
import Fastify from 'fastify';
import Koa from 'koa';
import { type Generated, Kysely, sql } from 'kysely';
import t from 'tap';
import { checkedTests } from '../fixtures/builders.js';
import { admin, checkedOut, createTable, eventually, testDb } from '../fixtures/db.js';
import { deferred, listen, request } from '../fixtures/express.js';

interface Database {
  [table: string]: { id: Generated<number>; text: string };
}

const { db, appName } = testDb(t);
const kdb = new Kysely<Database>({ dialect: new ContextDbDialect({ db }) });
const checked = checkedTests(t, db, appName);

async function tableOf(t: Parameters<typeof createTable>[0], count: number): Promise<string> {
  const table = await createTable(t);
  await admin.query(`INSERT INTO ${table} (text) SELECT 'row-' || g FROM generate_series(1, ${count}) g`);
  return table;
}

const logged = async (table: string) =>
  (await admin.query(`SELECT 1 FROM ${table} WHERE text = 'export-logged'`)).rowCount;

/**
 * The export route's work: log the export in the request's transaction, then stream the rows
 * (`failAt`: the row whose text divides by zero). After the first line it waits for `gate`, if
 * given: the test's client goes away meanwhile.
 */
async function exportBody(table: string, { gate, failAt }: { gate?: Promise<void>; failAt?: number } = {}) {
  await kdb.insertInto(table).values({ text: 'export-logged' }).execute();
  const text = failAt === undefined ? sql<string>`text` : sql<string>`text || (1 / (id - ${failAt}))::text`;
  const rows = kdb.selectFrom(table).select(text.as('text')).where('text', '<>', 'export-logged').orderBy('id');
  async function* lines() {
    let first = true;
    for await (const row of rows.stream(5)) {
      yield `${row.text}\n`;
      if (first && gate !== undefined) await gate;
      first = false;
    }
  }
  return Readable.from(lines());
}

type Route = (table: string, res: http.ServerResponse, options?: Parameters<typeof exportBody>[1]) => unknown;

/** An app per framework answering POST /export with `exportBody` as its streamed body. */
const apps: Record<string, (t: Parameters<typeof createTable>[0], route: Route) => Promise<string>> = {
  async fastify(t, route) {
    const app = Fastify();
    t.teardown(() => app.close());
    await app.register(contextDbPlugin, { db });
    app.post('/export', async (_request, reply) => reply.type('text/plain').send(await route('', reply.raw)));
    await app.listen({ port: 0, host: '127.0.0.1' });
    const address = app.server.address();
    return `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`;
  },
  async express(t, route) {
    const app = express();
    app.use(expressContextDb({ db }));
    app.post('/export', async (_req, res, next) => {
      try {
        const body = (await route('', res)) as Readable;
        res.type('text/plain');
        // pipeline, not .pipe(): a client going away destroys the stream, which gives the connection back.
        pipeline(body, res, () => undefined);
      } catch (err) {
        next(err);
      }
    });
    return listen(t, app);
  },
  async koa(t, route) {
    const app = new Koa();
    app.silent = true;
    app.use(koaContextDb({ db }));
    app.use(async (ctx) => {
      ctx.type = 'text/plain';
      ctx.body = await route('', ctx.res);
    });
    return listen(t, app.callback());
  },
};

for (const [framework, serve] of Object.entries(apps)) {
  const test = checked;

  test(`${framework}: a Kysely .stream() as the response body sends every row after the request committed`, async (t) => {
    const table = await tableOf(t, 20);
    const url = await serve(t, () => exportBody(table));
    const res = await request(`${url}/export`);
    t.equal(res.status, 200);
    t.equal(res.body.split('\n').filter(Boolean).length, 20, 'every row in the body');
    t.equal(await logged(table), 1, "the request's write committed");
    t.ok(await eventually(() => checkedOut(db) === 0), 'the connection went back when the body ended');
  });

  test(`${framework}: a route whose only database work is its stream body sends every row`, async (t) => {
    const table = await tableOf(t, 20);
    // No query before the body: the request has no session when the handler returns.
    const url = await serve(t, async () => {
      const rows = kdb.selectFrom(table).select('text').orderBy('id').stream(5);
      async function* lines() {
        for await (const row of rows) yield `${row.text}\n`;
      }
      return Readable.from(lines());
    });
    const res = await request(`${url}/export`);
    t.equal(res.status, 200, `answered ${res.status}: ${res.body.slice(0, 160)}`);
    t.equal(res.body.split('\n').filter(Boolean).length, 20, 'every row in the body');
    t.ok(await eventually(() => checkedOut(db) === 0), 'the connection went back when the body ended');
  });

  test(`${framework}: a stream read part-way in the handler and dropped: its connection is back once the response is over`, async (t) => {
    const table = await tableOf(t, 20);
    const dropped: AsyncIterator<unknown>[] = [];
    // Only so the test can end them itself should the fix fail (the route drops them).
    t.teardown(() => Promise.all(dropped.map((rows) => rows.return?.())));
    const url = await serve(t, async () => {
      await kdb.insertInto(table).values({ text: 'export-logged' }).execute();
      const rows = kdb.selectFrom(table).select('text').orderBy('id').stream(5)[Symbol.asyncIterator]();
      dropped.push(rows);
      await rows.next(); // a peek, then the stream is forgotten
      return Readable.from(['done\n']);
    });
    const res = await request(`${url}/export`);
    t.equal(res.status, 200);
    t.equal(await logged(table), 1, "the request's write committed");
    t.ok(
      await eventually(() => checkedOut(db) === 0),
      'the connection is back without waiting for a garbage collection',
    );
  });

  test(`${framework}: a client going away mid-body gives the connection back`, async (t) => {
    const table = await tableOf(t, 50);
    const gone = deferred();
    const url = await serve(t, (_table, res) => {
      res.once('close', () => gone.resolve());
      return exportBody(table, { gate: gone.promise });
    });
    // The client reads the first chunk, then goes away.
    await new Promise<void>((resolve) => {
      const req = http.request(`${url}/export`, { method: 'POST' }, (res) => {
        res.once('data', () => req.destroy());
      });
      req.on('error', () => undefined);
      req.once('close', () => resolve());
      req.end();
    });
    t.ok(await eventually(() => checkedOut(db) === 0), 'no connection checked out');
    t.equal(await logged(table), 1, 'the answer had begun: the request had committed');
  });

  test(`${framework}: a row failing after the first chunk fails the COMMIT: an error answer, nothing committed`, async (t) => {
    const table = await tableOf(t, 40);
    const url = await serve(t, () => exportBody(table, { failAt: 30 }));
    const res = await request(`${url}/export`).catch((err: Error) => ({ status: -1, body: err.message }));
    t.not(res.status, 200, `not a success: answered ${res.status}`);
    t.equal(await logged(table), 0, 'the request rolled back');
    t.ok(await eventually(() => checkedOut(db) === 0), 'no connection checked out');
  });
}

checked('a stream made but never read, and a stream body with a 4xx: nothing held, the 4xx rolls back', async (t) => {
  const table = await tableOf(t, 20);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.post('/unread', async () => {
    const body = await exportBody(table);
    void body; // built, never read
    return { ok: true };
  });
  app.post('/refused', async (_request, reply) =>
    reply
      .code(409)
      .type('text/plain')
      .send(await exportBody(table)),
  );
  const unread = await app.inject({ method: 'POST', url: '/unread' });
  t.equal(unread.statusCode, 200);
  t.equal(await logged(table), 1);
  t.equal(checkedOut(db), 0, 'an unread stream holds no connection');
  await admin.query(`DELETE FROM ${table} WHERE text = 'export-logged'`);
  const refused = await app.inject({ method: 'POST', url: '/refused' }).catch(() => ({ statusCode: -1 }));
  t.not(refused.statusCode, 200);
  t.equal(await logged(table), 0, 'the 4xx rolled back');
  t.ok(await eventually(() => checkedOut(db) === 0), 'no connection checked out');
});

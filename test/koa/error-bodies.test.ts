// Issue 16 item 6: in production, what the client gets for a failed COMMIT, an exhausted pool and
// an unreachable database names no constraint, host, port or pool size. Koa shows an error's
// message only when `expose` is true; the library's errors must never ask for that.
import { DbConnect, dbSession } from '@context-db/core';
import { contextDb } from '@context-db/koa';
import Koa from 'koa';
import t from 'tap';
import { admin, checkedOut, createTable, eventually, testDb } from '../fixtures/db.js';
import { collectErrors, createDeferredTable, request, serve } from '../fixtures/koa.js';

function productionApp(db: DbConnect, handler: Koa.Middleware): { app: Koa; errors: Error[] } {
  const app = new Koa({ env: 'production' });
  const errors = collectErrors(app);
  app.use(contextDb({ db }));
  app.use(handler);
  return { app, errors };
}

async function rawResponse(url: string): Promise<string> {
  const res = await fetch(url, { method: 'POST' });
  return `${res.status} ${[...res.headers]
    .filter(([name]) => name !== 'date')
    .map(([name, value]) => `${name}: ${value}`)
    .join('\n')}\n${await res.text()}`;
}

t.test('production: a failed COMMIT answers a bare 500, without the constraint name', async (t) => {
  const { db } = testDb(t);
  const table = await createDeferredTable(t);
  const { rows } = await admin.query<{ conname: string }>(
    `SELECT conname FROM pg_constraint WHERE conrelid = '${table}'::regclass AND contype = 'u'`,
  );
  const constraint = rows[0]?.conname ?? 'missing';
  await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'taken')`);
  const { app, errors } = productionApp(db, async (ctx) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text, key) VALUES ('dup', 'taken')`);
    ctx.body = 'saved';
  });
  const url = await serve(t, app);
  const raw = await rawResponse(url);
  t.match(raw, /^500 /);
  t.match(raw, /\nInternal Server Error$/);
  t.notMatch(raw, constraint, 'the constraint name is not in the response');
  t.notMatch(raw, table, 'nor the table name');
  t.equal(errors.length, 1, 'the error is there for the logs');
});

t.test('production: an exhausted pool answers 503 without the pool size or timeout', async (t) => {
  const { db } = testDb(t, { max: 1, connectionTimeoutMillis: 150 });
  const table = await createTable(t);
  let holding: (() => void) | undefined;
  const { app, errors } = productionApp(db, async (ctx) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} DEFAULT VALUES`);
    if (ctx.path === '/hold') await new Promise<void>((resolve) => (holding = resolve));
    ctx.body = 'ok';
  });
  const url = await serve(t, app);
  const held = request(`${url}/hold`);
  t.ok(await eventually(() => holding !== undefined), 'the first request holds the only connection');
  const raw = await rawResponse(`${url}/starved`);
  holding?.();
  t.equal((await held).status, 200);
  t.match(raw, /^503 /);
  t.match(raw, /\nService Unavailable$/);
  t.notMatch(raw, /150|\bmax\b|pool/i, 'no pool size, timeout or pool wording');
  t.equal(errors.length, 1);
  t.equal(checkedOut(db), 0);
});

t.test('production: an unreachable database answers 503 without its host or port', async (t) => {
  const db = new DbConnect({ connectionString: 'postgres://postgres@127.0.0.1:1/x' });
  t.teardown(() => db.close());
  const { app, errors } = productionApp(db, async (ctx) => {
    await (await dbSession(db)).query('SELECT 1');
    ctx.body = 'ok';
  });
  const url = await serve(t, app);
  const raw = await rawResponse(url);
  t.match(raw, /^503 /);
  t.match(raw, /\nService Unavailable$/);
  t.notMatch(raw, /127\.0\.0\.1|:1\b|ECONNREFUSED|postgres/, 'no host, port or driver error');
  t.equal(errors.length, 1);
});

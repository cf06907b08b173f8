// DESIGN "Adapters" 2: the outcome is decided from ctx.status and any thrown error after
// `await next()`, before any byte is sent: 2xx/3xx commit; a throw, ctx.throw(4xx), a 5xx status
// or Koa's 404 for a missing body roll back. Asserted on the table.
import type { DbConnect } from '@context-db/core';
import { dbSession, InvalidOptionsError } from '@context-db/core';
import { contextDb } from '@context-db/koa';
import Router from '@koa/router';
import Koa from 'koa';
import t from 'tap';
import { activity, checkedOut, createTable, testDb, texts } from '../fixtures/db.js';
import { collectErrors, request, serve } from '../fixtures/koa.js';

async function insert(db: DbConnect, table: string, text: string): Promise<void> {
  await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
}

t.test('a 2xx commits; a throw, ctx.throw(4xx), a 5xx status and a 404 without body roll back', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  const errors = collectErrors(app);
  const router = new Router();
  router.post('/ok', async (ctx) => {
    await insert(db, table, 'ok');
    ctx.body = { ok: true };
  });
  router.post('/no-content', async (ctx) => {
    await insert(db, table, 'no-content');
    ctx.status = 204;
  });
  router.post('/redirect', async (ctx) => {
    await insert(db, table, 'redirect');
    ctx.redirect('/ok');
  });
  // The body is set first, so ctx.status says 200: only the error can decide the rollback.
  router.post('/throw', async (ctx) => {
    await insert(db, table, 'throw');
    ctx.body = { ok: true };
    throw new Error('boom');
  });
  router.post('/ctx-throw', async (ctx) => {
    await insert(db, table, 'ctx-throw');
    ctx.body = { ok: true };
    ctx.throw(409, 'conflict');
  });
  router.post('/status-503', async (ctx) => {
    await insert(db, table, 'status-503');
    ctx.status = 503;
    ctx.body = { retry: true };
  });
  // Work done but no body set: Koa answers 404, so nothing may be committed.
  router.post('/no-body', async () => {
    await insert(db, table, 'no-body');
  });
  app.use(contextDb({ db }));
  app.use(router.routes());
  const url = await serve(t, app);

  t.equal((await request(`${url}/ok`)).status, 200);
  t.equal((await request(`${url}/no-content`)).status, 204);
  t.equal((await request(`${url}/redirect`)).status, 302);
  t.same(await request(`${url}/throw`), { status: 500, body: 'Internal Server Error' });
  t.same(await request(`${url}/ctx-throw`), { status: 409, body: 'conflict' });
  t.equal((await request(`${url}/status-503`)).status, 503);
  t.equal((await request(`${url}/no-body`)).status, 404);

  t.same(await texts(table), ['ok', 'no-content', 'redirect'], 'only the successful requests committed');
  t.same(
    errors.map((err) => err.message),
    ['boom', 'conflict'],
    'the thrown errors reached Koa unchanged after the rollback',
  );
  t.equal(checkedOut(db), 0, 'every connection is back in the pool');
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('commitOn decides which statuses commit', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  app.use(contextDb({ db, commitOn: (status) => status < 400 || status === 409 }));
  app.use(async (ctx) => {
    await insert(db, table, ctx.path);
    ctx.status = Number(ctx.path.slice(1));
    ctx.body = 'done';
  });
  const url = await serve(t, app);
  t.equal((await request(`${url}/409`)).status, 409);
  t.equal((await request(`${url}/422`)).status, 422);
  t.equal((await request(`${url}/201`)).status, 201);
  t.same(await texts(table), ['/409', '/201']);
});

t.test('skip(ctx) runs the request without a context; ctx.db is still there', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  app.use(contextDb({ db, skip: (ctx) => ctx.path.startsWith('/public') }));
  app.use(async (ctx) => {
    const inContext = await ctx.db.session().then(
      () => true,
      (err: Error) => err.name,
    );
    await ctx.db.newAtomicSession((s) => s.query(`INSERT INTO ${table} (text) VALUES ($1)`, [ctx.path]));
    ctx.body = { inContext };
  });
  const url = await serve(t, app);
  t.same(JSON.parse((await request(`${url}/public/a`)).body), { inContext: 'ContextNotInitiatedError' });
  t.same(JSON.parse((await request(`${url}/private`)).body), { inContext: true });
  t.same(await texts(table), ['/public/a', '/private']);
});

t.test('options are checked when the middleware is made, not on the first request', async (t) => {
  const { db } = testDb(t);
  t.throws(() => contextDb('postgres://x' as never), InvalidOptionsError);
  t.throws(() => contextDb({ db: 'postgres://x' as never }), { name: 'InvalidOptionsError', message: /options\.db/ });
  t.throws(() => contextDb({ db, skip: true as never }), { message: /options\.skip must be a function/ });
  t.throws(() => contextDb({ db, commitOn: 400 as never }), { message: /options\.commitOn/ });
});

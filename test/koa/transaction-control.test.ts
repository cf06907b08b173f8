// Transaction control through Koa: the transactionOptions() route middleware, nested blocks,
// onCommit / onRollback hooks (a throwing one reported through app.on('error')), checked by the
// shared scenario in fixtures/transaction-routes.ts.
import { InvalidOptionsError } from '@context-db/core';
import { contextDb, transactionOptions } from '@context-db/koa';
import Router from '@koa/router';
import Koa from 'koa';
import t from 'tap';
import { createTable, testDb } from '../fixtures/db.js';
import { collectErrors, request, serve } from '../fixtures/koa.js';
import { checkTransactionControl, handlers, ROUTE_OPTIONS } from '../fixtures/transaction-routes.js';

t.test('route options, nested blocks and hooks', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const h = handlers(db, table);
  const app = new Koa();
  const errors = collectErrors(app);
  const router = new Router();
  app.use(contextDb({ db }));
  router.get('/configured', transactionOptions(ROUTE_OPTIONS), async (ctx) => {
    ctx.body = await h.settings();
  });
  router.get('/default', async (ctx) => {
    ctx.body = await h.settings();
  });
  router.post('/read-only-write', transactionOptions({ readOnly: true }), async (ctx) => {
    await h.write('x');
    ctx.body = 'written';
  });
  router.post('/nested', async (ctx) => {
    await h.nested();
    ctx.body = 'ok';
  });
  router.post('/hooked/:outcome', async (ctx) => {
    const { outcome = '' } = ctx.params;
    await h.hooked(outcome);
    if (outcome === 'throw') throw new Error('handler failed');
    ctx.status = outcome === '404' ? 404 : 200;
    ctx.body = 'done';
  });
  router.post('/throwing-hook', async (ctx) => {
    await h.throwingHook();
    ctx.body = 'ok';
  });
  app.use(router.routes());
  const url = await serve(t, app);
  await checkTransactionControl(t, {
    db,
    table,
    h,
    call: (method, path) => request(`${url}${path}`, { method }),
    logged: () => errors.map((err) => err.message),
  });
});

t.test('transactionOptions() checks its options at once', async (t) => {
  t.throws(() => transactionOptions({ idleInTransactionTimeout: -5 }), InvalidOptionsError);
});

// The example routes on Koa: each maps onto a shared function from @context-db/examples-shared,
// which finds the request's session with dbSession(db). contextDb() commits or rolls back each
// request before Koa sends the response.

import {
  atomic,
  atomicWithPreviousTransaction,
  concurrentQueries,
  type ExampleStore,
  earlyClose,
  earlyCommit,
  earlyRollback,
  insert,
  insertThenThrow,
  listRows,
  outbox,
  placeOrder,
  REPORT_OPTIONS,
  report,
  simpleUsage,
  takeTicket,
  withoutContext,
} from '@context-db/examples-shared';
import { contextDb, noContextDb, transactionOptions } from '@context-db/koa';
import Router from '@koa/router';
import Koa from 'koa';

/** The routes, for the server's start-up message. */
export const routes: readonly string[] = [
  'POST /simple',
  'POST /atomic',
  'POST /atomic-prev-transaction',
  'POST /rollback-by-exception',
  'POST /rollback-by-status',
  'POST /concurrent',
  'POST /early-commit',
  'POST /early-close',
  'POST /early-rollback',
  'POST /opted-out',
  'POST /ticket',
  'GET /report',
  'POST /orders/:id',
  'POST /orders/:id/rejected',
  'GET /outbox',
  'GET /rows',
  'GET /health',
];

/** The example app on `store`: contextDb() for every request, then the routes. */
export function buildApp(store: ExampleStore): Koa {
  const app = new Koa();
  const router = new Router();
  const ok = { ok: true };

  router.post('/simple', async (ctx) => {
    await simpleUsage(store);
    ctx.body = ok;
  });
  router.post('/atomic', async (ctx) => {
    await atomic(store);
    ctx.body = ok;
  });
  router.post('/atomic-prev-transaction', async (ctx) => {
    await atomicWithPreviousTransaction(store);
    ctx.body = ok;
  });
  // Throws: contextDb() rolls back, Koa answers 500.
  router.post('/rollback-by-exception', () => insertThenThrow(store));
  router.post('/rollback-by-status', async (ctx) => {
    await insert(store, 'rollback-by-status');
    ctx.status = 422;
    ctx.body = { error: 'rolled back because the status is 422' };
  });
  router.post('/concurrent', async (ctx) => {
    await concurrentQueries(store);
    ctx.body = ok;
  });
  router.post('/early-commit', async (ctx) => {
    await earlyCommit(store);
    ctx.body = ok;
  });
  router.post('/early-close', async (ctx) => {
    await earlyClose(store);
    ctx.body = ok;
  });
  router.post('/early-rollback', async (ctx) => {
    await earlyRollback(store);
    ctx.body = ok;
  });
  router.post('/opted-out', noContextDb(), async (ctx) => {
    await withoutContext(store);
    ctx.body = ok;
  });
  // Serializable, retried on conflicts: every request gets a number of its own.
  router.post('/ticket', async (ctx) => {
    ctx.body = { ticket: await takeTicket(store) };
  });
  router.get('/report', transactionOptions(REPORT_OPTIONS), async (ctx) => {
    ctx.body = await report(store);
  });
  // onCommit: the event is in the outbox before the 201 is sent, and never for a rolled-back order.
  router.post('/orders/:id', async (ctx) => {
    await placeOrder(store, ctx.params.id ?? '');
    ctx.status = 201;
    ctx.body = ok;
  });
  router.post('/orders/:id/rejected', async (ctx) => {
    await placeOrder(store, ctx.params.id ?? '');
    ctx.status = 422;
    ctx.body = { error: 'rejected: the order is rolled back, no event' };
  });
  router.get('/outbox', (ctx) => {
    ctx.body = outbox;
  });
  router.get('/rows', async (ctx) => {
    ctx.body = await listRows(store);
  });
  router.get('/health', (ctx) => {
    ctx.body = { status: 'ok' };
  });

  app.use(contextDb({ db: store.db }));
  app.use(router.routes());
  app.use(router.allowedMethods());
  return app;
}

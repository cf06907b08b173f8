// The Express example: each route maps onto one of the shared example operations, which find
// their session with dbSession(db) wherever they are called.
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
import { contextDb, contextDbErrors, noContextDb, transactionOptions } from '@context-db/express';
import express from 'express';
import { drizzleRouter } from './drizzle-routes.js';

/** The example's routes, as `METHOD /path  what it shows`, for the server to print. */
export const routes = [
  'POST /simple                   a query on the request session, committed with the 200',
  'POST /atomic                   atomicDbSession: committed on its own',
  'POST /atomic-prev-transaction  atomicDbSession with a transaction already open',
  'POST /rollback-by-exception    the handler throws: 500, rolled back',
  'POST /rollback-by-status       the handler answers 422: rolled back',
  'POST /concurrent               five concurrent ways to query, one failing',
  'POST /early-commit             commitDbSession in the middle of the request',
  'POST /early-close              closeDbSession before slow work',
  'POST /early-rollback           rollbackDbSession, then carry on',
  'POST /opted-out                noContextDb(): no context, a session of its own',
  'POST /ticket                   serializable, retried on conflicts: a number of its own per request',
  'GET  /report                   transactionOptions(): repeatable read, read-only',
  'POST /orders/:id               onCommit: an outbox event once the order is committed (201)',
  'POST /orders/:id/rejected      the same answered 422: rolled back, no event',
  'GET  /outbox                   the events published after commit',
  'GET  /rows                     the table',
  'GET  /health                   skipped by contextDb(): no database at all',
  "*    /drizzle/…                 the seed's routes with Drizzle (drizzle-routes.ts)",
];

/** The example app on `store`; the server and the tests both build it. */
export function buildApp(store: ExampleStore): express.Express {
  const app = express();
  app.use(express.json());
  app.use(contextDb({ db: store.db, skip: (req) => req.path === '/health' }));

  // Run one shared operation on the request's context, then answer 200 (after the commit).
  const ok =
    (operation: (store: ExampleStore) => Promise<unknown>): express.RequestHandler =>
    async (_req, res) => {
      await operation(store);
      res.json({ ok: true });
    };
  app.post('/simple', ok(simpleUsage));
  app.post('/atomic', ok(atomic));
  app.post('/atomic-prev-transaction', ok(atomicWithPreviousTransaction));
  app.post('/rollback-by-exception', ok(insertThenThrow));
  app.post('/rollback-by-status', async (_req, res) => {
    await insert(store, 'rollback-by-status');
    res.status(422).json({ error: 'rejected: the insert is rolled back' });
  });
  app.post('/concurrent', ok(concurrentQueries));
  app.post('/early-commit', ok(earlyCommit));
  app.post(
    '/early-close',
    ok((s) => earlyClose(s, () => new Promise((resolve) => setTimeout(resolve, 50)))),
  );
  app.post('/early-rollback', ok(earlyRollback));
  app.post('/opted-out', noContextDb(), ok(withoutContext));
  app.post('/ticket', async (_req, res) => {
    res.json({ ticket: await takeTicket(store) });
  });
  app.get('/report', transactionOptions(REPORT_OPTIONS), async (_req, res) => {
    res.json(await report(store));
  });
  app.post('/orders/:id', async (req, res) => {
    await placeOrder(store, req.params.id);
    res.status(201).json({ ok: true }); // the event is in the outbox before this is sent
  });
  app.post('/orders/:id/rejected', async (req, res) => {
    await placeOrder(store, req.params.id);
    res.status(422).json({ error: 'rejected: the order is rolled back, no event' });
  });
  app.get('/outbox', (_req, res) => {
    res.json(outbox);
  });
  app.get('/rows', async (_req, res) => {
    res.json(await listRows(store));
  });
  app.get('/health', (_req, res) => {
    res.json({ ok: true });
  });

  app.use('/drizzle', drizzleRouter(store));

  // Errors roll back even if an error handler below answered with a status under 400.
  app.use(contextDbErrors());
  return app;
}

// Transaction control through Fastify: route `config.contextDb.transaction`, nested blocks,
// onCommit / onRollback hooks (a throwing one logged through request.log), checked by the shared
// scenario in fixtures/transaction-routes.ts.
import { InvalidOptionsError } from '@context-db/core';
import { contextDbPlugin } from '@context-db/fastify';
import Fastify from 'fastify';
import t from 'tap';
import { createTable, testDb } from '../fixtures/db.js';
import { logCapture } from '../fixtures/fastify.js';
import { checkTransactionControl, handlers, ROUTE_OPTIONS } from '../fixtures/transaction-routes.js';

t.test('route options, nested blocks and hooks', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const h = handlers(db, table);
  const { logger, lines } = logCapture();
  const app = Fastify({ logger });
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.get('/configured', { config: { contextDb: { transaction: ROUTE_OPTIONS } } }, () => h.settings());
  app.get('/default', () => h.settings());
  app.post('/read-only-write', { config: { contextDb: { transaction: { readOnly: true } } } }, async () => {
    await h.write('x');
    return 'written';
  });
  app.post('/nested', async () => {
    await h.nested();
    return 'ok';
  });
  app.post<{ Params: { outcome: string } }>('/hooked/:outcome', async (request, reply) => {
    await h.hooked(request.params.outcome);
    if (request.params.outcome === 'throw') throw new Error('handler failed');
    return reply.code(request.params.outcome === '404' ? 404 : 200).send('done');
  });
  app.post('/throwing-hook', async () => {
    await h.throwingHook();
    return 'ok';
  });
  await checkTransactionControl(t, {
    db,
    table,
    h,
    call: async (method, url) => {
      const res = await app.inject({ method, url });
      return { status: res.statusCode, body: res.body };
    },
    logged: () => lines.map((line) => `${line.msg ?? ''} ${line.err?.message ?? ''}`),
  });
});

t.test('bad route options fail when the route is declared', async (t) => {
  const { db } = testDb(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  t.throws(
    () => app.get('/x', { config: { contextDb: { transaction: { isolationLevel: 'snapshot' as never } } } }, () => 'x'),
    InvalidOptionsError,
  );
  t.throws(
    () => app.get('/y', { config: { contextDb: { transactions: {} } as never } }, () => 'y'),
    /unknown option "transactions"/,
  );
});

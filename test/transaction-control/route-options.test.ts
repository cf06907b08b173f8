// Per-route transaction options. Fastify checks them when the route is declared, or, for a route
// declared before the plugin loaded, at each request (a 500 naming the option). Express / Koa:
// transactionOptions() on a request that skip() keeps outside the context does nothing (there is
// no transaction to set options for), and a second transactionOptions() (router-wide, then per
// route) merges over the first field by field.
import { dbSession, InvalidOptionsError } from '@context-db/core';
import { contextDb as expressContextDb, transactionOptions as expressOptions } from '@context-db/express';
import { contextDbPlugin } from '@context-db/fastify';
import { contextDb as koaContextDb, transactionOptions as koaOptions } from '@context-db/koa';
import Router from '@koa/router';
import express from 'express';
import Fastify from 'fastify';
import Koa from 'koa';
import t from 'tap';
import { testDb } from '../fixtures/db.js';
import { request as expressRequest, listen } from '../fixtures/express.js';
import { request as koaRequest, serve } from '../fixtures/koa.js';

const bad = { config: { contextDb: { transaction: { isolationLevel: 'snapshot' as never } } } };

t.test('Fastify: bad route options of a route the plugin saw declared fail at declaration', async (t) => {
  const { db } = testDb(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  t.throws(() => app.get('/bad', bad, async () => 'never'), InvalidOptionsError);
});

// onRoute does not see routes declared before the plugin loaded (an unawaited register, a route
// declared first) and Fastify lists no route configs: those are checked at their first request.
for (const order of ['unawaited register', 'route declared first'] as const) {
  t.test(`Fastify: bad route options with an ${order} fail each request with a 500 naming the option`, async (t) => {
    const { db } = testDb(t);
    const app = Fastify();
    t.teardown(() => app.close());
    if (order === 'unawaited register') {
      void app.register(contextDbPlugin, { db });
      app.get('/bad', bad, async () => 'never');
    } else {
      app.get('/bad', bad, async () => 'never');
      await app.register(contextDbPlugin, { db });
    }
    await app.ready();
    const res = await app.inject({ url: '/bad' });
    t.equal(res.statusCode, 500);
    t.match(res.json(), {
      code: 'INVALID_OPTIONS',
      message: /config\.contextDb\.transaction: isolationLevel must be one of/,
    });
  });
}

t.test('Express: transactionOptions() on a request that skip() keeps outside the context', async (t) => {
  const { db } = testDb(t);
  const app = express();
  app.use(expressContextDb({ db, skip: (req) => req.path === '/ping' }));
  const router = express.Router();
  router.use(expressOptions({ readOnly: true }));
  router.get('/ping', (_req, res) => {
    res.send('pong');
  });
  router.get('/count', async (_req, res) => {
    const { rows } = await (await dbSession(db)).query("SELECT current_setting('transaction_read_only') AS ro");
    res.json(rows[0]);
  });
  app.use(router);
  const url = await listen(t, app);
  t.same(JSON.parse((await expressRequest(`${url}/count`, { method: 'GET' })).body), { ro: 'on' }, 'held: applied');
  const ping = await expressRequest(`${url}/ping`, { method: 'GET' });
  t.equal(ping.status, 200, 'a skipped request is not failed by options it has no transaction for');
});

t.test('Koa: transactionOptions() on a request that skip() keeps outside the context', async (t) => {
  const { db } = testDb(t);
  const app = new Koa();
  app.on('error', () => {});
  app.use(koaContextDb({ db, skip: (ctx) => ctx.path === '/ping' }));
  const router = new Router();
  router.use(koaOptions({ readOnly: true }));
  router.get('/ping', (ctx) => {
    ctx.body = 'pong';
  });
  app.use(router.routes());
  const url = await serve(t, app);
  const ping = await koaRequest(`${url}/ping`, { method: 'GET' });
  t.equal(ping.status, 200, 'a skipped request is not failed by options it has no transaction for');
});

// transactionOptions() layered (router-wide, then per route) replaces instead of merging: the
// DbConnect's defaults merge field by field under a route's, but a second transactionOptions()
// drops every field the first one set.
t.test('Express: router-wide and route transactionOptions() merge field by field', async (t) => {
  const { db } = testDb(t);
  const app = express();
  app.use(expressContextDb({ db }));
  const router = express.Router();
  router.use(expressOptions({ statementTimeout: 5000 }));
  router.get('/report', expressOptions({ readOnly: true }), async (_req, res) => {
    const { rows } = await (await dbSession(db)).query(
      "SELECT current_setting('statement_timeout') AS st, current_setting('transaction_read_only') AS ro",
    );
    res.json(rows[0]);
  });
  app.use(router);
  const url = await listen(t, app);
  t.same(JSON.parse((await expressRequest(`${url}/report`, { method: 'GET' })).body), { st: '5s', ro: 'on' });
});

t.test('Koa: router-wide and route transactionOptions() merge field by field', async (t) => {
  const { db } = testDb(t);
  const app = new Koa();
  app.use(koaContextDb({ db }));
  const router = new Router();
  router.use(koaOptions({ statementTimeout: 5000 }));
  router.get('/report', koaOptions({ readOnly: true }), async (ctx) => {
    const { rows } = await (await dbSession(db)).query(
      "SELECT current_setting('statement_timeout') AS st, current_setting('transaction_read_only') AS ro",
    );
    ctx.body = rows[0];
  });
  app.use(router.routes());
  const url = await serve(t, app);
  t.same(JSON.parse((await koaRequest(`${url}/report`, { method: 'GET' })).body), { st: '5s', ro: 'on' });
});

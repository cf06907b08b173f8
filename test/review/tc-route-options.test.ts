// Review of issue #12 per-route options. Fastify: "checked at declaration" holds only for routes
// declared after the plugin has loaded; with the common unawaited `app.register(plugin)` (or a
// route declared first) a bad value boots fine and every request to the route answers 500.
// Express / Koa: transactionOptions() on a request the adapter's own `skip` left outside the
// context fails that request with ContextNotInitiatedError (a 500), though there is no
// transaction for the options to apply to; and a second transactionOptions() (router-wide, then
// per route) replaces the first instead of merging over it field by field.
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

t.test('Fastify: bad route options fail at start-up with an unawaited register', async (t) => {
  const { db } = testDb(t);
  const app = Fastify();
  t.teardown(() => app.close());
  void app.register(contextDbPlugin, { db });
  let declared: unknown;
  try {
    app.get('/bad', bad, async () => 'never');
  } catch (err) {
    declared = err;
  }
  const ready = await app.ready().then(
    () => undefined,
    (err: unknown) => err,
  );
  t.type(declared ?? ready, InvalidOptionsError, 'refused when declared or at ready()');
  if (ready === undefined) {
    const res = await app.inject({ url: '/bad' });
    t.comment(`instead every request answers ${res.statusCode}: ${res.body.slice(0, 120)}`);
  }
});

t.test('Fastify: bad route options fail at start-up for a route declared before the plugin', async (t) => {
  const { db } = testDb(t);
  const app = Fastify();
  t.teardown(() => app.close());
  app.get('/bad', bad, async () => 'never');
  await app.register(contextDbPlugin, { db });
  await t.rejects(async () => {
    await app.ready();
  }, InvalidOptionsError);
});

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

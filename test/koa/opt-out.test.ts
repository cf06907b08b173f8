// DESIGN "Adapters": a route opted out with noContextDb() runs without a context although the
// global contextDb() ran first; other routes of the same app keep theirs.
import { AsyncLocalStorage } from 'node:async_hooks';
import { ContextNotInitiatedError, dbSession, isContextInitiated, newNonCtxSession } from '@context-db/core';
import { contextDb, noContextDb } from '@context-db/koa';
import Router from '@koa/router';
import Koa from 'koa';
import t from 'tap';
import { activity, checkedOut, createTable, testDb, texts } from '../fixtures/db.js';
import { request, serve } from '../fixtures/koa.js';

t.test('noContextDb(): dbSession throws ContextNotInitiatedError, newNonCtxSession works', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  const router = new Router();
  // Another AsyncLocalStorage user, set up between contextDb() and the route: opting out of
  // context-db must not take its store away.
  const requestId = new AsyncLocalStorage<string>();
  const describe = async () => ({
    contextInitiated: isContextInitiated(),
    dbSession: await dbSession(db).then(
      () => 'a session',
      (err: unknown) => (err instanceof ContextNotInitiatedError ? err.code : String(err)),
    ),
    requestId: requestId.getStore() ?? null,
  });
  router.post('/opted-out', noContextDb(), async (ctx) => {
    const seen = await describe();
    await newNonCtxSession(db, async (session) => {
      await session.query(`INSERT INTO ${table} (text) VALUES ('own session')`);
      await session.commit();
    });
    ctx.body = seen;
  });
  router.post('/in-context', async (ctx) => {
    ctx.body = await describe();
  });
  app.use(contextDb({ db }));
  app.use((ctx, next) => requestId.run(`req-${ctx.path}`, next));
  app.use(router.routes());
  const url = await serve(t, app);

  t.same(JSON.parse((await request(`${url}/opted-out`)).body), {
    contextInitiated: false,
    dbSession: 'CONTEXT_NOT_INITIATED',
    requestId: 'req-/opted-out',
  });
  t.same(await texts(table), ['own session'], 'the session of its own committed');
  t.same(JSON.parse((await request(`${url}/in-context`)).body), {
    contextInitiated: true,
    dbSession: 'a session',
    requestId: 'req-/in-context',
  });
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('an opted-out route that fails leaves nothing open either', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  app.silent = true;
  const router = new Router();
  router.post('/opted-out', noContextDb(), async () => {
    await newNonCtxSession(db, (session) => session.query(`INSERT INTO ${table} (text) VALUES ('uncommitted')`));
    throw new Error('boom');
  });
  app.use(contextDb({ db }));
  app.use(router.routes());
  const url = await serve(t, app);
  t.equal((await request(`${url}/opted-out`)).status, 500);
  t.same(await texts(table), []);
  t.equal(checkedOut(db), 0);
});

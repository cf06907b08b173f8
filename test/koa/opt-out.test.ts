// DESIGN "Adapters": a route opted out with noContextDb() runs without a context although the
// global contextDb() ran first; other routes of the same app keep theirs. An opted-out request
// stays outside even where contextDb() dispatches the app's chain, and when another request's
// callback resumes it.
import { AsyncLocalStorage } from 'node:async_hooks';
import { ContextNotInitiatedError, dbSession, isContextInitiated, newNonCtxSession } from '@context-db/core';
import { contextDb, noContextDb } from '@context-db/koa';
import Router from '@koa/router';
import Koa, { type Middleware } from 'koa';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { collectErrors, request, serve } from '../fixtures/koa.js';

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

/** The handler's attempt at the request session: 'a session', or the error's code. */
async function tryDbSession(db: Parameters<typeof dbSession>[0], table: string, text: string): Promise<string> {
  try {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
    return 'a session';
  } catch (err) {
    return err instanceof ContextNotInitiatedError ? err.code : String(err);
  }
}

t.test('noContextDb() in the app chain keeps the middleware after it outside the context', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  collectErrors(app);
  app.use(contextDb({ db }));
  const optOut = noContextDb();
  app.use((ctx, next) => (ctx.path.startsWith('/events') ? optOut(ctx, next) : next()));
  app.use(async (ctx) => {
    ctx.body = await tryDbSession(db, table, ctx.path);
  });
  const url = await serve(t, app);
  t.same(await request(`${url}/events`), { status: 200, body: 'CONTEXT_NOT_INITIATED' });
  t.same(await request(`${url}/other`), { status: 200, body: 'a session' });
  t.same(await texts(table), ['/other']);
});

t.test('a second contextDb() whose skip(ctx) is true keeps the rest of the app chain outside', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  collectErrors(app);
  app.use(contextDb({ db }));
  app.use(contextDb({ db, skip: (ctx) => ctx.path === '/skipped' }));
  app.use(async (ctx) => {
    ctx.body = await tryDbSession(db, table, ctx.path);
  });
  const url = await serve(t, app);
  t.same(await request(`${url}/skipped`), { status: 200, body: 'CONTEXT_NOT_INITIATED' });
  t.same(await request(`${url}/joined`), { status: 200, body: 'a session' });
  t.same(await texts(table), ['/joined']);
});

// A callback-style limiter on the app, below contextDb() as the README asks, that parks /parked
// requests until another request's handler releases them.
function callbackGate(): { park: Middleware; parked: (() => void)[] } {
  const parked: (() => void)[] = [];
  const park: Middleware = (ctx, next) =>
    ctx.path.endsWith('/parked') ? new Promise<void>((resolve) => parked.push(() => resolve(next()))) : next();
  return { park, parked };
}

for (const how of ['skip(ctx)', 'noContextDb()']) {
  t.test(`a request opted out by ${how}, resumed by another request, stays outside any context`, async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    const app = new Koa();
    collectErrors(app);
    const gate = callbackGate();
    if (how === 'skip(ctx)') {
      app.use(contextDb({ db, skip: (ctx) => ctx.path.endsWith('/parked') }));
    } else {
      app.use(contextDb({ db }));
      const optOut = noContextDb();
      app.use((ctx, next) => (ctx.path.endsWith('/parked') ? optOut(ctx, next) : next()));
    }
    app.use(gate.park);
    let seen = '';
    app.use(async (ctx) => {
      if (ctx.path.endsWith('/parked')) {
        seen = await tryDbSession(db, table, 'from the opted-out request');
        ctx.body = 'ok';
        return;
      }
      await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('releaser')`);
      for (const release of gate.parked.splice(0)) release();
      // Hold the releaser's transaction open while the parked request runs.
      await new Promise((resolve) => setTimeout(resolve, 100));
      ctx.body = 'released';
    });
    const url = await serve(t, app);
    const parked = request(`${url}/parked`);
    t.ok(await eventually(() => gate.parked.length === 1), 'parked');
    t.equal((await request(`${url}/releaser`)).status, 200);
    t.equal((await parked).status, 200);
    t.equal(seen, 'CONTEXT_NOT_INITIATED', 'dbSession() refused in the opted-out request');
    t.same(await texts(table), ['releaser'], "nothing of it in the releaser's transaction");
  });
}

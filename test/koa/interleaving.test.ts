// Issue 10 item 9: a request resumed by another request's code runs in its own context. Two
// requests interleave through a gate: /parked waits in a middleware until /releaser's handler
// opens the gate, and then writes while /releaser's transaction is still open. /parked answers
// 200 (commit), /releaser 400 (roll back): each row must follow its own request's status.
import { dbSession } from '@context-db/core';
import { contextDb } from '@context-db/koa';
import Router from '@koa/router';
import Koa, { type Middleware } from 'koa';
import t from 'tap';
import { activity, checkedOut, createTable, testDb, texts } from '../fixtures/db.js';
import { request, serve } from '../fixtures/koa.js';

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve = (): void => {};
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

type Gate = { park: Middleware; release(): void };

/**
 * A gate that parks `next` as a callback (as queues, rate limiters and callback-style stores do)
 * and runs it from whoever calls release(): the parked request resumes on the releaser's stack.
 */
function callbackGate(): Gate {
  const parked: Array<() => void> = [];
  return {
    park: (ctx, next) =>
      ctx.path.endsWith('/parked')
        ? new Promise((resolve, reject) => parked.push(() => next().then(resolve, reject)))
        : next(),
    release: () => parked.shift()?.(),
  };
}

/** A gate that parks on a promise: its continuation keeps the context of the code that awaits. */
function promiseGate(): Gate {
  const open = deferred();
  return {
    park: async (ctx, next) => {
      if (ctx.path.endsWith('/parked')) await open.promise;
      await next();
    },
    release: open.resolve,
  };
}

/** The two routes; `parkedWrote` lets the releaser hold its transaction open until /parked wrote. */
function routes(
  table: string,
  db: Parameters<typeof dbSession>[0],
  gate: Gate,
  { prefix = '', install = [] }: { prefix?: string; install?: Middleware[] } = {},
): Router {
  const parkedWrote = deferred();
  const insert = async (text: string) => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
  const router = new Router({ prefix });
  for (const middleware of install) router.use(middleware);
  router.post('/parked', async (ctx) => {
    await insert('parked');
    parkedWrote.resolve();
    ctx.body = 'ok';
  });
  router.post('/releaser', async (ctx) => {
    await insert('releaser');
    gate.release();
    await parkedWrote.promise;
    ctx.status = 400;
    ctx.body = 'refused';
  });
  return router;
}

async function interleave(url: string): Promise<number[]> {
  const parked = request(`${url}/parked`);
  // Let /parked reach the gate before /releaser opens it.
  await new Promise((resolve) => setTimeout(resolve, 50));
  const releaser = await request(`${url}/releaser`);
  return [(await parked).status, releaser.status];
}

t.test('a request parked before contextDb() and resumed by another request commits with its own status', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const gate = callbackGate();
  const app = new Koa();
  app.use(gate.park);
  app.use(contextDb({ db }));
  app.use(routes(table, db, gate).routes());
  const url = await serve(t, app);

  t.same(await interleave(url), [200, 400]);
  t.same(await texts(table), ['parked'], 'the parked row committed, the releaser’s rolled back');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('a callback gate after contextDb() on the app: the parked request resumes in its own context', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const gate = callbackGate();
  const app = new Koa();
  const sessions: unknown[] = [];
  const recordSession: Middleware = async (ctx, next) => {
    if (ctx.path.endsWith('/parked')) sessions.push(await dbSession(db));
    await next();
  };
  app.use(contextDb({ db }));
  app.use(recordSession);
  app.use(gate.park);
  app.use(recordSession);
  app.use(routes(table, db, gate).routes());
  const url = await serve(t, app);

  t.same(await interleave(url), [200, 400]);
  t.same(await texts(table), ['parked'], 'the parked row committed, the releaser’s rolled back');
  t.equal(sessions.length, 2);
  t.equal(sessions[0], sessions[1], 'the same session before and after the gate');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('a promise gate after contextDb() keeps each request in its own context', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const gate = promiseGate();
  const app = new Koa();
  app.use(contextDb({ db }));
  app.use(gate.park);
  app.use(routes(table, db, gate).routes());
  const url = await serve(t, app);

  t.same(await interleave(url), [200, 400]);
  t.same(await texts(table), ['parked']);
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('a router-level contextDb() below a callback gate re-enters the parked request’s context', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const gate = callbackGate();
  const app = new Koa();
  const sessions: unknown[] = [];
  const recordSession: Middleware = async (ctx, next) => {
    if (ctx.path.endsWith('/parked')) sessions.push(await dbSession(db));
    await next();
  };
  app.use(contextDb({ db }));
  app.use(recordSession);
  app.use(gate.park);
  // Installed again below the gate: the point where the parked request gets its context back.
  app.use(routes(table, db, gate, { prefix: '/api', install: [contextDb({ db }), recordSession] }).routes());
  const url = await serve(t, app);

  t.same(await interleave(`${url}/api`), [200, 400]);
  t.same(await texts(table), ['parked']);
  t.equal(sessions.length, 2);
  t.equal(sessions[0], sessions[1], 'the parked request keeps one session across the gate');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

// DESIGN "Adapters" 3: if the client goes away first, roll back and release at once, not when the
// handler gets round to finishing.
import { once } from 'node:events';
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { dbSession, SessionClosedError } from '@context-db/core';
import { contextDb } from '@context-db/koa';
import Koa from 'koa';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { collectErrors, request, serve } from '../fixtures/koa.js';

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve = (): void => {};
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

t.test('a client that disconnects mid-transaction gets its connection released within 1 s', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const reached = deferred();
  const gate = deferred();
  const after: unknown[] = [];
  const app = new Koa();
  const errors = collectErrors(app);
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    const session = await dbSession(db);
    await session.query(`INSERT INTO ${table} (text) VALUES ('aborted')`);
    reached.resolve();
    await gate.promise; // the handler is slow: an upstream call, say
    await session.query(`INSERT INTO ${table} (text) VALUES ('after')`).catch((err: unknown) => after.push(err));
    ctx.body = 'too late';
  });
  const url = await serve(t, app);

  const req = http.request(url, { method: 'POST', agent: false });
  req.on('error', () => {});
  req.end();
  await reached.promise;
  t.equal(checkedOut(db), 1, 'the handler holds a connection');
  t.equal((await activity(appName)).idleInTransaction, 1, 'with a transaction open');

  const start = Date.now();
  req.destroy();
  const released = await eventually(
    async () => checkedOut(db) === 0 && (await activity(appName)).idleInTransaction === 0,
    1000,
  );
  t.ok(released, `released while the handler still waits (${Date.now() - start} ms)`);
  t.same(await texts(table), [], 'rolled back');

  gate.resolve();
  t.ok(await eventually(() => after.length === 1), 'the handler carried on');
  t.type(after[0], SessionClosedError, 'its later query fails clearly instead of taking a new connection');
  t.equal(checkedOut(db), 0);
  t.same(await texts(table), []);
  t.same(errors, [], 'nothing for app.on("error"): the response was never going to be sent');
});

t.test('a response that finished before the handler returned is not an abort', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    const session = await dbSession(db);
    await session.query(`INSERT INTO ${table} (text) VALUES ('before')`);
    // The handler answers by itself, then carries on after the response emitted 'close'.
    ctx.respond = false;
    const closed = once(ctx.res, 'close');
    ctx.res.writeHead(200).end('accepted');
    await closed;
    await session.query(`INSERT INTO ${table} (text) VALUES ('after')`);
  });
  const url = await serve(t, app);
  const req = http.request(url, { method: 'POST', agent: false });
  req.end();
  const [res] = (await once(req, 'response')) as [http.IncomingMessage];
  res.resume();
  await once(res, 'end');
  t.ok(await eventually(async () => (await texts(table)).length === 2), 'both inserts committed');
  t.same(await texts(table), ['before', 'after']);
  t.equal(checkedOut(db), 0);
});

t.test('a client that goes away while waiting for the only pool connection leaves nothing behind', async (t) => {
  const { db, appName } = testDb(t, { max: 1, connectionTimeoutMillis: 3000 });
  const table = await createTable(t);
  const gate = deferred();
  let outcome: unknown = 'never finished';
  const finished = deferred();
  const app = new Koa();
  collectErrors(app);
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    const insert = async (text: string) =>
      (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
    if (ctx.path === '/holder') {
      await insert('holder');
      await gate.promise;
      ctx.body = 'ok';
      return;
    }
    try {
      await insert('waiter'); // waits for the pool: the holder has the only connection
      await sleep(50);
      await insert('waiter again');
      outcome = 'done';
      ctx.body = 'ok';
    } catch (err) {
      outcome = err;
      throw err;
    } finally {
      finished.resolve();
    }
  });
  const url = await serve(t, app);
  const holder = request(`${url}/holder`);
  t.ok(await eventually(() => checkedOut(db) === 1), 'the holder has the only connection');
  const waiter = http.request(`${url}/waiter`, { method: 'POST' });
  waiter.on('error', () => {});
  waiter.end();
  await sleep(150);
  waiter.destroy();
  await sleep(100);
  gate.resolve();
  t.equal((await holder).status, 200);
  await finished.promise;
  t.not(outcome, 'done', "the waiter's work did not complete");
  t.ok(await eventually(() => checkedOut(db) === 0, 4000), 'nothing checked out');
  t.equal((await activity(appName)).idleInTransaction, 0);
  t.same(await texts(table), ['holder']);
});

// The less common ways a Koa response is made, each matched against the table: error handlers
// around contextDb(), 304, and a head the handler wrote itself before the outcome was known.
import http from 'node:http';
import { dbSession } from '@context-db/core';
import { contextDb } from '@context-db/koa';
import Koa from 'koa';
import t from 'tap';
import { activity, admin, checkedOut, createTable, testDb, texts } from '../fixtures/db.js';
import { collectErrors, createDeferredTable, request, serve } from '../fixtures/koa.js';

t.test('an error handler before contextDb() that answers 200 does not commit the failed work', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  app.use(async (ctx, next) => {
    try {
      await next();
    } catch {
      ctx.status = 200;
      ctx.body = { degraded: true };
    }
  });
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('half done')`);
    ctx.body = 'ok';
    throw new Error('the rest failed');
  });
  const url = await serve(t, app);
  t.same(await request(url), { status: 200, body: '{"degraded":true}' });
  t.same(await texts(table), [], 'rolled back: the error decided, not the status the handler chose');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('an error handler after contextDb() that answers 200 commits: contextDb() saw a 200', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  app.use(contextDb({ db }));
  app.use(async (ctx, next) => {
    try {
      await next();
    } catch {
      ctx.status = 200;
      ctx.body = { degraded: true };
    }
  });
  app.use(async () => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('kept')`);
    throw new Error('handled below contextDb()');
  });
  const url = await serve(t, app);
  t.same(await request(url), { status: 200, body: '{"degraded":true}' });
  t.same(await texts(table), ['kept']);
});

t.test('a 304 commits and is sent without a body', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('seen')`);
    ctx.body = 'cached';
    ctx.status = 304;
  });
  const url = await serve(t, app);
  t.same(await request(url, { method: 'GET' }), { status: 304, body: '' });
  t.same(await texts(table), ['seen']);
});

t.test('a head written by the handler and a failed COMMIT: the connection is cut, not left hanging', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createDeferredTable(t);
  await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'taken')`);
  const app = new Koa();
  const errors = collectErrors(app);
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text, key) VALUES ('dup', 'taken')`);
    // The 200 is on the wire before the outcome is known; Koa sends the body later.
    ctx.res.writeHead(200, { 'content-type': 'text/plain' });
    ctx.res.flushHeaders();
    ctx.body = 'saved';
  });
  const url = await serve(t, app);
  const outcome = await new Promise<string>((resolve) => {
    const req = http.request(url, { method: 'POST', agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
      });
      res.on('end', () => resolve(`complete ${res.statusCode} ${body}`));
      res.on('error', () => resolve(`cut after ${res.statusCode} "${body}"`));
    });
    req.on('error', (err) => resolve(`cut: ${err.message}`));
    req.setTimeout(3000, () => {
      resolve('hanging');
      req.destroy();
    });
    req.end();
  });
  t.equal(outcome, 'cut after 200 ""', 'the client sees an incomplete response, never "saved"');
  t.same(await texts(table), ['existing']);
  t.equal(errors.length, 1, 'the failed commit is logged');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('a head written by the handler and then a throw: the rolled-back response is cut', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  collectErrors(app);
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('half done')`);
    ctx.res.writeHead(200, { 'content-type': 'text/plain' });
    ctx.res.flushHeaders();
    throw new Error('failed after the head');
  });
  const url = await serve(t, app);
  const outcome = await new Promise<string>((resolve) => {
    const req = http.request(url, { method: 'POST', agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(`complete ${res.statusCode}`));
      res.on('error', () => resolve(`cut after ${res.statusCode}`));
    });
    req.on('error', (err) => resolve(`cut: ${err.message}`));
    req.setTimeout(3000, () => {
      resolve('hanging');
      req.destroy();
    });
    req.end();
  });
  t.equal(outcome, 'cut after 200', 'not a complete 200 for rolled-back work, nor a hanging request');
  t.same(await texts(table), []);
});

t.test('the middleware below contextDb() keeps koa-compose semantics: next() twice is an error', async (t) => {
  const { db } = testDb(t);
  const app = new Koa();
  const errors = collectErrors(app);
  const order: string[] = [];
  app.use(contextDb({ db }));
  app.use(async (_ctx, next) => {
    order.push('a in');
    await next();
    order.push('a out');
    await next();
  });
  app.use(async (ctx, next) => {
    order.push('b');
    ctx.body = 'ok';
    await next(); // the end of the chain: resolves, as in koa-compose
  });
  const url = await serve(t, app);
  t.equal((await request(url)).status, 500);
  t.same(order, ['a in', 'b', 'a out']);
  t.match(errors[0]?.message, /next\(\) called multiple times/);
});

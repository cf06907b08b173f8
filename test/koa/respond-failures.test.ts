// Koa serialises the body and writes the head in respond(), after the middleware chain and so
// after the commit. What respond() would fail at is tried before the commit: such a request rolls
// back and answers 500, never a 500 over committed work.
import { dbSession } from '@context-db/core';
import { contextDb } from '@context-db/koa';
import Koa from 'koa';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { collectErrors, request, serve } from '../fixtures/koa.js';

const bodies: Record<string, () => unknown> = {
  // e.g. a bigint column from a driver configured to return BigInt
  '/bigint': () => ({ id: 1n }),
  '/circular': () => {
    const body: Record<string, unknown> = { ok: true };
    body.self = body;
    return body;
  },
};

t.test('a body JSON.stringify refuses (a BigInt, a cycle) rolls back and answers 500', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  const errors = collectErrors(app);
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [ctx.path]);
    ctx.body = bodies[ctx.path]?.();
  });
  const url = await serve(t, app);

  for (const route of Object.keys(bodies)) {
    const res = await request(`${url}${route}`);
    t.same(res, { status: 500, body: 'Internal Server Error' }, `${route}: a 500 that shows nothing`);
  }
  t.same(await texts(table), [], 'neither write is durable');
  t.same(
    errors.map((err) => err.name),
    ['TypeError', 'TypeError'],
    'app.on("error") gets the serialisation errors',
  );
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('a status message Node refuses (ctx.message with CR/LF) rolls back and answers 500', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  collectErrors(app);
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('bad message')`);
    ctx.body = 'ok';
    ctx.message = 'Created\r\nX-Injected: 1'; // e.g. user input echoed into the reason phrase
  });
  const url = await serve(t, app);
  t.same(await request(url), { status: 500, body: 'Internal Server Error' });
  t.same(await texts(table), [], 'the write is not durable');
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('middleware above contextDb() still sees the body object the handler set', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  // An envelope, as koa-json or response formatters do after `await next()`.
  app.use(async (ctx, next) => {
    await next();
    ctx.body = { data: ctx.body };
  });
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('enveloped')`);
    ctx.body = { id: 1 };
  });
  const url = await serve(t, app);
  t.same(await request(url), { status: 200, body: '{"data":{"id":1}}' });
  t.same(await texts(table), ['enveloped']);
});

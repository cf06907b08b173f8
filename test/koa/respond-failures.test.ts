// Koa serialises the body and writes the head in respond(), after every middleware. contextDb()
// decides only when respond() writes: what respond() fails at becomes Koa's 500, which rolls back
// (never a 500 over committed work), and what the middleware above contextDb() leaves is what
// Koa serialises, once.
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

t.test('a BigInt body an outer serialiser handles commits and answers 200', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  const errors = collectErrors(app);
  // The usual fix for BigInt ids (pg int8 parsed as BigInt): serialise above everything.
  app.use(async (ctx, next) => {
    await next();
    if (ctx.body && typeof ctx.body === 'object') {
      ctx.type = 'json';
      ctx.body = JSON.stringify(ctx.body, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
    }
  });
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('row')`);
    ctx.body = { id: 1n };
  });
  const url = await serve(t, app);
  const res = await request(url);
  t.same(res, { status: 200, body: '{"id":"1"}' }, 'what the outer serialiser makes of it');
  t.same(await texts(table), ['row'], 'committed');
  t.same(
    errors.map((e) => e.message),
    [],
  );
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('a JSON body is serialised once (toJSON called once)', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  let calls = 0;
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('row')`);
    ctx.body = { toJSON: () => ({ n: ++calls }) };
  });
  const url = await serve(t, app);
  const res = await request(url);
  t.same(res, { status: 200, body: '{"n":1}' }, 'the body is the first serialisation');
  t.equal(calls, 1, 'toJSON ran once');
});

// Koa's respond() computes ctx.response.length for a HEAD with an object body, which is
// Buffer.byteLength(JSON.stringify(body)): a throw there must come before any COMMIT.
t.test('HEAD with a body JSON.stringify refuses: a 500 means nothing was committed', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  collectErrors(app);
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [ctx.method]);
    ctx.body = { id: 1n };
  });
  const url = await serve(t, app);
  const res = await request(url, { method: 'HEAD' });
  if (res.status >= 400) t.same(await texts(table), [], `the client got ${res.status}: nothing may be durable`);
  else t.same(await texts(table), ['HEAD'], `the client got ${res.status}: committed`);
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('a middleware above contextDb() that throws after next() rolls back and answers 500', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  const errors = collectErrors(app);
  app.use(async (_ctx, next) => {
    await next();
    throw new Error('formatter failed');
  });
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('row')`);
    ctx.body = { ok: true };
  });
  const url = await serve(t, app);
  t.same(await request(url), { status: 500, body: 'Internal Server Error' });
  t.same(await texts(table), [], 'nothing is durable under the 500');
  t.same(
    errors.map((e) => e.message),
    ['formatter failed'],
  );
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
});

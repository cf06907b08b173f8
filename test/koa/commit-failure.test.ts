// DESIGN "Adapters" 2: a failed commit turns the response into a 500 through Koa's error path,
// never a 2xx whose data is not in the database.
import { Readable } from 'node:stream';
import { CommitFailedError, dbSession } from '@context-db/core';
import { contextDb } from '@context-db/koa';
import Koa from 'koa';
import t from 'tap';
import { activity, admin, checkedOut, eventually, testDb, texts } from '../fixtures/db.js';
import { collectErrors, createDeferredTable, request, serve } from '../fixtures/koa.js';

t.test('a COMMIT that fails (deferred unique key) answers 500 and leaves no row', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createDeferredTable(t);
  await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'taken')`);
  const app = new Koa();
  const errors = collectErrors(app);
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    const key = ctx.path.slice(1);
    // Accepted by INSERT: the unique check is deferred to COMMIT.
    await (await dbSession(db)).query(`INSERT INTO ${table} (text, key) VALUES ($1, $1)`, [key]);
    ctx.set('x-handler', 'ran');
    ctx.body = { saved: key };
  });
  const url = await serve(t, app);

  t.same(await request(`${url}/taken`), { status: 500, body: 'Internal Server Error' }, 'no detail exposed');
  t.same(await request(`${url}/free`), { status: 200, body: '{"saved":"free"}' });
  t.same(await texts(table), ['existing', 'free'], 'the duplicate is not in the table');
  t.equal(errors.length, 1);
  t.type(errors[0], CommitFailedError, 'app.on("error") gets the CommitFailedError to log');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('the 500 replaces the handler headers and a streamed body, which is never sent', async (t) => {
  const { db } = testDb(t);
  const table = await createDeferredTable(t);
  await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'taken')`);
  const app = new Koa();
  collectErrors(app);
  let read = false;
  let stream: Readable | undefined;
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text, key) VALUES ('dup', 'taken')`);
    ctx.set('x-handler', 'ran');
    stream = new Readable({
      read() {
        read = true;
        this.push('streamed');
        this.push(null);
      },
    });
    ctx.body = stream;
  });
  const url = await serve(t, app);
  const res = await fetch(url, { method: 'POST' });
  t.equal(res.status, 500);
  t.equal(await res.text(), 'Internal Server Error');
  t.equal(res.headers.get('x-handler'), null, 'headers of the failed response are dropped');
  t.ok(read, 'its first chunk was produced: the commit waited for it (and the 500 shows it was not sent)');
  t.ok(stream?.destroyed, 'Koa destroyed the abandoned stream');
  t.same(await texts(table), ['existing']);
});

t.test('a beforeCommit that throws answers 500 and rolls back; it is not called on rollback', async (t) => {
  const { db } = testDb(t);
  const table = await createDeferredTable(t);
  const app = new Koa();
  const errors = collectErrors(app);
  const calls: string[] = [];
  app.use(
    contextDb({
      db,
      beforeCommit: async (session) => {
        const { rows } = await session.query<{ text: string }>(`SELECT text FROM ${table}`);
        calls.push(rows.map((row) => row.text).join());
        if (rows.some((row) => row.text === 'veto')) throw new Error('vetoed');
        // An error that carries its own status and asks to be shown: still a hidden 500.
        if (rows.some((row) => row.text === 'veto-409'))
          throw Object.assign(new Error('conflict'), { status: 409, expose: true });
      },
    }),
  );
  app.use(async (ctx) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [ctx.path.slice(1)]);
    ctx.status = ctx.path === '/bad' ? 400 : 200;
    ctx.body = 'done';
  });
  const url = await serve(t, app);
  t.same(await request(`${url}/veto`), { status: 500, body: 'Internal Server Error' });
  t.same(await request(`${url}/veto-409`), { status: 500, body: 'Internal Server Error' });
  t.equal((await request(`${url}/bad`)).status, 400);
  t.equal((await request(`${url}/fine`)).status, 200);
  t.same(calls, ['veto', 'veto-409', 'fine'], 'called before each commit, with the session');
  t.same(await texts(table), ['fine']);
  t.same(
    errors.map((err) => err.message),
    ['vetoed', 'conflict'],
  );
});

t.test(
  'ctx.respond = false: decided by the status the handler set or wrote; a failed commit is reported',
  async (t) => {
    const { db, appName } = testDb(t);
    const table = await createDeferredTable(t);
    await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'taken')`);
    const app = new Koa();
    const errors = collectErrors(app);
    app.use(contextDb({ db }));
    app.use(async (ctx) => {
      const [how, key] = ctx.path.slice(1).split('/');
      await (await dbSession(db)).query(`INSERT INTO ${table} (text, key) VALUES ($1, $2)`, [ctx.path, key]);
      ctx.respond = false;
      if (how === 'wrote') {
        // The handler sends the response itself: these bytes leave before the commit.
        ctx.res.writeHead(200, { 'content-type': 'text/plain' }).end('sent by the handler');
      } else {
        // Not written yet, status set: Koa can still answer 500 if the commit fails.
        ctx.status = 201;
      }
    });
    const url = await serve(t, app);

    t.same(await request(`${url}/wrote/a`), { status: 200, body: 'sent by the handler' });
    t.same(await request(`${url}/wrote/taken`), { status: 200, body: 'sent by the handler' }, 'too late to change');
    t.same(await request(`${url}/set/taken`), { status: 500, body: 'Internal Server Error' });
    t.ok(await eventually(() => errors.length === 2), 'both failed commits were reported');
    t.same(await texts(table), ['existing', '/wrote/a']);
    t.ok(
      errors.every((err) => err instanceof CommitFailedError),
      'both failed commits reach app.on("error"), even the one after the response',
    );
    t.equal(checkedOut(db), 0);
    t.equal((await activity(appName)).idleInTransaction, 0);
  },
);

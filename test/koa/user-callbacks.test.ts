// Issue 16 item 3: every user callback of contextDb() that throws (skip, commitOn, beforeCommit)
// ends in an error response, the request's work rolled back and its connection released.
import { dbSession } from '@context-db/core';
import { contextDb } from '@context-db/koa';
import Koa from 'koa';
import t from 'tap';
import { activity, checkedOut, createTable, testDb, texts } from '../fixtures/db.js';
import { collectErrors, request, serve } from '../fixtures/koa.js';

t.test('a skip(ctx) that throws answers 500 and takes no connection', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  const errors = collectErrors(app);
  let ran = false;
  app.use(
    contextDb({
      db,
      skip: () => {
        throw new Error('skip failed: db.example.internal:5432');
      },
    }),
  );
  app.use(async (ctx) => {
    ran = true;
    await (await dbSession(db)).query(`INSERT INTO ${table} DEFAULT VALUES`);
    ctx.body = 'ok';
  });
  const url = await serve(t, app);
  t.same(await request(url), { status: 500, body: 'Internal Server Error' }, 'no detail of the error shown');
  t.notOk(ran, 'the handler did not run');
  t.same(
    errors.map((err) => err.message),
    ['skip failed: db.example.internal:5432'],
    'the error reached app.on("error")',
  );
  t.same(await texts(table), []);
  t.equal((await activity(appName)).total, 0, 'no connection was opened');
});

for (const which of ['commitOn', 'beforeCommit'] as const) {
  t.test(`a ${which} that throws answers 500, rolls back and releases`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const app = new Koa();
    const errors = collectErrors(app);
    const fail = (): never => {
      throw new Error(`${which} failed`);
    };
    app.use(contextDb(which === 'commitOn' ? { db, commitOn: fail } : { db, beforeCommit: fail }));
    app.use(async (ctx) => {
      await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('written')`);
      ctx.set('location', '/written');
      ctx.body = 'ok';
    });
    const url = await serve(t, app);
    const res = await fetch(url, { method: 'POST' });
    t.equal(res.status, 500);
    t.equal(await res.text(), 'Internal Server Error');
    t.equal(res.headers.get('location'), null, 'the success headers are dropped');
    t.same(await texts(table), [], 'rolled back');
    t.equal(checkedOut(db), 0, 'the connection is back in the pool');
    t.equal((await activity(appName)).idleInTransaction, 0, 'no transaction left open');
    t.same(
      errors.map((err) => err.message),
      [`${which} failed`],
    );
  });
}

import { DbSessionCtx, dbSession } from '@context-db/core';
import t from 'tap';
import { activity, checkedOut, createTable, testDb, texts } from '../fixtures/db.js';

t.test(
  'dbSession takes no connection until the first query, and is the same object everywhere in the context',
  async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const ctx = new DbSessionCtx();
    await ctx.run(async () => {
      const session = await dbSession(db);
      t.equal((await activity(appName)).total, 0, 'no server connection before the first query');
      t.notOk(session.connected);
      const nested = async () => {
        await new Promise((resolve) => setTimeout(resolve, 1));
        return dbSession(db);
      };
      const [a, b] = await Promise.all([nested(), (async () => nested())()]);
      t.equal(a, session, 'nested async work gets the same session');
      t.equal(b, session);
      setImmediate(async () => t.equal(await dbSession(db), session, 'callbacks started in the context see it too'));
      await session.query(`INSERT INTO ${table} (text) VALUES ('a')`);
      t.equal(checkedOut(db), 1);
      t.same(await activity(appName), { total: 1, idleInTransaction: 1, active: 0 }, 'BEGIN was sent');
    });
    await ctx.finish({ statusCode: 200 });
    t.same(await texts(table), ['a']);
    t.same(await activity(appName), { total: 1, idleInTransaction: 0, active: 0 });
    t.equal(checkedOut(db), 0);
  },
);

t.test('a context that never queries never touches the pool', async (t) => {
  const { db, appName } = testDb(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    await dbSession(db);
  });
  await ctx.finish();
  t.equal(db.pool().totalCount, 0);
  t.equal((await activity(appName)).total, 0);
});

t.test(
  'the session queues its own queries: 50 at once run in call order without pg deprecation warnings',
  async (t) => {
    const { db } = testDb(t);
    const warnings: string[] = [];
    const onWarning = (warning: Error) => warnings.push(warning.message);
    process.on('warning', onWarning);
    t.teardown(() => process.off('warning', onWarning));
    const ctx = new DbSessionCtx();
    const results = await ctx.run(async () => {
      const session = await dbSession(db);
      return Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          session.query<{ i: number; pid: number }>('SELECT $1::int AS i, pg_backend_pid() AS pid', [i]),
        ),
      );
    });
    await ctx.finish();
    t.same(
      results.map((r) => r.rows[0]?.i),
      Array.from({ length: 50 }, (_, i) => i),
    );
    t.equal(new Set(results.map((r) => r.rows[0]?.pid)).size, 1, 'all on one connection');
    await new Promise((resolve) => setImmediate(resolve));
    t.same(warnings, [], 'no warning was emitted');
  },
);

t.test('two concurrent first queries take one connection', async (t) => {
  const { db } = testDb(t);
  let acquired = 0;
  db.pool().on('acquire', () => acquired++);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    const [a, b] = await Promise.all([
      dbSession(db).then((s) => s.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')),
      dbSession(db).then((s) => s.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')),
    ]);
    t.equal(a.rows[0]?.pid, b.rows[0]?.pid);
  });
  await ctx.finish();
  t.equal(acquired, 1);
});

t.test('session.client() gives the begun pg client for libraries that take one', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    const client = await (await dbSession(db)).client();
    await client.query(`INSERT INTO ${table} (text) VALUES ('via client')`);
    t.equal((await activity(appName)).idleInTransaction, 1);
  });
  await ctx.finish({ statusCode: 500 });
  t.same(await texts(table), [], 'rolled back with the session');
});

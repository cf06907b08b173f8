import { CommitFailedError, type DbSession, DbSessionCtx, dbSession } from '@context-db/core';
import t from 'tap';
import { activity, checkedOut, createDeferredTable, createTable, testDb, texts } from '../fixtures/db.js';

async function insertIn(ctx: DbSessionCtx, db: Parameters<typeof dbSession>[0], table: string, text: string) {
  await ctx.run(async () => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]));
}

t.test('finish commits on success and rolls back on 500, 404 or an error, releasing every time', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const cases = [
    { name: '200', options: { statusCode: 200 }, kept: true },
    { name: '302', options: { statusCode: 302 }, kept: true },
    { name: '500', options: { statusCode: 500 }, kept: false },
    { name: '404', options: { statusCode: 404 }, kept: false },
    { name: 'error', options: { error: new Error('boom') }, kept: false },
    { name: 'error with 200', options: { statusCode: 200, error: new Error('boom') }, kept: false },
    { name: 'commitOn', options: { statusCode: 404, commitOn: (s: number) => s < 500 }, kept: true },
  ];
  for (const c of cases) {
    const ctx = new DbSessionCtx();
    await insertIn(ctx, db, table, c.name);
    t.equal(checkedOut(db), 1);
    await ctx.finish(c.options);
    t.equal(checkedOut(db), 0, `${c.name}: released`);
    t.equal((await activity(appName)).idleInTransaction, 0, `${c.name}: no idle in transaction`);
  }
  t.same(
    await texts(table),
    cases.filter((c) => c.kept).map((c) => c.name),
  );
});

t.test('a COMMIT that fails rejects finish with CommitFailedError, after rolling back and releasing', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createDeferredTable(t);
  const first = new DbSessionCtx();
  await first.run(async () => (await dbSession(db)).query(`INSERT INTO ${table} (key) VALUES ('k')`));
  await first.finish();
  const second = new DbSessionCtx();
  await second.run(async () => (await dbSession(db)).query(`INSERT INTO ${table} (key, text) VALUES ('k', 'dup')`));
  const err = await second.finish().catch((e: unknown) => e);
  t.type(err, CommitFailedError);
  t.equal((err as CommitFailedError).code, 'COMMIT_FAILED');
  t.match((err as CommitFailedError).detail, /duplicate key/);
  t.notMatch((err as Error).message, /duplicate key|key_unique/, 'the message is safe to show a client');
  t.same(await texts(table), ['x'], 'only the first row');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
  t.equal(await second.finish().catch((e: unknown) => e), err, 'a second finish reports the same outcome');
});

t.test('COMMIT of a transaction an earlier error aborted is reported, not silently rolled back', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    const session = await dbSession(db);
    await session.query(`INSERT INTO ${table} (text) VALUES ('lost')`);
    await session.query('SELECT 1/0').catch(() => {}); // swallowed by the app
  });
  const err = await ctx.finish().catch((e: unknown) => e);
  t.type(err, CommitFailedError);
  t.match((err as CommitFailedError).detail, /aborted the transaction/);
  t.same(await texts(table), []);
});

t.test('beforeCommit runs before each commit, not on rollback; if it throws, everything rolls back', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const seen: DbSession[] = [];
  const ok = new DbSessionCtx();
  await insertIn(ok, db, table, 'committed');
  await ok.finish({
    beforeCommit: async (session) => {
      seen.push(session);
      await session.query(`INSERT INTO ${table} (text) VALUES ('from beforeCommit')`);
    },
  });
  t.equal(seen.length, 1);
  const rolledBack = new DbSessionCtx();
  await insertIn(rolledBack, db, table, 'rolled back');
  await rolledBack.finish({ statusCode: 500, beforeCommit: (s) => void seen.push(s) });
  t.equal(seen.length, 1, 'not called on rollback');
  const failing = new DbSessionCtx();
  await insertIn(failing, db, table, 'vetoed');
  const err = await failing.finish({ beforeCommit: () => Promise.reject(new Error('veto')) }).catch((e: unknown) => e);
  t.match(err, { message: 'veto' });
  t.same(await texts(table), ['committed', 'from beforeCommit']);
  t.equal(checkedOut(db), 0);
});

t.test('finish commits and releases every database of the context', async (t) => {
  const a = testDb(t);
  const b = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  await insertIn(ctx, a.db, table, 'a');
  await insertIn(ctx, b.db, table, 'b');
  await ctx.finish();
  t.same((await texts(table)).sort(), ['a', 'b']);
  t.equal(checkedOut(a.db) + checkedOut(b.db), 0);
});

t.test("work the request sends while beforeCommit runs is refused; beforeCommit's own queries run", async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  let late!: Promise<PromiseSettledResult<unknown>[]>;
  await ctx.run(async () => {
    const session = await dbSession(db);
    await session.query(`INSERT INTO ${table} (text) VALUES ('req')`);
    // Background code of the request, still holding the session, acts while the finish runs.
    setTimeout(() => {
      late = Promise.allSettled([session.rollback(), session.query(`INSERT INTO ${table} (text) VALUES ('late')`)]);
    }, 10);
  });
  await ctx.finish({
    beforeCommit: async (s) => {
      await s.query('SELECT pg_sleep(0.1)');
      await s.query(`INSERT INTO ${table} (text) VALUES ('audit')`);
      await t.rejects(s.rollback(), { code: 'SESSION_CLOSED' }, 'beforeCommit cannot end the transaction either');
    },
  });
  t.match(await late, [
    { status: 'rejected', reason: { code: 'SESSION_CLOSED' } },
    { status: 'rejected', reason: { code: 'SESSION_CLOSED' } },
  ]);
  t.same(await texts(table), ['req', 'audit'], 'the reported commit holds everything it reported');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

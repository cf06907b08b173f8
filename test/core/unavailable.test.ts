import { DatabaseUnavailableError, DbConnect, DbSessionCtx, dbSession, newNonCtxSession } from '@context-db/core';
import t from 'tap';
import { activity, checkedOut, testDb } from '../fixtures/db.js';

t.test(
  'an exhausted pool fails after connectionTimeoutMillis with POOL_EXHAUSTED (503), and nothing leaks',
  async (t) => {
    const { db, appName } = testDb(t, { max: 2, connectionTimeoutMillis: 200 });
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const holders = [1, 2].map(() =>
      newNonCtxSession(db, async (s) => {
        await s.query('SELECT 1');
        await gate;
      }),
    );
    const ctx = new DbSessionCtx();
    const started = Date.now();
    const err = await ctx.run(async () => (await dbSession(db)).query('SELECT 1')).catch((e: unknown) => e);
    const waited = Date.now() - started;
    t.type(err, DatabaseUnavailableError);
    t.match(err, { code: 'POOL_EXHAUSTED', statusCode: 503, message: /all 2 are in use.*poolConfig.max/s });
    t.ok(waited >= 150, `waited for the acquire timeout (${waited} ms)`);
    await ctx.finish({ error: err });
    release();
    await Promise.all(holders);
    t.equal(checkedOut(db), 0);
    t.equal((await activity(appName)).idleInTransaction, 0);
  },
);

t.test('an unreachable server fails with DATABASE_UNREACHABLE (503)', async (t) => {
  const db = new DbConnect({ connectionString: 'postgres://postgres@127.0.0.1:1/postgres' });
  t.teardown(() => db.close());
  await t.rejects(
    newNonCtxSession(db, (s) => s.query('SELECT 1')),
    { code: 'DATABASE_UNREACHABLE', statusCode: 503, message: /cannot be reached.*ECONNREFUSED/ },
  );
});

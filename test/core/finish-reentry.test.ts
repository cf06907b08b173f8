// Context-level calls made from code the finish itself waits for (a beforeCommit): no hang, no refusal.
import { atomicDbSession, closeAllSessions, DbConnect, DbSessionCtx, dbSession } from '@context-db/core';
import t from 'tap';
import { admin, checkedOut, createTable, DATABASE_URL, testDb, texts, uniqueName } from '../fixtures/db.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const within = <T>(p: Promise<T>, ms: number) => Promise.race([p, sleep(ms).then(() => 'timeout' as const)]);

t.test('closeAllSessions() from a beforeCommit does not hang the finish', async (t) => {
  // Not testDb(): its teardown (pool.end) would wait forever for the connection the hang holds.
  const appName = uniqueName('cdb');
  const db = new DbConnect({ connectionString: DATABASE_URL, poolConfig: { application_name: appName } });
  t.teardown(() =>
    admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [appName]),
  );
  const ctx = new DbSessionCtx();
  await ctx.run(async () => (await dbSession(db)).query('SELECT 1'));
  const outcome = await within(
    ctx
      .run(() => ctx.finish({ beforeCommit: () => closeAllSessions() }))
      .then(
        () => 'settled',
        () => 'settled',
      ),
    2000,
  );
  t.equal(outcome, 'settled', 'finish settles (commits, or rejects with a clear error)');
});

t.test('an atomic block inside beforeCommit is not refused as nested', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('req')`));
  const outcome = await ctx
    .run(() =>
      ctx.finish({
        beforeCommit: () =>
          atomicDbSession(db, (s) => s.query(`INSERT INTO ${table} (text) VALUES ('audit')`), {
            currentTransaction: 'append',
          }).then(() => undefined),
      }),
    )
    .then(
      () => 'committed',
      (e: unknown) => e,
    );
  t.equal(outcome, 'committed');
  t.same(await texts(table), outcome === 'committed' ? ['req', 'audit'] : []);
  t.equal(checkedOut(db), 0);
});

// The testing helpers never make requests wait for each other where production would not deadlock.
import { DbConnect, dbSession, runInNewCtx } from '@context-db/core';
import { setTestContext } from '@context-db/core/testing';
import t from 'tap';
import { admin, createTable, DATABASE_URL, uniqueName } from '../fixtures/db.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  return Promise.race([p, sleep(ms).then(() => 'timeout' as const)]);
}

// Not testDb(): its teardown (pool.end) would wait forever for the connections a deadlock holds.
function unclosedDb(t: { teardown(fn: () => unknown): void }) {
  const appName = uniqueName('cdb');
  const db = new DbConnect({ connectionString: DATABASE_URL, poolConfig: { max: 4, application_name: appName } });
  t.teardown(() =>
    admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [appName]),
  );
  return { db, appName };
}

t.test('two concurrent requests touching two databases in opposite order do not deadlock in a test', async (t) => {
  const table = await createTable(t);
  const a = unclosedDb(t);
  const b = unclosedDb(t);
  const outcome = await within(
    setTestContext(async () => {
      const req = (first: typeof a.db, second: typeof a.db, text: string) =>
        runInNewCtx(async () => {
          await (await dbSession(first)).query(`INSERT INTO ${table} (text) VALUES ('${text}')`);
          await sleep(30);
          await (await dbSession(second)).query('SELECT 1');
        });
      await Promise.all([req(a.db, b.db, 'ab'), req(b.db, a.db, 'ba')]);
      return 'done';
    }),
    3000,
  );
  t.equal(outcome, 'done', 'both requests end (production: two connections each, no wait at all)');
});

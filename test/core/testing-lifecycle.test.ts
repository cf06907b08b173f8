// The testing helpers under interleavings production allows: several databases, autoClose: false,
// an abort while waiting for the turn.
import { dbSession, RequestCtx, runInNewCtx } from '@context-db/core';
import { setTestContext } from '@context-db/core/testing';
import t from 'tap';
import { createDeferredTable, createTable, testDb, texts } from '../fixtures/db.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  return Promise.race([p, sleep(ms).then(() => 'timeout' as const)]);
}

t.test('a request on two databases in a test leaves the test transaction in DEFERRED mode', async (t) => {
  const a = testDb(t);
  const b = testDb(t);
  const table = await createDeferredTable(t);
  let err: unknown;
  await setTestContext(async () => {
    await runInNewCtx(async () => {
      await (await dbSession(a.db)).query(`INSERT INTO ${table} (key) VALUES ('r')`);
      await (await dbSession(b.db)).query('SELECT 1');
    });
    // The test's own fixture work relies on the constraint being deferred until COMMIT.
    const s = await dbSession(a.db);
    err = await s
      .query(`INSERT INTO ${table} (key) VALUES ('dup')`)
      .then(() => s.query(`INSERT INTO ${table} (key) VALUES ('dup')`))
      .then(() => s.query(`DELETE FROM ${table} WHERE id = (SELECT max(id) FROM ${table})`))
      .then(
        () => undefined,
        (e: unknown) => e,
      );
  });
  t.equal(err, undefined, 'a deferred constraint is still deferred in the test transaction');
});

t.test(
  'setTestContext({ autoClose: false }): a job started in the test that runs after it cannot use it',
  async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    let late!: Promise<unknown>;
    let base!: Awaited<ReturnType<typeof dbSession>>;
    await setTestContext(
      async () => {
        base = await dbSession(db);
        await base.query('SELECT 1');
        late = sleep(30).then(() =>
          runInNewCtx(async () => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('late')`)).then(
            () => 'ran in the test transaction',
            (e: unknown) => e,
          ),
        );
      },
      { autoClose: false },
    );
    const result = await late;
    // The caller closes what it kept, committing its own work as it chooses.
    await base.commit().catch(() => {});
    await base.close();
    t.not(result, 'ran in the test transaction', 'the README: code that runs after the test cannot use it');
    t.same(await texts(table), [], 'the late job left nothing behind');
  },
);

t.test('a request finished (rolled back) by abort while its savepoint query waits for the Turn', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const outcome = await within(
    setTestContext(async () => {
      const first = runInNewCtx(async () => {
        await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('first')`);
        await sleep(50);
      });
      const rc = RequestCtx.open({ db });
      const waiting = rc
        .run(async () => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('aborted')`))
        .catch((e: unknown) => e);
      await sleep(10);
      rc.abort();
      await first;
      await waiting;
      const s = await dbSession(db);
      return (await s.query<{ text: string }>(`SELECT text FROM ${table} ORDER BY id`)).rows.map((r) => r.text);
    }),
    3000,
  );
  t.same(outcome, ['first'], 'the aborted request left nothing, the first request kept its row');
});

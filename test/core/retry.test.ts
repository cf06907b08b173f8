// Retries: a block that owns its transaction re-runs from the start when the transaction fails
// with a serialization failure (40001) or a deadlock (40P01), at a statement or at COMMIT; any
// other error, or the last failure, is rethrown unchanged.
import { atomicDbSession, type DbConnect, dbSession, newNonCtxAtomicSession, runInNewCtx } from '@context-db/core';
import t from 'tap';
import { admin, checkedOut, createTable, testDb } from '../fixtures/db.js';

/** Two counters whose sum must stay below 2: write skew that only SERIALIZABLE prevents. */
async function skewTable(t: Parameters<typeof createTable>[0]): Promise<string> {
  const table = await createTable(t, 'n int NOT NULL DEFAULT 0');
  await admin.query(`INSERT INTO ${table} (text, n) VALUES ('a', 0), ('b', 0)`);
  return table;
}

/**
 * Both transactions read the sum, wait until the other has read too, then each bumps its own row:
 * under SERIALIZABLE one of them must fail, at its UPDATE or at its COMMIT.
 */
function skewing(db: DbConnect, table: string) {
  let arrived = 0;
  let open!: () => void;
  const bothRead = new Promise<void>((resolve) => {
    open = resolve;
  });
  let runs = 0;
  const work = async (row: string) => {
    runs++;
    const session = await dbSession(db);
    const { rows } = await session.query<{ sum: number }>(`SELECT sum(n)::int AS sum FROM ${table}`);
    if (++arrived === 2) open();
    await Promise.race([bothRead, new Promise((resolve) => setTimeout(resolve, 500))]);
    if ((rows[0]?.sum ?? 0) < 1) await session.query(`UPDATE ${table} SET n = n + 1 WHERE text = $1`, [row]);
  };
  return { work, runs: () => runs };
}

async function sum(table: string): Promise<number> {
  return (await admin.query<{ sum: number }>(`SELECT sum(n)::int AS sum FROM ${table}`)).rows[0]?.sum ?? -1;
}

t.test('two conflicting serializable transactions with retry: 3 both commit, with a correct result', async (t) => {
  const { db } = testDb(t);
  const table = await skewTable(t);
  const { work, runs } = skewing(db, table);
  const options = { transaction: { isolationLevel: 'serializable' as const }, retry: 3 };
  const results = await Promise.allSettled([
    runInNewCtx(() => atomicDbSession(db, () => work('a'), options)),
    runInNewCtx(options, () => work('b')),
  ]);
  t.same(
    results.map((r) => r.status),
    ['fulfilled', 'fulfilled'],
  );
  t.equal(await sum(table), 1, 'only one of them bumped: the retried one saw the other commit');
  t.equal(runs(), 3, 'one transaction ran twice');
  t.equal(checkedOut(db), 0);
});

t.test('without retry one of them fails with 40001 and the other commits', async (t) => {
  const { db } = testDb(t);
  const table = await skewTable(t);
  const { work } = skewing(db, table);
  const options = { transaction: { isolationLevel: 'serializable' as const } };
  const results = await Promise.allSettled([
    runInNewCtx(options, () => work('a')),
    runInNewCtx(() => atomicDbSession(db, () => work('b'), options)),
  ]);
  const failed = results.filter((r) => r.status === 'rejected');
  t.equal(failed.length, 1);
  const reason = (failed[0] as PromiseRejectedResult).reason as { code?: string; cause?: { code?: string } };
  t.equal(reason.code === '40001' || reason.cause?.code === '40001', true, `40001, got ${String(reason)}`);
  t.equal(await sum(table), 1);
});

t.test('a deadlock between two runInNewCtx blocks with retry: both finish, data consistent', async (t) => {
  const { db } = testDb(t);
  const table = await skewTable(t);
  let arrived = 0;
  let open!: () => void;
  const bothLocked = new Promise<void>((resolve) => {
    open = resolve;
  });
  let runs = 0;
  const transfer = async (first: string, second: string) => {
    runs++;
    const session = await dbSession(db);
    await session.query(`UPDATE ${table} SET n = n + 1 WHERE text = $1`, [first]);
    if (++arrived === 2) open();
    await Promise.race([bothLocked, new Promise((resolve) => setTimeout(resolve, 500))]);
    await session.query(`UPDATE ${table} SET n = n + 1 WHERE text = $1`, [second]);
  };
  const results = await Promise.allSettled([
    runInNewCtx({ retry: { attempts: 3, minDelayMs: 5, maxDelayMs: 50 } }, transfer, 'a', 'b'),
    runInNewCtx({ retry: 3 }, transfer, 'b', 'a'),
  ]);
  t.same(
    results.map((r) => r.status),
    ['fulfilled', 'fulfilled'],
  );
  t.equal(runs, 3, 'the deadlock victim ran again');
  const { rows } = await admin.query<{ text: string; n: number }>(`SELECT text, n FROM ${table} ORDER BY text`);
  t.same(rows, [
    { text: 'a', n: 2 },
    { text: 'b', n: 2 },
  ]);
  t.equal(checkedOut(db), 0);
});

t.test('other errors are rethrown at once, unchanged; the last retryable failure too', async (t) => {
  const { db } = testDb(t);
  let runs = 0;
  const boom = new Error('not retryable');
  const err = await newNonCtxAtomicSession(
    db,
    async () => {
      runs++;
      throw boom;
    },
    { retry: 5 },
  ).catch((e: unknown) => e);
  t.equal(err, boom);
  t.equal(runs, 1);

  runs = 0;
  const serialization = Object.assign(new Error('could not serialize access'), { code: '40001' });
  const last = await newNonCtxAtomicSession(
    db,
    async (session) => {
      runs++;
      await session.query('SELECT 1');
      throw serialization;
    },
    { retry: { attempts: 3, minDelayMs: 1, maxDelayMs: 2 } },
  ).catch((e: unknown) => e);
  t.equal(last, serialization);
  t.equal(runs, 3);
  t.equal(checkedOut(db), 0);
});

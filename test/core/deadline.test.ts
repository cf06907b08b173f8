// Deadlines: DbSessionCtx.setDeadline(ms) and setDbDeadline(ms). When the time passes before the
// context finishes, the running statement is cancelled, the transaction rolled back, and the
// work, like any finish that meant to commit, fails with DeadlineExceededError (SQLSTATE 57014
// for the cancelled statement, status 503).
import {
  ContextNotInitiatedError,
  DbSessionCtx,
  DeadlineExceededError,
  dbSession,
  InvalidOptionsError,
  setDbDeadline,
  validateContextDbOptions,
} from '@context-db/core';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';

t.test('a deadline that passes cancels the running statement and rolls back', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  const started = performance.now();
  const work = ctx.run(async () => {
    setDbDeadline(200);
    const session = await dbSession(db);
    await session.query(`INSERT INTO ${table} (text) VALUES ('late')`);
    await session.query('SELECT pg_sleep(3)');
  });
  const err = await work.then(
    () => undefined,
    (e: unknown) => e,
  );
  t.comment(`pg_sleep(3) under a 200 ms deadline failed after ${(performance.now() - started).toFixed(0)} ms`);
  t.type(err, DeadlineExceededError);
  t.match(err, { code: 'DEADLINE_EXCEEDED', sqlState: '57014', statusCode: 503, deadlineMs: 200 });
  t.match((err as Error).message, /deadline of 200 ms.*cancelled \(SQLSTATE 57014\).*rolled back/);
  await t.rejects(
    ctx.finish({ statusCode: 200 }),
    err as Error,
    'a finish meaning to commit fails with it: never a success',
  );
  t.same(await texts(table), []);
  t.ok(await eventually(() => checkedOut(db) === 0, 1000));
  t.same(await activity(appName), { total: 1, idleInTransaction: 0, active: 0 });
});

t.test('a deadline passing between statements rolls back at once; later work fails with it', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  let resume = (): void => {};
  const parked = new Promise<void>((resolve) => {
    resume = resolve;
  });
  let inserted = false;
  const work = ctx.run(async () => {
    ctx.setDeadline(100);
    const session = await dbSession(db);
    await session.query(`INSERT INTO ${table} (text) VALUES ('before')`);
    inserted = true;
    await parked; // an upstream call, say, that outlives the deadline
    return session.query(`INSERT INTO ${table} (text) VALUES ('after')`);
  });
  work.catch(() => {});
  t.ok(await eventually(() => inserted && checkedOut(db) === 1), 'the handler holds its transaction, then waits');
  t.ok(
    await eventually(async () => checkedOut(db) === 0 && (await activity(appName)).idleInTransaction === 0, 2000),
    'the transaction is rolled back and the connection released while the handler still waits',
  );
  resume();
  await t.rejects(work, DeadlineExceededError, "the handler's next query fails with the deadline");
  await t.rejects(ctx.finish(), DeadlineExceededError);
  t.same(await texts(table), []);
});

t.test('a deadline that does not pass changes nothing, and the finish clears it', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    ctx.setDeadline(150);
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('in time')`);
  });
  await ctx.finish({ statusCode: 200 });
  await new Promise((resolve) => setTimeout(resolve, 250));
  t.same(await texts(table), ['in time']);
  t.equal(checkedOut(db), 0);
});

t.test('a second setDeadline replaces the first', async (t) => {
  const { db } = testDb(t);
  const ctx = new DbSessionCtx();
  const work = ctx.run(async () => {
    setDbDeadline(50);
    setDbDeadline(5000);
    await (await dbSession(db)).query('SELECT pg_sleep(0.2)');
  });
  await t.resolves(work, 'the 50 ms deadline no longer applies');
  await ctx.finish();
});

t.test('bad deadlines and a call outside a context are refused clearly', async (t) => {
  t.throws(() => setDbDeadline(100), ContextNotInitiatedError);
  const ctx = new DbSessionCtx();
  for (const bad of [0, -1, Number.NaN, Number.POSITIVE_INFINITY, '100' as unknown as number]) {
    t.throws(() => ctx.setDeadline(bad), InvalidOptionsError, `refuses ${String(bad)}`);
    t.throws(
      () => validateContextDbOptions({ deadline: bad }, 'contextDb()'),
      {
        code: 'INVALID_OPTIONS',
        message: /contextDb\(\): options\.deadline must be a positive number of milliseconds/,
      },
      `an adapter refuses deadline: ${String(bad)} at setup`,
    );
  }
});

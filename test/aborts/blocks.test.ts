// An abort that comes while an atomic block runs: a nested block (a SAVEPOINT) running a long
// statement, and a retried block. The statement is cancelled, nothing of the request commits
// (the work before the block included), the block is not retried, and the connection is back.
import { atomicDbSession, DbSessionCtx, dbSession, SessionClosedError } from '@context-db/core';
import t from 'tap';
import { createCounter, sleeping } from '../fixtures/cancel.js';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';

t.test('an abort during a nested block cancels its statement and rolls back the whole request', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  const work = ctx.run(async () => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('before')`);
    return atomicDbSession(
      db,
      async (session) => {
        await session.query(`INSERT INTO ${table} (text) VALUES ('nested')`);
        await session.query('SELECT pg_sleep(3)');
      },
      { currentTransaction: 'nested' },
    );
  });
  work.catch(() => {});
  t.ok(await eventually(async () => (await sleeping(appName)) === 1), 'the nested statement runs');
  const reason = new SessionClosedError('client gone');
  const since = performance.now();
  await ctx.abort(reason);
  t.ok(performance.now() - since < 1000, 'abort() did not wait for pg_sleep(3)');
  await t.rejects(work, reason, 'the block rejects with the abort reason');
  t.equal(checkedOut(db), 0, 'the connection is back');
  t.same(await texts(table), [], 'neither the nested write nor the one before it committed');
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('an abort during a retried block is not retried', async (t) => {
  const { db, appName } = testDb(t);
  const counter = await createCounter(t);
  const ctx = new DbSessionCtx();
  const work = ctx.run(() =>
    atomicDbSession(
      db,
      async (session) => {
        await session.query(`SELECT nextval('${counter.name}')`);
        await session.query('SELECT pg_sleep(3)');
      },
      { transaction: { isolationLevel: 'serializable' }, retry: 5 },
    ),
  );
  work.catch(() => {});
  t.ok(await eventually(async () => (await sleeping(appName)) === 1), 'the block runs');
  const reason = new SessionClosedError('client gone');
  await ctx.abort(reason);
  await t.rejects(work, reason);
  // Give a wrongly scheduled retry time to start.
  await new Promise((resolve) => setTimeout(resolve, 300));
  t.equal(await counter.ran(), 1, 'the block ran once: an abort is not a serialization failure');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

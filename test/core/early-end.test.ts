import {
  closeDbSession,
  commitDbSession,
  DbSessionCtx,
  dbSession,
  rollbackDbSession,
  SessionClosedError,
} from '@context-db/core';
import t from 'tap';
import { activity, checkedOut, createTable, testDb, texts } from '../fixtures/db.js';

const pidAndXid = 'SELECT pg_backend_pid() AS pid, txid_current()::text AS xid';
type PidXid = { pid: number; xid: string };

t.test('commitDbSession early: both parts land, the second in a new transaction on the same connection', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    const session = await dbSession(db);
    await session.query(`INSERT INTO ${table} (text) VALUES ('first')`);
    const before = (await session.query<PidXid>(pidAndXid)).rows[0];
    await commitDbSession(db);
    t.notOk(session.inTransaction);
    t.same(await texts(table), ['first'], 'visible from outside after the early commit');
    await session.query(`INSERT INTO ${table} (text) VALUES ('second')`);
    const after = (await session.query<PidXid>(pidAndXid)).rows[0];
    t.equal(after?.pid, before?.pid, 'same connection');
    t.not(after?.xid, before?.xid, 'new transaction');
  });
  await ctx.finish({ statusCode: 500 });
  t.same(await texts(table), ['first'], 'the second part is rolled back with the request; the first stays');
});

t.test('rollbackDbSession early undoes only what came before it', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    const session = await dbSession(db);
    await session.query(`INSERT INTO ${table} (text) VALUES ('undone')`);
    await rollbackDbSession(db);
    await session.query(`INSERT INTO ${table} (text) VALUES ('kept')`);
  });
  await ctx.finish();
  t.same(await texts(table), ['kept']);
});

t.test('closeDbSession releases the connection and the next dbSession is a new session', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    const first = await dbSession(db);
    await first.query(`INSERT INTO ${table} (text) VALUES ('uncommitted')`);
    await closeDbSession(db);
    t.equal(checkedOut(db), 0, 'released');
    t.equal((await activity(appName)).idleInTransaction, 0, 'rolled back');
    t.ok(first.closed);
    await t.rejects(first.query('SELECT 1'), SessionClosedError, 'the closed session refuses work');
    const second = await dbSession(db);
    t.not(second, first);
    await second.query(`INSERT INTO ${table} (text) VALUES ('new session')`);
  });
  await ctx.finish();
  t.same(await texts(table), ['new session']);
});

t.test('commit/rollback/close helpers do nothing when the context has no session', async (t) => {
  const { db } = testDb(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    await commitDbSession(db);
    await rollbackDbSession(db);
    await closeDbSession(db);
  });
  await ctx.finish();
  t.equal(db.pool().totalCount, 0);
});

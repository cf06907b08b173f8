// Transaction control (issue #12), from its review; every failure described here failed before its fix: when the connection is lost between a nested block's last statement and
// its RELEASE, endSavepoint puts the block's levels back ("the transaction is gone with them")
// and leaves #inTransaction set. From then on the session believes it is still inside a nested
// block: rollback() (documented to "not reject ... for a lost connection", the next query taking
// a fresh connection) and commit() are refused with NestedAtomicBlockError, so a request that
// catches the failure cannot recover its session.
import { atomicDbSession, commitDbSession, DbSessionCtx, dbSession, rollbackDbSession } from '@context-db/core';
import t from 'tap';
import { admin, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';

t.test('after a connection lost at RELEASE, rollbackDbSession recovers the session', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const insert = async (text: string) => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
  const ctx = new DbSessionCtx();
  const steps = await ctx.run(async () => {
    await insert('lost with the connection');
    const blockError = await atomicDbSession(
      db,
      async (session) => {
        const { rows } = await session.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
        const pid = rows[0]?.pid;
        // The server goes away after the block's last statement, before its RELEASE.
        await admin.query('SELECT pg_terminate_backend($1)', [pid]);
        await eventually(async () => {
          const { rowCount } = await admin.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [pid]);
          return rowCount === 0;
        });
      },
      { currentTransaction: 'nested' },
    ).then(
      () => undefined,
      (err: unknown) => err,
    );
    const rollback = await rollbackDbSession(db).then(
      () => 'resolved',
      (err: unknown) => `${(err as Error).name}: ${(err as Error).message}`,
    );
    const retry = await insert('after recovery').then(
      () => 'resolved',
      (err: unknown) => `${(err as Error).name}: ${(err as Error).message}`,
    );
    const commit = await commitDbSession(db).then(
      () => 'resolved',
      (err: unknown) => `${(err as Error).name}: ${(err as Error).message}`,
    );
    return { blockError, rollback, retry, commit };
  });
  await ctx.finish({ error: new Error('end') });
  t.ok(steps.blockError, 'the block reports the lost connection');
  t.equal(steps.rollback, 'resolved', 'rollbackDbSession does not reject for a lost connection');
  t.equal(steps.retry, 'resolved', 'the next query takes a fresh connection');
  t.equal(steps.commit, 'resolved', 'and commits');
  t.same(await texts(table), steps.commit === 'resolved' ? ['after recovery'] : []);
  t.equal(checkedOut(db), 0);
});

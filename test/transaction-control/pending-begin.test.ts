// Transaction control (issue #12), from its review; every failure described here failed before its fix: an atomic block decided whether a transaction is open from
// session.inTransaction, which turns true only once BEGIN has answered. A sibling's query already
// queued (its BEGIN in flight, or waiting for a pool connection) was therefore not seen: the
// block's options were applied to the sibling's BEGIN, and a 'nested' block became the owner of
// the sibling's transaction and rolled the sibling's work back with its own. Failed at 41321b0;
// passes since ae6d9f9 ("an atomic block decides on the open transaction after the work queued
// before it"), kept as a regression test. ('raise' missed it before issue #12 too.)
import { atomicDbSession, commitDbSession, type DbConnect, DbSessionCtx, dbSession } from '@context-db/core';
import t from 'tap';
import { checkedOut, createTable, testDb, texts } from '../fixtures/db.js';

const nested = { currentTransaction: 'nested' } as const;

/** A sibling's INSERT not awaited, and beside it a nested block that inserts and throws. */
function siblingAndFailingBlock(db: DbConnect, insert: (text: string) => Promise<unknown>) {
  return Promise.allSettled([
    insert('sibling'),
    atomicDbSession(
      db,
      async () => {
        await insert('inner');
        throw new Error('inner failed');
      },
      nested,
    ),
  ]);
}

t.test("a nested block that throws does not roll back a concurrent sibling's write", async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const insert = async (text: string) => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
  const ctx = new DbSessionCtx();
  const results = await ctx.run(() => siblingAndFailingBlock(db, insert));
  t.equal(results[0]?.status, 'fulfilled', "the sibling's INSERT succeeded");
  t.equal(results[1]?.status, 'rejected', 'the nested block failed');
  await ctx.finish();
  t.same(await texts(table), ['sibling'], "the sibling's write commits with the request; only the block's is gone");
  t.equal(checkedOut(db), 0);
});

t.test('the same, after an early commit (the connection is held, BEGIN is a round trip away)', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const insert = async (text: string) => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    await insert('first');
    await commitDbSession(db);
    await siblingAndFailingBlock(db, insert);
  });
  await ctx.finish();
  t.same(await texts(table), ['first', 'sibling']);
});

t.test("an atomic block's options do not apply to a sibling's query queued before it", async (t) => {
  const { db } = testDb(t);
  const ctx = new DbSessionCtx();
  const [sibling, block] = await ctx.run(async () => {
    const session = await dbSession(db);
    const read = () =>
      session.query<{ level: string; ro: string }>(
        "SELECT current_setting('transaction_isolation') AS level, current_setting('transaction_read_only') AS ro",
      );
    return Promise.all([
      read(),
      atomicDbSession(db, () => read(), { transaction: { isolationLevel: 'serializable', readOnly: true } }),
    ]);
  });
  await ctx.finish();
  t.same(block.rows[0], { level: 'serializable', ro: 'on' }, 'the block has its options');
  t.same(sibling.rows[0], { level: 'read committed', ro: 'off' }, "the sibling's query keeps the session's own");
});

t.test("a sibling's INSERT queued before a read-only block is not run read-only", async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const insert = async (text: string) => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
  const ctx = new DbSessionCtx();
  const [audit] = await ctx.run(() =>
    Promise.allSettled([
      insert('audit'),
      atomicDbSession(db, async (session) => session.query('SELECT 1'), { transaction: { readOnly: true } }),
    ]),
  );
  await ctx.finish();
  t.equal(audit?.status, 'fulfilled', 'the audit INSERT does not fail with 25006');
  t.same(await texts(table), ['audit']);
});

t.test("currentTransaction 'raise' sees a transaction whose BEGIN is under way", async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const insert = async (text: string) => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
  const ctx = new DbSessionCtx();
  const [, block] = await ctx.run(() =>
    Promise.allSettled([
      insert('sibling'),
      atomicDbSession(db, () => insert('block'), { currentTransaction: 'raise' }),
    ]),
  );
  await ctx.rollbackAll().catch(() => {});
  await ctx.finish({ error: new Error('done') });
  t.equal(block?.status, 'rejected', "'raise' refuses: the sibling's transaction is (about to be) open");
});

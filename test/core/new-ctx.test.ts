import {
  closeDbSession,
  commitDbSession,
  DbSessionCtx,
  dbSession,
  newNonCtxAtomicSession,
  newNonCtxSession,
  runInNewCtx,
} from '@context-db/core';
import t from 'tap';
import { admin, checkedOut, createTable, testDb, texts } from '../fixtures/db.js';

t.test('runInNewCtx commits its work even when the outer context rolls back, and vice versa', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const insert = async (text: string) => {
    const session = await dbSession(db);
    await session.query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
    return (await session.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]?.pid;
  };
  const outer = new DbSessionCtx();
  await outer.run(async () => {
    const outerPid = await insert('outer rolled back');
    const innerPid = await runInNewCtx(insert, 'inner committed');
    t.not(innerPid, outerPid, 'its own connection');
    t.same(await texts(table), ['inner committed'], 'committed when fn returned');
  });
  await outer.finish({ statusCode: 500 });

  const outer2 = new DbSessionCtx();
  await outer2.run(async () => {
    await insert('outer committed');
    await t.rejects(
      runInNewCtx(async () => {
        await insert('inner rolled back');
        throw new Error('inner failed');
      }),
      { message: 'inner failed' },
    );
  });
  await outer2.finish();
  t.same(await texts(table), ['inner committed', 'outer committed']);
  t.equal(checkedOut(db), 0);
});

t.test(
  "the seed's concurrent example: five inserts at once on five connections, the failing one rolled back",
  async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t, 'pid int NOT NULL DEFAULT pg_backend_pid()');
    const insert = async (text = 'x') => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
    const ctx = new DbSessionCtx();
    const results = await ctx.run(() =>
      Promise.allSettled([
        insert('context'),
        runInNewCtx(insert, 'new ctx'),
        runInNewCtx(async (text: string) => {
          await insert(text);
          await commitDbSession(db);
          await closeDbSession(db);
        }, 'new ctx manual'),
        newNonCtxAtomicSession(db, (s) => s.query(`INSERT INTO ${table} (text) VALUES ('non ctx atomic')`)),
        newNonCtxSession(db, async (s) => {
          await s.query(`INSERT INTO ${table} (text) VALUES ('non ctx manual')`);
          await s.commit();
        }),
        runInNewCtx(async () => {
          await insert('with exception');
          throw new Error('rolled back');
        }),
      ]),
    );
    await ctx.finish();
    t.same(
      results.map((r) => r.status),
      ['fulfilled', 'fulfilled', 'fulfilled', 'fulfilled', 'fulfilled', 'rejected'],
    );
    const { rows } = await admin.query<{ text: string; pid: number }>(`SELECT text, pid FROM ${table} ORDER BY text`);
    t.same(
      rows.map((r) => r.text),
      ['context', 'new ctx', 'new ctx manual', 'non ctx atomic', 'non ctx manual'],
    );
    t.equal(new Set(rows.map((r) => r.pid)).size, 5, 'five different backends');
    t.equal(checkedOut(db), 0);
  },
);

t.test('newNonCtxSession rolls back what fn did not commit and always releases', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  await newNonCtxSession(db, async (s) => {
    await s.query(`INSERT INTO ${table} (text) VALUES ('committed')`);
    await s.commit();
    await s.query(`INSERT INTO ${table} (text) VALUES ('left open')`);
  });
  await t.rejects(
    newNonCtxSession(db, async (s) => {
      await s.query(`INSERT INTO ${table} (text) VALUES ('thrown')`);
      throw new Error('fn failed');
    }),
    { message: 'fn failed' },
  );
  t.same(await texts(table), ['committed']);
  t.equal(checkedOut(db), 0);
});

t.test('newNonCtxAtomicSession commits on return and rolls back on throw, always releasing', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const id = await newNonCtxAtomicSession(
    db,
    async (s) =>
      (await s.query<{ id: number }>(`INSERT INTO ${table} (text) VALUES ('kept') RETURNING id`)).rows[0]?.id,
  );
  t.equal(id, 1, 'returns what fn returns');
  await t.rejects(
    newNonCtxAtomicSession(db, async (s) => {
      await s.query(`INSERT INTO ${table} (text) VALUES ('dropped')`);
      throw new Error('nope');
    }),
  );
  t.same(await texts(table), ['kept']);
  t.equal(checkedOut(db), 0);
});

import { atomicDbSession, DbSessionCtx, dbSession, TransactionAlreadyOpenError } from '@context-db/core';
import t, { type Test } from 'tap';
import { checkedOut, createTable, testDb, texts } from '../fixtures/db.js';

async function scenario(
  t: Test,
  mode: 'commit' | 'rollback' | 'append' | 'raise',
  { atomicThrows = false, requestStatus = 500 } = {},
) {
  const { db } = testDb(t);
  const table = await createTable(t);
  const insert = async (text: string) => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
  const ctx = new DbSessionCtx();
  const outcome = await ctx.run(async () => {
    await insert('before');
    return atomicDbSession(
      db,
      async () => {
        await insert('atomic');
        if (atomicThrows) throw new Error('atomic failed');
        return 'result';
      },
      { currentTransaction: mode },
    ).catch((err: unknown) => err);
  });
  // The request itself fails, so only what atomicDbSession committed survives.
  await ctx.finish({ statusCode: requestStatus });
  t.equal(checkedOut(db), 0);
  return { outcome, rows: await texts(table) };
}

t.test("'commit' (default) commits the open transaction, then runs fn in its own", async (t) => {
  t.same(await scenario(t, 'commit'), { outcome: 'result', rows: ['before', 'atomic'] });
  t.same(await scenario(t, 'commit', { atomicThrows: true }), {
    outcome: new Error('atomic failed'),
    rows: ['before'],
  });
});

t.test("'rollback' rolls back the open transaction, then runs fn in its own", async (t) => {
  t.same(await scenario(t, 'rollback'), { outcome: 'result', rows: ['atomic'] });
});

t.test("'append' joins the open transaction and commits both at the end", async (t) => {
  t.same(await scenario(t, 'append'), { outcome: 'result', rows: ['before', 'atomic'] });
  t.same(await scenario(t, 'append', { atomicThrows: true }), {
    outcome: new Error('atomic failed'),
    rows: [],
  });
});

t.test("'raise' throws TransactionAlreadyOpenError and leaves the open transaction to the request", async (t) => {
  const { outcome, rows } = await scenario(t, 'raise', { requestStatus: 200 });
  t.type(outcome, TransactionAlreadyOpenError);
  t.same(rows, ['before']);
});

t.test('atomicDbSession with no transaction open runs fn in one, in every mode', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    for (const mode of ['commit', 'rollback', 'append', 'raise'] as const) {
      await atomicDbSession(db, (s) => s.query(`INSERT INTO ${table} (text) VALUES ($1)`, [mode]), {
        currentTransaction: mode,
      });
    }
  });
  await ctx.finish({ statusCode: 500 });
  t.same(await texts(table), ['commit', 'rollback', 'append', 'raise']);
});

t.test('a wrong mode is a clear error', async (t) => {
  const { db } = testDb(t);
  const ctx = new DbSessionCtx();
  await ctx.run(() =>
    t.rejects(
      atomicDbSession(db, () => 1, { currentTransaction: 'later' as 'commit' }),
      /currentTransaction must be one of commit, rollback, append, raise/,
    ),
  );
  await ctx.finish();
});

t.test('an atomic block cannot run inside another on the same session', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  await ctx.run(() =>
    atomicDbSession(db, async (session) => {
      await session.query(`INSERT INTO ${table} (text) VALUES ('outer')`);
      await t.rejects(
        atomicDbSession(db, (inner) => inner.query('SELECT 1')),
        { code: 'NESTED_ATOMIC_BLOCK', message: /runInNewCtx/ },
        "committing there would save half of the outer block's work",
      );
    }),
  );
  await ctx.finish({ statusCode: 500 });
  t.same(await texts(table), ['outer'], 'the outer block committed its own work, once');
});

t.test('a block waits for the one running on its session; other work on the session waits too', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  const order: string[] = [];
  await ctx.run(async () => {
    let release!: () => void;
    const parked = new Promise<void>((resolve) => {
      release = resolve;
    });
    const first = atomicDbSession(db, async (s) => {
      await s.query(`INSERT INTO ${table} (text) VALUES ('first')`);
      await parked;
      order.push('first ends');
      throw new Error('first fails');
    });
    const second = atomicDbSession(
      db,
      async (s) => {
        order.push('second starts');
        await s.query(`INSERT INTO ${table} (text) VALUES ('second')`);
      },
      { currentTransaction: 'raise' },
    );
    const outside = (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('outside')`).then(() => {
      order.push('outside ran');
    });
    setTimeout(release, 30);
    await t.rejects(first, /first fails/);
    await second;
    await outside;
  });
  await ctx.finish({ statusCode: 200 });
  t.same(order.slice(0, 1), ['first ends'], 'nothing ran on the session before the first block ended');
  t.same((await texts(table)).sort(), ['outside', 'second'], "the first block's rollback undid its own row only");
});

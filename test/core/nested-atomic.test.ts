// Nested atomic blocks: currentTransaction 'nested' runs its block in a SAVEPOINT of the open
// transaction, rolled back alone when it throws and released when it returns, to any depth; with
// no transaction open it is a transaction of its own. Inside it, commit() and rollback() (which
// would end the enclosing transaction) are refused, and work from outside the block waits for it.
import {
  atomicDbSession,
  CommitFailedError,
  DbSessionCtx,
  dbSession,
  NestedAtomicBlockError,
  runInNewCtx,
} from '@context-db/core';
import t from 'tap';
import { checkedOut, createTable, testDb, texts } from '../fixtures/db.js';

const nested = { currentTransaction: 'nested' } as const;

t.test('a nested block that throws rolls back only its own work; the request goes on', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const insert = async (text: string) => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    await insert('before');
    const pid = (await (await dbSession(db)).query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]?.pid;
    const err = await atomicDbSession(
      db,
      async (session) => {
        await insert('inner');
        const inner = (await session.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]?.pid;
        t.equal(inner, pid, 'the savepoint is on the request connection');
        throw new Error('inner failed');
      },
      nested,
    ).catch((e: unknown) => e);
    t.match(err, { message: 'inner failed' });
    t.equal((await dbSession(db)).inTransaction, true, 'the request transaction is still open');
    await atomicDbSession(db, () => insert('kept'), nested);
    await insert('after');
  });
  await ctx.finish();
  t.same(await texts(table), ['before', 'kept', 'after']);
  t.equal(checkedOut(db), 0);
});

t.test('three levels deep: each level rolls back alone; a released level goes with its parent', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const insert = async (text: string) => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    await insert('l0');
    await atomicDbSession(
      db,
      async () => {
        await insert('l1');
        await atomicDbSession(
          db,
          async () => {
            await insert('l2');
            await atomicDbSession(
              db,
              async () => {
                await insert('l3 dropped');
                throw new Error('l3');
              },
              nested,
            ).catch(() => {});
            await insert('l2 after');
          },
          nested,
        );
        // Level 2 was released into level 1; now level 1's sibling fails after inner success.
        await atomicDbSession(
          db,
          async () => {
            await atomicDbSession(db, () => insert('l2b released, then its parent fails'), nested);
            throw new Error('l2b');
          },
          nested,
        ).catch(() => {});
      },
      nested,
    );
  });
  await ctx.finish();
  t.same(await texts(table), ['l0', 'l1', 'l2', 'l2 after']);
});

t.test('with no transaction open, a nested block is a transaction of its own', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    await atomicDbSession(db, (s) => s.query(`INSERT INTO ${table} (text) VALUES ('own')`), nested);
    t.equal((await dbSession(db)).inTransaction, false, 'committed at the end of the block');
  });
  // The request fails, yet the block had committed on its own.
  await ctx.finish({ statusCode: 500 });
  t.same(await texts(table), ['own']);
});

t.test('a nested block inside an atomic block is a savepoint of that block, even before its first query', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const insert = async (text: string) => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
  await runInNewCtx(async () => {
    await atomicDbSession(db, async () => {
      // The outer block has not queried yet: the inner one must still nest, not commit alone.
      await atomicDbSession(db, () => insert('inner'), nested);
      throw new Error('outer fails');
    }).catch(() => {});
  });
  t.same(await texts(table), []);
});

t.test('commit() and rollback() inside a nested block are refused; other blocks still cannot nest', async (t) => {
  const { db } = testDb(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    await (await dbSession(db)).query('SELECT 1');
    await atomicDbSession(
      db,
      async (session) => {
        await t.rejects(session.commit(), NestedAtomicBlockError);
        await t.rejects(session.rollback(), NestedAtomicBlockError);
        await t.rejects(
          atomicDbSession(db, async () => 1),
          NestedAtomicBlockError,
        );
        await t.rejects(
          atomicDbSession(db, async () => 1, { currentTransaction: 'append' }),
          NestedAtomicBlockError,
        );
      },
      nested,
    );
  });
  await ctx.finish();
  t.equal(checkedOut(db), 0);
});

t.test('work from beside a nested block waits for it and is not rolled back with it', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    const session = await dbSession(db);
    await session.query('SELECT 1');
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const block = atomicDbSession(
      db,
      async (s) => {
        await s.query(`INSERT INTO ${table} (text) VALUES ('block')`);
        await gate;
        throw new Error('block fails');
      },
      nested,
    ).catch(() => 'failed');
    // Beside the block, in the same request: must not land inside its savepoint.
    const beside = session.query(`INSERT INTO ${table} (text) VALUES ('beside')`);
    release();
    t.equal(await block, 'failed');
    await beside;
  });
  await ctx.finish();
  t.same(await texts(table), ['beside']);
});

t.test(
  'a nested block that swallowed a failed statement cannot be kept: CommitFailedError, outer goes on',
  async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    const ctx = new DbSessionCtx();
    await ctx.run(async () => {
      await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('outer')`);
      const err = await atomicDbSession(
        db,
        async (s) => {
          await s.query(`INSERT INTO ${table} (text) VALUES ('inner')`);
          await s.query('SELECT 1/0').catch(() => {}); // swallowed: the transaction is aborted
        },
        nested,
      ).catch((e: unknown) => e);
      t.type(err, CommitFailedError);
      await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('after')`);
    });
    await ctx.finish();
    t.same(await texts(table), ['outer', 'after']);
  },
);

t.test('a request failing after a released nested block rolls it back too', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    await (await dbSession(db)).query('SELECT 1');
    await atomicDbSession(db, (s) => s.query(`INSERT INTO ${table} (text) VALUES ('inner')`), nested);
  });
  await ctx.finish({ statusCode: 422 });
  t.same(await texts(table), []);
  t.equal(checkedOut(db), 0);
});

t.test(
  'a query sent just before a nested block (not awaited) is in the open transaction, not committed by the block',
  async (t) => {
    // Found by the model test: the block saw no transaction open (the query's BEGIN was still
    // queued), ran as a transaction of its own, and its COMMIT saved the query of a request that
    // then failed.
    const { db } = testDb(t);
    const table = await createTable(t);
    const ctx = new DbSessionCtx();
    await ctx.run(async () => {
      const session = await dbSession(db);
      const sent = session.query(`INSERT INTO ${table} (text) VALUES ('request')`);
      await atomicDbSession(db, async () => {}, nested);
      await sent;
    });
    await ctx.finish({ statusCode: 500 });
    t.same(await texts(table), []);
  },
);

// Transaction control (issue #12), from its review; every failure described here failed before its fix hooks: registration order across a nested block's release, the session a
// hook lands on when registered inside newNonCtxAtomicSession, and rollbackAllSessions inside a
// nested block.
import {
  atomicDbSession,
  DbSessionCtx,
  dbSession,
  newNonCtxAtomicSession,
  onCommit,
  rollbackAllSessions,
} from '@context-db/core';
import t from 'tap';
import { createTable, testDb, texts } from '../fixtures/db.js';

const nested = { currentTransaction: 'nested' } as const;

t.test('onCommit hooks run in registration order, also when a sibling registers during a nested block', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const insert = async (text: string) => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
  const ran: string[] = [];
  const hook = (name: string) => () => void ran.push(name);
  let registeredB!: () => void;
  const bRegistered = new Promise<void>((resolve) => {
    registeredB = resolve;
  });
  let registeredC!: () => void;
  const cRegistered = new Promise<void>((resolve) => {
    registeredC = resolve;
  });
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    await insert('a');
    await onCommit(db, hook('A'));
    await Promise.all([
      atomicDbSession(
        db,
        async () => {
          await insert('b');
          await onCommit(db, hook('B'));
          registeredB();
          await cRegistered; // C is registered (after B) while this savepoint is open
        },
        nested,
      ),
      (async () => {
        await bRegistered;
        await onCommit(db, hook('C'));
        registeredC();
      })(),
    ]);
  });
  await ctx.finish();
  t.same(await texts(table), ['a', 'b']);
  t.same(ran, ['A', 'B', 'C'], 'registration order: A, then B (in the block), then C');
});

t.test('onCommit registered inside newNonCtxAtomicSession does not fire when that session rolled back', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const published: string[] = [];
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('request')`);
    await newNonCtxAtomicSession(db, async (session) => {
      await session.query(`INSERT INTO ${table} (text) VALUES ('job')`);
      // The natural call in code that "is in a transaction": it lands on the request's session.
      await onCommit(db, () => void published.push('job created'));
      throw new Error('job failed');
    }).catch(() => {});
  });
  await ctx.finish();
  t.same(await texts(table), ['request'], 'the job row was rolled back');
  t.same(published, [], "no 'job created' event for a job that was never committed");
});

t.test(
  'rollbackAllSessions() inside a nested block is refused like rollback(), and the block rolls back alone',
  async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    const ctx = new DbSessionCtx();
    const outcome = await ctx.run(async () => {
      await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('x')`);
      return atomicDbSession(db, () => rollbackAllSessions().then(() => 'resolved'), nested).catch(
        (err: Error) => `${err.name}: ${err.message}`,
      );
    });
    await ctx.finish();
    t.match(outcome, /^NestedAtomicBlockError: rollback\(\) was called inside a nested atomic block/);
    t.same(await texts(table), ['x'], "the block's refusal rolled back the block, not the request");
  },
);

// Counterexamples found by the model-based interleaving test (test/core/model.test.ts), each
// turned into a plain scenario. The comment above each test gives the shortest sequence fast-check
// shrank it to ("&" = not awaited before the next step).
import { setTimeout as sleep } from 'node:timers/promises';
import {
  atomicDbSession,
  commitDbSession,
  type DbSession,
  DbSessionCtx,
  dbSession,
  rollbackDbSession,
} from '@context-db/core';
import t, { type Test } from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';

/** A promise and the function that resolves it, to park a block until the test says so. */
function gate(): { opened: Promise<void>; open(): void } {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { opened, open };
}

async function setup(t: Test) {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const insert = (session: DbSession, text: string) => session.query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
  const settledClean = async () => {
    t.ok(await eventually(() => checkedOut(db) === 0), 'no connection left checked out');
    t.equal((await activity(appName)).idleInTransaction, 0, 'no session idle in transaction');
  };
  return { db, table, insert, settledClean };
}

// c0: atomic(commit, 1 insert, throws) &; end(200) &
t.test('an atomic block that throws after its context began finishing leaves none of its rows', async (t) => {
  const { db, table, insert, settledClean } = await setup(t);
  const ctx = new DbSessionCtx();
  const inserted = gate();
  const park = gate();
  const block = ctx.run(() =>
    atomicDbSession(db, async (session) => {
      await insert(session, 'block');
      inserted.open();
      await park.opened;
      throw new Error('the block fails');
    }),
  );
  await inserted.opened;
  const finishing = ctx.finish({ statusCode: 200 });
  park.open();
  const outcome = await block.then(
    () => 'resolved',
    (err: Error) => err.message,
  );
  await finishing.catch(() => {});
  t.equal(outcome, 'the block fails', 'the block reports its own failure');
  t.same(await texts(table), [], 'so its row is not committed');
  await settledClean();
});

// c0: atomic(commit, 1 insert) &; end(200) &
t.test(
  'an atomic block whose COMMIT comes after its context began finishing: its answer agrees with the table',
  async (t) => {
    const { db, table, insert, settledClean } = await setup(t);
    const ctx = new DbSessionCtx();
    const inserted = gate();
    const park = gate();
    const block = ctx.run(() =>
      atomicDbSession(db, async (session) => {
        await insert(session, 'block');
        inserted.open();
        await park.opened;
      }),
    );
    await inserted.opened;
    const finishing = ctx.finish({ statusCode: 200 });
    park.open();
    const outcome = await block.then(
      () => 'resolved',
      (err: { code?: string }) => err.code ?? String(err),
    );
    await finishing.catch(() => {});
    const rows = await texts(table);
    t.equal(
      rows.includes('block'),
      outcome === 'resolved',
      `the block ${outcome === 'resolved' ? 'resolved' : `rejected (${outcome})`}; its row is ${rows.includes('block') ? 'committed' : 'absent'}`,
    );
    await settledClean();
  },
);

// c0: atomic(commit, 1 insert, throws) &; commit; end(200) &
t.test("commitDbSession while an atomic block runs does not commit the block's half-done work", async (t) => {
  const { db, table, insert, settledClean } = await setup(t);
  const ctx = new DbSessionCtx();
  const inserted = gate();
  const park = gate();
  const block = ctx.run(() =>
    atomicDbSession(db, async (session) => {
      await insert(session, 'block');
      inserted.open();
      await park.opened;
      throw new Error('the block fails');
    }),
  );
  await inserted.opened;
  // Committing may wait for the block, or be refused: give it a moment to do what it does before
  // the block goes on, without waiting for it.
  const committing = ctx
    .run(() => commitDbSession(db))
    .then(
      () => 'resolved',
      (err: { code?: string }) => err.code ?? String(err),
    );
  await Promise.race([committing, sleep(200)]);
  park.open();
  await block.catch(() => {});
  t.comment(`the concurrent commit ${await committing}`);
  await ctx.finish({ statusCode: 200 }).catch(() => {});
  t.same(await texts(table), [], 'the failed block left no row');
  await settledClean();
});

// c0: atomic(commit, 1 insert) &; rollback; end(200)
t.test(
  'rollbackDbSession while an atomic block runs does not undo work the block then reports committed',
  async (t) => {
    const { db, table, insert, settledClean } = await setup(t);
    const ctx = new DbSessionCtx();
    const inserted = gate();
    const park = gate();
    const block = ctx.run(() =>
      atomicDbSession(db, async (session) => {
        await insert(session, 'block');
        inserted.open();
        await park.opened;
      }),
    );
    await inserted.opened;
    // Rolling back may wait for the block, or be refused: give it a moment, without waiting for it.
    const rollingBack = ctx.run(() => rollbackDbSession(db));
    await Promise.race([rollingBack, sleep(200)]);
    park.open();
    const outcome = await block.then(
      () => 'resolved',
      (err: { code?: string }) => err.code ?? String(err),
    );
    await rollingBack;
    await ctx.finish({ statusCode: 200 });
    const rows = await texts(table);
    t.equal(
      rows.includes('block'),
      outcome === 'resolved',
      `the block ${outcome === 'resolved' ? 'resolved' : `rejected (${outcome})`}; its row is ${rows.includes('block') ? 'committed' : 'absent'}`,
    );
    await settledClean();
  },
);

// c0: atomic(commit, 1 insert) &; atomic(commit, 0 inserts, throws) &; end(200) &
t.test("two atomic blocks started together on one session: the second's rollback keeps the first's rows", async (t) => {
  const { db, table, insert, settledClean } = await setup(t);
  const ctx = new DbSessionCtx();
  const inserted = gate();
  const park = gate();
  const first = ctx.run(() =>
    atomicDbSession(db, async (session) => {
      await insert(session, 'first');
      inserted.open();
      await park.opened;
    }),
  );
  await inserted.opened;
  // 'append' makes the model's race deterministic: interleaved, the second block joins the first
  // one's open transaction and its rollback undoes the first block's row.
  const second = ctx.run(() =>
    atomicDbSession(
      db,
      async () => {
        throw new Error('the second block fails');
      },
      { currentTransaction: 'append' },
    ),
  );
  // The second block may wait for the first or run at once: give it a moment, without waiting.
  await Promise.race([second.catch(() => {}), sleep(200)]);
  park.open();
  const [firstOutcome, secondOutcome] = await Promise.allSettled([first, second]);
  await ctx.finish({ statusCode: 200 });
  t.equal(firstOutcome.status, 'fulfilled', 'the first block resolved');
  t.equal(secondOutcome.status, 'rejected', 'the second block failed');
  t.same(await texts(table), ['first'], "the first block's row is committed");
  await settledClean();
});

// c0: insert &; end(200) &; insert &
// The context's session was still being created when the finish began.
t.test(
  'an insert sent after its context began finishing is refused, not reported done and then rolled back',
  async (t) => {
    const { db, table, insert, settledClean } = await setup(t);
    const ctx = new DbSessionCtx();
    const first = ctx.run(async () => insert(await dbSession(db), 'first'));
    const finishing = ctx.finish({ statusCode: 200 });
    const late = ctx
      .run(async () => insert(await dbSession(db), 'late'))
      .then(
        () => 'resolved',
        (err: { code?: string }) => err.code ?? String(err),
      );
    await Promise.allSettled([first, finishing]);
    t.equal(await late, 'SESSION_CLOSED', 'the late insert fails with SessionClosedError');
    const rows = await texts(table);
    t.notOk(rows.includes('late'), 'and left no row');
    t.equal(
      rows.includes('first'),
      await first.then(
        () => true,
        () => false,
      ),
      'the first insert agrees with the table',
    );
    await settledClean();
  },
);

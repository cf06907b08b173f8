// onCommit / onRollback: a hook runs after the COMMIT that makes the work before it durable (the
// context's end, commitDbSession, the enclosing atomic block), in registration order, and is
// dropped when that work is rolled back (a failed COMMIT, a nested block rolled back alone, a
// retried attempt). A throwing hook is reported and changes no outcome.
import {
  atomicDbSession,
  ContextNotInitiatedError,
  commitDbSession,
  DbSessionCtx,
  dbSession,
  newNonCtxAtomicSession,
  onCommit,
  onRollback,
  runInNewCtx,
} from '@context-db/core';
import t from 'tap';
import { admin, checkedOut, createDeferredTable, createTable, testDb, texts } from '../fixtures/db.js';

t.test('onCommit runs after COMMIT, when another connection already sees the data', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const seen: string[][] = [];
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('row')`);
    await onCommit(db, async () => {
      seen.push(await texts(table));
    });
    await onCommit(db, () => {
      seen.push(['second']);
    });
    await onRollback(db, () => {
      seen.push(['rollback hook must not run']);
    });
  });
  t.same(seen, [], 'nothing runs before the commit');
  await ctx.finish();
  t.same(seen, [['row'], ['second']], 'in registration order, after the data is visible');
});

t.test('onCommit is dropped and onRollback runs on a 4xx, a thrown error and a failed COMMIT', async (t) => {
  const { db } = testDb(t);
  const table = await createDeferredTable(t);
  for (const outcome of ['4xx', 'error', 'commit fails'] as const) {
    const ran: string[] = [];
    const ctx = new DbSessionCtx();
    await ctx.run(async () => {
      const session = await dbSession(db);
      await session.query(`INSERT INTO ${table} (key) VALUES (1)`);
      if (outcome === 'commit fails') await session.query(`INSERT INTO ${table} (key) VALUES (1)`);
      await onCommit(db, () => ran.push('commit'));
      await onRollback(db, () => ran.push('rollback'));
    });
    const finished = ctx.finish(
      outcome === '4xx' ? { statusCode: 404 } : outcome === 'error' ? { error: new Error('x') } : {},
    );
    if (outcome === 'commit fails') await t.rejects(finished, { code: 'COMMIT_FAILED' });
    else await finished;
    t.same(ran, ['rollback'], outcome);
  }
  t.equal(checkedOut(db), 0);
});

t.test('commitDbSession and an atomic block run the hooks registered before them; later ones wait', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ran: string[] = [];
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    const session = await dbSession(db);
    await session.query(`INSERT INTO ${table} (text) VALUES ('early')`);
    await onCommit(db, () => ran.push('early'));
    await commitDbSession(db);
    t.same(ran, ['early']);
    await atomicDbSession(db, async (s) => {
      await s.query(`INSERT INTO ${table} (text) VALUES ('block')`);
      await onCommit(db, () => ran.push('block'));
    });
    t.same(ran, ['early', 'block']);
    await onCommit(db, () => ran.push('late'));
  });
  await ctx.finish({ statusCode: 500 });
  t.same(ran, ['early', 'block'], "the late hook's work was rolled back");
  t.same(await texts(table), ['early', 'block']);
});

t.test('a nested block rolled back alone drops its onCommit and runs its onRollback', async (t) => {
  const { db } = testDb(t);
  const ran: string[] = [];
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    await (await dbSession(db)).query('SELECT 1');
    await onCommit(db, () => ran.push('outer'));
    await atomicDbSession(
      db,
      async () => {
        await onCommit(db, () => ran.push('inner dropped'));
        await onRollback(db, () => ran.push('inner rolled back'));
        throw new Error('inner');
      },
      { currentTransaction: 'nested' },
    ).catch(() => {});
    await atomicDbSession(db, () => onCommit(db, () => ran.push('inner kept')), { currentTransaction: 'nested' });
    t.same(ran, ['inner rolled back'], 'a released savepoint commits nothing yet');
  });
  await ctx.finish();
  t.same(ran, ['inner rolled back', 'outer', 'inner kept']);
});

t.test('a retried attempt drops its onCommit hooks; only the attempt that commits runs them', async (t) => {
  const { db } = testDb(t);
  const ran: string[] = [];
  let attempt = 0;
  await newNonCtxAtomicSession(
    db,
    async (session) => {
      attempt++;
      session.onCommit(() => ran.push(`commit ${attempt}`));
      session.onRollback(() => ran.push(`rollback ${attempt}`));
      await session.query('SELECT 1');
      if (attempt === 1) throw Object.assign(new Error('serialization'), { code: '40001' });
    },
    { retry: { attempts: 2, minDelayMs: 1, maxDelayMs: 1 } },
  );
  t.same(ran, ['rollback 1', 'commit 2']);
});

t.test('a throwing hook is reported, and the commit stands', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const reported: unknown[] = [];
  const ran: string[] = [];
  const ctx = new DbSessionCtx();
  ctx.hookErrors = (err, kind) => reported.push([kind, (err as Error).message]);
  await ctx.run(async () => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('kept')`);
    await onCommit(db, () => {
      throw new Error('hook failed');
    });
    await onCommit(db, () => ran.push('next hook still runs'));
  });
  await ctx.finish();
  t.same(reported, [['onCommit', 'hook failed']]);
  t.same(ran, ['next hook still runs']);
  t.same(await texts(table), ['kept']);
});

t.test('a hook may use the database in a context of its own', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  await runInNewCtx(async () => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('order')`);
    await onCommit(db, () =>
      runInNewCtx(async () => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('outbox')`)),
    );
  });
  t.same(await texts(table), ['order', 'outbox']);
  t.equal(checkedOut(db), 0);
});

t.test('outside a context onCommit and onRollback throw ContextNotInitiatedError', async (t) => {
  const { db } = testDb(t);
  await t.rejects(
    onCommit(db, () => {}),
    ContextNotInitiatedError,
  );
  await t.rejects(
    onRollback(db, () => {}),
    ContextNotInitiatedError,
  );
  await t.rejects(
    runInNewCtx(() => onCommit(db, 'nope' as never)),
    { code: 'INVALID_OPTIONS' },
  );
  const { rows } = await admin.query('SELECT 1 AS one');
  t.same(rows, [{ one: 1 }]);
});

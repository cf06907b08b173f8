// DbSessionCtx.abort(reason): what a client abort does to a context. The statement running is
// cancelled with PostgreSQL's cancel request, queued work is refused, a connection still awaited
// from the pool goes back unused, everything is rolled back (hooks fall due as onRollback) and
// the connection is back in the pool, safe for its next user.
import { atomicDbSession, DbSessionCtx, dbSession, onCommit, onRollback, SessionClosedError } from '@context-db/core';
import t from 'tap';
import { createCounter, sleeping } from '../fixtures/cancel.js';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';

class Gone extends SessionClosedError {
  constructor() {
    super('The test aborted the context.');
  }
}

t.test('an abort cancels the running statement: its caller gets the reason, nothing is kept', async (t) => {
  const { db, appName } = testDb(t, { max: 1 });
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  const reason = new Gone();
  const running = ctx.run(async () => {
    const session = await dbSession(db);
    await session.query(`INSERT INTO ${table} (text) VALUES ('aborted')`);
    return session.query('SELECT pg_sleep(3)');
  });
  running.catch(() => {});
  t.ok(await eventually(async () => (await sleeping(appName)) === 1), 'pg_sleep(3) runs');
  const abortedAt = performance.now();
  await ctx.abort(reason);
  const ms = performance.now() - abortedAt;
  t.comment(`abort() resolved ${ms.toFixed(1)} ms after it was called, with pg_sleep(3) running`);
  await t.rejects(running, reason, 'the running query rejects with the reason, not 57014');
  t.equal(checkedOut(db), 0, 'the connection is back in the pool when abort() resolves');
  t.equal(db.pool().idleCount, 1, 'kept, not destroyed');
  t.same(await activity(appName), { total: 1, idleInTransaction: 0, active: 0 }, 'nothing runs, nothing open');
  t.same(await texts(table), [], 'the insert was rolled back');

  // The same connection serves the next context as if nothing happened.
  const next = new DbSessionCtx();
  const { rows } = await next.run(async () => (await dbSession(db)).query<{ one: number }>('SELECT 1 AS one'));
  await next.finish();
  t.same(rows, [{ one: 1 }]);
});

t.test('work queued behind the cancelled statement never runs: it fails with the reason', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  const reason = new Gone();
  const calls = await ctx.run(async () => {
    const session = await dbSession(db);
    return [
      session.query('SELECT pg_sleep(3)'),
      session.query(`INSERT INTO ${table} (text) VALUES ('queued')`),
      session.commit(),
    ];
  });
  for (const call of calls) call.catch(() => {});
  t.ok(await eventually(async () => (await sleeping(appName)) === 1));
  await ctx.abort(reason);
  const outcomes = await Promise.allSettled(calls);
  t.same(
    outcomes.map((o) => (o.status === 'rejected' ? o.reason : 'resolved')),
    [reason, reason, reason],
    'the running query, the queued insert and the queued commit all fail with the reason',
  );
  await t.rejects(
    ctx.run(async () => (await dbSession(db)).query('SELECT 1')),
    reason,
    'and so does anything asked later',
  );
  t.same(await texts(table), []);
  t.equal(checkedOut(db), 0);
});

t.test('aborted while waiting for the pool: the connection comes and goes back unused', async (t) => {
  const { db } = testDb(t, { max: 1, connectionTimeoutMillis: 5000 });
  const counter = await createCounter(t);
  const holder = new DbSessionCtx();
  await holder.run(async () => (await dbSession(db)).query('SELECT 1'));
  const waiter = new DbSessionCtx();
  const reason = new Gone();
  const waiting = waiter.run(async () => (await dbSession(db)).query(`SELECT nextval('${counter.name}')`));
  waiting.catch(() => {});
  t.ok(await eventually(() => db.pool().waitingCount === 1), 'the second context waits for the only connection');
  const aborted = waiter.abort(reason);
  await holder.finish();
  await aborted;
  await t.rejects(waiting, reason);
  t.equal(await counter.ran(), 0, 'its query never ran');
  t.equal(checkedOut(db), 0, 'and the connection it got is back');
  t.equal(db.pool().waitingCount, 0);
});

t.test('an abort inside an atomic block and a nested savepoint rolls back the whole transaction', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  const reason = new Gone();
  const hooks: string[] = [];
  const insert = async (text: string) => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
  const work = ctx.run(async () => {
    await insert('outer');
    await onRollback(db, () => hooks.push('outer rolled back'));
    await onCommit(db, () => hooks.push('outer committed'));
    return atomicDbSession(
      db,
      async () => {
        await insert('block');
        await onRollback(db, () => hooks.push('block rolled back'));
        await atomicDbSession(
          db,
          async (session) => {
            await insert('nested');
            await onRollback(db, () => hooks.push('nested rolled back'));
            await onCommit(db, () => hooks.push('nested committed'));
            await session.query('SELECT pg_sleep(3)');
          },
          { currentTransaction: 'nested' },
        );
      },
      { currentTransaction: 'append' },
    );
  });
  work.catch(() => {});
  t.ok(await eventually(async () => (await sleeping(appName)) === 1));
  await ctx.abort(reason);
  await t.rejects(work, reason, 'the blocks fail with the reason');
  t.same(
    hooks.sort(),
    ['block rolled back', 'nested rolled back', 'outer rolled back'],
    'every level fell due as rolled back, none as committed',
  );
  t.same(await texts(table), [], 'outer, block and savepoint work all rolled back');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test("a leased client's running query is cancelled too", async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  const reason = new Gone();
  const running = ctx.run(async () => {
    const client = await (await dbSession(db)).client();
    await client.query(`INSERT INTO ${table} (text) VALUES ('leased')`);
    return client.query('SELECT pg_sleep(3)');
  });
  running.catch(() => {});
  t.ok(await eventually(async () => (await sleeping(appName)) === 1));
  await ctx.abort(reason);
  await t.rejects(running, reason, "the leased client's caller gets the reason, as session.query's does");
  t.equal(await sleeping(appName), 0);
  t.equal(checkedOut(db), 0);
  t.same(await texts(table), []);
});

t.test('finish after an abort: a commit is refused with the reason, a rollback stands', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const reason = new Gone();
  const aborted = async () => {
    const ctx = new DbSessionCtx();
    await ctx.run(async () => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('x')`));
    await ctx.abort(reason);
    return ctx;
  };
  await t.rejects((await aborted()).finish({ statusCode: 200 }), reason, 'a finish meaning to commit fails');
  await t.resolves((await aborted()).finish({ statusCode: 404 }), 'a finish meaning to roll back stands');
  await t.resolves((await aborted()).finish({ error: new Error('handler') }));
  const empty = new DbSessionCtx();
  await empty.abort(reason);
  t.notOk(empty.empty, 'an aborted context is never "empty": its finish must report the abort');
  await t.rejects(empty.finish(), reason, 'even with no session made');
  await t.rejects(
    empty.run(() => dbSession(db)),
    reason,
    'and a session asked for afterwards fails with the reason',
  );
  t.same(await texts(table), []);
});

t.test('an abort once the finish has begun changes nothing: the decided commit stands', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('kept')`));
  const finished = ctx.finish({ statusCode: 200 });
  await ctx.abort(new Gone());
  await t.resolves(finished);
  t.same(await texts(table), ['kept']);
});

t.test("the cancel request never reaches the connection's next user", async (t) => {
  // One connection, handed straight from each aborted context to one waiting behind it, with the
  // abort landing before, during and just after the aborted statement ends. A cancel that landed
  // late would cancel the next context's pg_sleep.
  const { db } = testDb(t, { max: 1 });
  const failures: unknown[] = [];
  for (let i = 0; i < 40; i++) {
    const aborted = new DbSessionCtx();
    const first = aborted.run(async () => (await dbSession(db)).query(`SELECT pg_sleep(${(i % 5) * 0.002})`));
    first.catch(() => {});
    const next = new DbSessionCtx();
    const second = next.run(async () => (await dbSession(db)).query('SELECT pg_sleep(0.02)'));
    await new Promise((resolve) => setTimeout(resolve, i % 11));
    await aborted.abort(new Gone());
    await second.catch((err: unknown) => failures.push(err));
    await next.finish();
  }
  t.same(failures, [], 'every next statement ran to its end');
  t.equal(checkedOut(db), 0);
});

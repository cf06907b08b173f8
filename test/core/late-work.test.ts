// Late work around a finish: a leased client, a stray rollback, closeDbSession racing the finish,
// a query left behind by an atomic block. Refused, never reported done and then undone.
import {
  atomicDbSession,
  closeDbSession,
  DbConnect,
  type DbSession,
  DbSessionCtx,
  dbSession,
  SessionClosedError,
} from '@context-db/core';
import t from 'tap';
import {
  activity,
  admin,
  checkedOut,
  createTable,
  DATABASE_URL,
  eventually,
  testDb,
  texts,
  uniqueName,
} from '../fixtures/db.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test(
  'a query on the leased client fired while a rolled-back request ends is refused, not autocommitted',
  async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    const ctx = new DbSessionCtx();
    const client = await ctx.run(async () => {
      const s = await dbSession(db);
      await s.query(`INSERT INTO ${table} (text) VALUES ('req')`);
      return s.client();
    });
    const finishing = ctx.finish({ error: new Error('handler failed') });
    // Late code of the failed request (e.g. a query builder holding the client) fires one more write.
    const late = await Promise.resolve(client.query(`INSERT INTO ${table} (text) VALUES ('late')`)).then(
      () => 'resolved',
      (e: unknown) => e,
    );
    await finishing.catch(() => {});
    t.type(late, SessionClosedError, 'late work on the leased client is refused once finish started');
    t.same(await texts(table), [], 'nothing of a rolled-back request is in the table');
  },
);

t.test(
  'a late rollback() from the handler during beforeCommit cannot turn a reported commit into a rollback',
  async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    const ctx = new DbSessionCtx();
    let session!: DbSession;
    await ctx.run(async () => {
      session = await dbSession(db);
      await session.query(`INSERT INTO ${table} (text) VALUES ('req')`);
    });
    let lateResult: unknown;
    const outcome = await ctx
      .finish({
        beforeCommit: async (s) => {
          // Meanwhile, background code of the request (still holding the session) rolls back.
          setTimeout(() => {
            session.rollback().then(
              () => (lateResult = 'rolled back'),
              (e: unknown) => (lateResult = e),
            );
          }, 10);
          await s.query('SELECT pg_sleep(0.1)');
        },
      })
      .then(
        () => 'committed',
        (e: unknown) => e,
      );
    t.equal(outcome, 'committed', 'finish reports a commit');
    t.same(await texts(table), ['req'], 'a finish that reports a commit must have the row durable');
    t.not(lateResult, 'rolled back', 'the late rollback is not honoured');
  },
);

for (const via of ['session', 'leased client'] as const) {
  t.test(`a late query (${via}) from the handler during beforeCommit is refused with SessionClosedError`, async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    const ctx = new DbSessionCtx();
    let late: unknown;
    await ctx.run(async () => {
      const session = await dbSession(db);
      const client = await session.client();
      await session.query(`INSERT INTO ${table} (text) VALUES ('req')`);
      // Fire-and-forget work of the handler (scheduled from the handler, not from beforeCommit).
      setTimeout(() => {
        const sql = `INSERT INTO ${table} (text) VALUES ('late')`;
        Promise.resolve(via === 'session' ? session.query(sql) : client.query(sql)).then(
          () => (late = 'resolved'),
          (e: unknown) => (late = e),
        );
      }, 30);
    });
    await ctx.finish({ beforeCommit: async (s) => void (await s.query('SELECT pg_sleep(0.1)')) });
    await sleep(20);
    t.type(late, SessionClosedError);
    t.same(await texts(table), ['req']);
  });
}

t.test('closeDbSession() not awaited by a handler, then finish: nothing leaks', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('req')`);
  });
  // The handler fires closeDbSession and returns without awaiting it; the adapter finishes.
  const closing = ctx.run(() => closeDbSession(db));
  await ctx.finish();
  await closing;
  t.ok(await eventually(() => checkedOut(db) === 0, 1000), `connection released (checked out: ${checkedOut(db)})`);
  t.equal((await activity(appName)).idleInTransaction, 0, 'no idle in transaction');
});

t.test('a query left behind by a finished atomic block does not slip into the next block', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  let stray: unknown;
  const second = await ctx.run(async () => {
    await atomicDbSession(db, async (s) => {
      await s.query(`INSERT INTO ${table} (text) VALUES ('block1')`);
      // Fire-and-forget follow-up started inside block 1 (e.g. an audit write), landing later.
      setTimeout(() => {
        s.query(`INSERT INTO ${table} (text) VALUES ('stray')`).then(
          () => (stray = 'resolved'),
          (e: unknown) => (stray = e),
        );
      }, 30);
    });
    return atomicDbSession(db, async (s) => {
      await s.query(`INSERT INTO ${table} (text) VALUES ('block2')`);
      await sleep(100);
      throw new Error('block 2 fails');
    }).catch((e: unknown) => e);
  });
  await ctx.finish();
  t.match(second, { message: 'block 2 fails' });
  t.equal(stray, 'resolved', 'the stray query reported success');
  t.same(
    (await texts(table)).sort(),
    ['block1', 'stray'],
    'work reported done was not undone by the rollback of a block it was never part of',
  );
});

t.test('closeDbSession() not awaited, then finish, with a second database in the request: nothing leaks', async (t) => {
  // Not testDb(): its teardown (pool.end) would wait forever for the leaked connection.
  const appName = uniqueName('cdb');
  const db = new DbConnect({ connectionString: DATABASE_URL, poolConfig: { max: 2, application_name: appName } });
  t.teardown(() =>
    admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [appName]),
  );
  const other = testDb(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    await (await dbSession(db)).query('SELECT 1');
    await (await dbSession(other.db)).query('SELECT 1');
  });
  const closing = ctx.run(() => closeDbSession(db));
  await ctx.finish();
  await closing;
  t.ok(await eventually(() => checkedOut(db) === 0, 1000), `connection released (checked out: ${checkedOut(db)})`);
  t.equal((await activity(appName)).idleInTransaction, 0, 'no idle in transaction');
});

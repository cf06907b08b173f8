// changeHost() and close() with sessions waiting for a pool connection: pg-pool's end() never
// serves its queue, so without help a waiter would sit out its whole connectionTimeoutMillis and
// fail with a raw timeout. After changeHost a waiter gets a connection from the new pool; after
// close() it fails at once with DbConnectClosedError (status 503).
import { DbConnect, DbConnectClosedError, type DbSession } from '@context-db/core';
import pg from 'pg';
import t from 'tap';
import { msUntil } from '../fixtures/cancel.js';
import { activity, DATABASE_URL, eventually, uniqueName } from '../fixtures/db.js';

/** A DbConnect whose pools carry the host as application_name (one real server behind all). */
function twoHosts(t: { teardown(fn: () => unknown): void }) {
  const hostA = uniqueName('host_a');
  const hostB = uniqueName('host_b');
  const db = new DbConnect({
    host: hostA,
    createPool: (host) =>
      new pg.Pool({ connectionString: DATABASE_URL, application_name: host, max: 1, connectionTimeoutMillis: 10_000 }),
  });
  t.teardown(() => db.close());
  return { db, hostA, hostB };
}

async function holding(db: DbConnect): Promise<DbSession> {
  const session = await db.createSession();
  await session.query('SELECT 1');
  return session;
}

t.test('changeHost: a session waiting for the old pool gets a connection from the new one at once', async (t) => {
  const { db, hostA, hostB } = twoHosts(t);
  const holder = await holding(db);
  const waiter = await db.createSession();
  let answered = false;
  const waiting = waiter.query<{ app: string }>("SELECT current_setting('application_name') AS app").finally(() => {
    answered = true;
  });
  t.ok(await eventually(() => db.pool().waitingCount === 1), 'the waiter queues for the only connection');
  const ended = db.changeHost(hostB);
  const since = performance.now();
  const ms = await msUntil(since, () => answered, 2000);
  t.comment(`the waiter was answered ${ms?.toFixed(1)} ms after changeHost`);
  t.ok(ms !== undefined && ms <= 100, 'within 100 ms');
  t.same((await waiting).rows, [{ app: hostB }], 'from the new pool');
  t.equal((await activity(hostA)).total, 1, "the old pool's connection stays with its session");
  await waiter.close();
  await holder.close();
  await ended;
  t.ok(await eventually(async () => (await activity(hostA)).total === 0), 'the old pool ended once its session closed');
});

t.test('close: a session waiting for a connection fails at once with DbConnectClosedError', async (t) => {
  const { db } = twoHosts(t);
  const holder = await holding(db);
  const waiter = await db.createSession();
  let failure: unknown;
  const waiting = waiter.query('SELECT 1').catch((err: unknown) => {
    failure = err;
  });
  t.ok(await eventually(() => db.pool().waitingCount === 1));
  const closed = db.close();
  const since = performance.now();
  const ms = await msUntil(since, () => failure !== undefined, 2000);
  t.comment(`the waiter failed ${ms?.toFixed(1)} ms after close()`);
  t.ok(ms !== undefined && ms <= 100, 'within 100 ms');
  await waiting;
  t.type(failure, DbConnectClosedError);
  t.match(failure, { code: 'DB_CONNECT_CLOSED', statusCode: 503 });
  let closedYet = false;
  void closed.then(() => {
    closedYet = true;
  });
  await holder.query('SELECT 2');
  t.notOk(closedYet, 'close() waits for the session still holding a connection, which keeps working');
  await holder.close();
  await closed;
  await waiter.close();
  await t.rejects(db.createSession(), DbConnectClosedError, 'and so does any later use');
});

t.test('close and changeHost with many waiters: each settles once, nothing is left checked out', async (t) => {
  const { db, hostA, hostB } = twoHosts(t);
  const holder = await holding(db);
  const waiters = await Promise.all(Array.from({ length: 8 }, () => db.createSession()));
  const answers = waiters.map((s) =>
    s.query<{ app: string }>("SELECT current_setting('application_name') AS app").then(
      (r) => r.rows[0]?.app,
      (err: unknown) => err,
    ),
  );
  t.ok(await eventually(() => db.pool().waitingCount === 8));
  void db.changeHost(hostB);
  // The new pool has one connection too: the eight take turns on it.
  for (const [i, s] of waiters.entries()) {
    t.equal(await answers[i], hostB);
    await s.close();
  }
  await holder.close();
  await db.close();
  t.ok(await eventually(async () => (await activity(hostA)).total + (await activity(hostB)).total === 0));
});

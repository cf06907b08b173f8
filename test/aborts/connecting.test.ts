// Aborts, deadlines, changeHost and close while a session waits for a
// connection that the pool is still opening (not queued behind a full pool), including an
// unreachable host that accepts TCP and never answers.
import net from 'node:net';
import { DbConnect, DbConnectClosedError, DbSessionCtx, DeadlineExceededError, dbSession } from '@context-db/core';
import pg from 'pg';
import t from 'tap';
import { createCounter } from '../fixtures/cancel.js';
import { checkedOut, DATABASE_URL, eventually, testDb, uniqueName } from '../fixtures/db.js';

type Teardown = { teardown(fn: () => unknown): void };

/** A server that accepts connections and never says a word: a host behind a black hole. */
async function blackHole(t: Teardown): Promise<string> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    for (const socket of sockets) socket.destroy();
    server.close();
  });
  return `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
}

function urlOn(host: string): string {
  const url = new URL(DATABASE_URL);
  url.host = host;
  return url.toString();
}

/** Settles `promise` into a record the test can poll. */
function watch(promise: Promise<unknown>): { state: 'pending' | 'resolved' | 'rejected'; value: unknown } {
  const seen: { state: 'pending' | 'resolved' | 'rejected'; value: unknown } = { state: 'pending', value: undefined };
  promise.then(
    (value) => Object.assign(seen, { state: 'resolved', value }),
    (value: unknown) => Object.assign(seen, { state: 'rejected', value }),
  );
  return seen;
}

/** A request whose first query waits while the pool opens a connection to a black hole (5 s timeout). */
async function connectingToBlackHole(t: Teardown) {
  const { db } = testDb(t, { max: 4, connectionTimeoutMillis: 5000 }, { host: await blackHole(t) });
  const ctx = new DbSessionCtx();
  const work = watch(ctx.run(async () => (await dbSession(db)).query('SELECT 1')));
  await new Promise((resolve) => setTimeout(resolve, 100));
  return { db, ctx, work };
}

t.test('a deadline passing while the pool opens a connection to an unreachable host fails the work then', async (t) => {
  const { db } = testDb(t, { max: 4, connectionTimeoutMillis: 5000 }, { host: await blackHole(t) });
  const ctx = new DbSessionCtx();
  const work = watch(
    ctx.run(async () => {
      ctx.setDeadline(200);
      return (await dbSession(db)).query('SELECT 1');
    }),
  );
  const failed = await eventually(() => work.state !== 'pending', 1500);
  t.ok(failed, 'the 200 ms deadline ends the work within 1.5 s, not after the 5 s connect timeout');
  if (failed) t.type(work.value, DeadlineExceededError, 'with DeadlineExceededError (503)');
  await eventually(() => work.state !== 'pending', 6000);
});

t.test('an abort while the pool opens a connection to an unreachable host resolves at once', async (t) => {
  const { ctx, work } = await connectingToBlackHole(t);
  const aborted = watch(ctx.abort(new Error('client gone')));
  const done = await eventually(() => aborted.state !== 'pending' && work.state !== 'pending', 1500);
  t.ok(done, 'abort() and the work both settle within 1.5 s of the abort');
  await eventually(() => work.state !== 'pending', 6000);
});

t.test('an abort while the pool opens a connection to a live server: it comes and goes back unused', async (t) => {
  const { db } = testDb(t, { max: 4 });
  const counter = await createCounter(t);
  const ctx = new DbSessionCtx();
  const work = watch(ctx.run(async () => (await dbSession(db)).query(`SELECT nextval('${counter.name}')`)));
  // The query is in #connected, the pool is opening its first connection (nothing queued).
  await new Promise((resolve) => setImmediate(resolve));
  t.equal(db.pool().waitingCount, 0, 'nothing is queued: the pool is opening a connection');
  await ctx.abort(new Error('client gone'));
  t.ok(await eventually(() => work.state === 'rejected'), 'the work fails');
  t.equal(await counter.ran(), 0, 'its query never ran');
  t.ok(await eventually(() => checkedOut(db) === 0), 'the connection is back');
});

t.test(
  'close() while the pool opens a connection to an unreachable host: the waiter fails at once and close() resolves',
  async (t) => {
    const { db, work } = await connectingToBlackHole(t);
    const closing = watch(db.close());
    t.ok(await eventually(() => work.state === 'rejected', 500), 'the waiting work fails at once');
    t.type(work.value, DbConnectClosedError);
    t.ok(await eventually(() => closing.state === 'resolved', 1500), 'db.close() resolves within 1.5 s');
    await eventually(() => closing.state !== 'pending', 6000);
  },
);

t.test('changeHost away from an unreachable host: a session opening a connection there moves at once', async (t) => {
  const appName = uniqueName('cdb');
  const hole = await blackHole(t);
  const db = new DbConnect({
    host: hole,
    createPool: (host) =>
      new pg.Pool({
        connectionString: host === hole ? urlOn(hole) : DATABASE_URL,
        application_name: appName,
        max: 2,
        connectionTimeoutMillis: 3000,
      }),
  });
  t.teardown(() => db.close());
  const ctx = new DbSessionCtx();
  const work = watch(ctx.run(async () => (await dbSession(db)).query('SELECT 1 AS one')));
  await new Promise((resolve) => setTimeout(resolve, 100));
  const moving = watch(db.changeHost('live'));
  t.ok(await eventually(() => work.state !== 'pending', 1000), 'the query runs on the new pool within 1 s');
  t.equal(work.state, 'resolved');
  await ctx.finish();
  t.ok(await eventually(() => moving.state === 'resolved', 5000), 'the old pool ends once its attempt is over');
});

t.test('an abort racing changeHost: the moved waiter settles once, nothing is left checked out', async (t) => {
  const appName = uniqueName('cdb');
  const db = new DbConnect({
    host: 'a',
    createPool: () =>
      new pg.Pool({ connectionString: DATABASE_URL, application_name: appName, max: 1, connectionTimeoutMillis: 5000 }),
  });
  t.teardown(() => db.close());
  const counter = await createCounter(t);
  const holder = new DbSessionCtx();
  await holder.run(async () => (await dbSession(db)).query('SELECT 1'));
  const oldPool = db.pool();
  const ctxs = Array.from({ length: 5 }, () => new DbSessionCtx());
  const works = ctxs.map((ctx) =>
    watch(ctx.run(async () => (await dbSession(db)).query(`SELECT nextval('${counter.name}')`))),
  );
  t.ok(await eventually(() => oldPool.waitingCount === 5), 'five sessions wait for the old pool');
  // Abort two before the move, two right after it (their wait is on the new pool), one lives.
  void ctxs[0]?.abort(new Error('gone 0'));
  void ctxs[1]?.abort(new Error('gone 1'));
  const moving = watch(db.changeHost('b'));
  void ctxs[2]?.abort(new Error('gone 2'));
  void ctxs[3]?.abort(new Error('gone 3'));
  t.ok(await eventually(() => works.every((w) => w.state !== 'pending'), 2000), 'every waiter settles');
  t.same(
    works.map((w) => w.state),
    ['rejected', 'rejected', 'rejected', 'rejected', 'resolved'],
  );
  t.equal(await counter.ran(), 1, 'only the live session ran its query');
  await ctxs[4]?.finish();
  await holder.finish();
  t.ok(await eventually(() => moving.state === 'resolved', 3000), 'the old pool ended');
  t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out of the new pool');
  t.equal(oldPool.totalCount, 0, 'nothing left in the old pool');
});

// Review of issue #11: a deadline or an abort that comes while the session still waits in the
// pool queue. The deadline must end the work when it passes, not when a connection frees up.
import { DbSessionCtx, DeadlineExceededError, dbSession, SessionClosedError } from '@context-db/core';
import t from 'tap';
import { createCounter } from '../fixtures/cancel.js';
import { checkedOut, eventually, testDb } from '../fixtures/db.js';

t.test('a deadline passing while the session waits for a pool connection fails the work then', async (t) => {
  const { db } = testDb(t, { max: 1, connectionTimeoutMillis: 20_000 });
  const counter = await createCounter(t);
  // Another request holds the only connection (it is parked, not running a statement).
  const holder = new DbSessionCtx();
  await holder.run(async () => (await dbSession(db)).query('SELECT 1'));
  t.teardown(() => holder.finish());
  const ctx = new DbSessionCtx();
  let settled: unknown = 'pending';
  const work = ctx.run(async () => {
    ctx.setDeadline(100);
    return (await dbSession(db)).query(`SELECT nextval('${counter.name}')`);
  });
  work.then(
    () => {
      settled = 'resolved';
    },
    (err: unknown) => {
      settled = err;
    },
  );
  t.ok(await eventually(() => db.pool().waitingCount === 1), 'the request waits for the only connection');
  // Well past the 100 ms deadline, while the holder still holds the connection.
  const failed = await eventually(() => settled !== 'pending', 3000);
  t.ok(failed, 'the deadline failed the waiting work while the connection was still held');
  t.type(settled, DeadlineExceededError);
  // abort() (what the adapter awaits before answering) should be done too.
  let aborted = false;
  void ctx.abort(new DeadlineExceededError(100)).then(() => {
    aborted = true;
  });
  t.ok(await eventually(() => aborted, 1000), 'aborting the context does not wait for the pool');
  await holder.finish();
  await work.catch(() => {});
  t.equal(await counter.ran(), 0, 'its query never ran');
  t.ok(await eventually(() => checkedOut(db) === 0));
});

t.test('an aborted waiter does not keep the abort() promise hanging until the pool frees', async (t) => {
  const { db } = testDb(t, { max: 1, connectionTimeoutMillis: 20_000 });
  const holder = new DbSessionCtx();
  await holder.run(async () => (await dbSession(db)).query('SELECT 1'));
  t.teardown(() => holder.finish());
  const ctx = new DbSessionCtx();
  const work = ctx.run(async () => (await dbSession(db)).query('SELECT 1'));
  work.catch(() => {});
  t.ok(await eventually(() => db.pool().waitingCount === 1));
  let done = false;
  void ctx.abort(new SessionClosedError('client gone')).then(() => {
    done = true;
  });
  let rejected = false;
  work.catch(() => {
    rejected = true;
  });
  t.ok(await eventually(() => done && rejected, 1000), 'abort() resolves and the work rejects while the pool is full');
  await holder.finish();
});

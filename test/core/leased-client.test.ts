// What session.client() hands out beyond query(): listeners that leave with the session and
// callbacks in the caller's context.
import { currentCtx, type DbConnect, type DbSession, DbSessionCtx, dbSession } from '@context-db/core';
import t from 'tap';
import { admin, eventually, testDb } from '../fixtures/db.js';

async function inCtx<R>(db: DbConnect, fn: (session: DbSession, ctx: DbSessionCtx) => Promise<R>): Promise<R> {
  const ctx = new DbSessionCtx();
  const result = await ctx.run(async () => fn(await dbSession(db), ctx));
  await ctx.finish().catch(() => {});
  return result;
}

t.test(
  "a 'notification' listener added through request A's leased client never sees request B's notifications",
  async (t) => {
    const { db } = testDb(t, { max: 1 });
    const seenByA: string[] = [];
    const pidA = await inCtx(db, async (s) => {
      const client = await s.client();
      client.on('notification', (msg) => seenByA.push(msg.payload ?? ''));
      return (await s.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]?.pid;
    });
    const seenByB: string[] = [];
    const pidB = await inCtx(db, async (s) => {
      const client = await s.client();
      client.on('notification', (msg) => seenByB.push(msg.payload ?? ''));
      await s.query('LISTEN review_b_channel');
      await s.commit(); // LISTEN takes effect at commit
      await admin.query(`NOTIFY review_b_channel, 'tenant-b secret'`);
      await eventually(() => seenByB.length > 0, 1000);
      return (await s.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]?.pid;
    });
    t.equal(pidA, pidB, 'same pooled connection');
    t.same(seenByB, ['tenant-b secret']);
    t.same(seenByA, [], "request A's listener, left on the pooled client, received request B's notification");
    t.equal(
      (
        await db
          .pool()
          .connect()
          .then((c) => [c.listenerCount('notification'), c.release()])
      )[0],
      0,
      'no listener of a finished request stays on the pooled client',
    );
  },
);

t.test('a callback-style query on the leased client calls back in the caller’s context', async (t) => {
  const { db } = testDb(t);
  let ctxInCallback: unknown = 'not called';
  let mine: unknown;
  await inCtx(db, async (s, ctx) => {
    mine = ctx;
    const client = await s.client();
    await new Promise<void>((resolve) => {
      (client.query as unknown as (sql: string, cb: () => void) => void)('SELECT 1', () => {
        ctxInCallback = currentCtx();
        resolve();
      });
    });
  });
  t.equal(ctxInCallback, mine, 'the callback runs in the request context, as with an unpooled client');
});

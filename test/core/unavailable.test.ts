import net from 'node:net';
import { DatabaseUnavailableError, DbConnect, DbSessionCtx, dbSession, newNonCtxSession } from '@context-db/core';
import t from 'tap';
import { activity, checkedOut, testDb } from '../fixtures/db.js';

t.test(
  'an exhausted pool fails after connectionTimeoutMillis with POOL_EXHAUSTED (503), and nothing leaks',
  async (t) => {
    const { db, appName } = testDb(t, { max: 2, connectionTimeoutMillis: 200 });
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const holders = [1, 2].map(() =>
      newNonCtxSession(db, async (s) => {
        await s.query('SELECT 1');
        await gate;
      }),
    );
    const ctx = new DbSessionCtx();
    const started = Date.now();
    const err = await ctx.run(async () => (await dbSession(db)).query('SELECT 1')).catch((e: unknown) => e);
    const waited = Date.now() - started;
    t.type(err, DatabaseUnavailableError);
    t.match(err, { code: 'POOL_EXHAUSTED', statusCode: 503, detail: /all 2 are in use.*poolConfig.max/s });
    t.notMatch((err as Error).message, /2|200|poolConfig/, 'the message shows a client no pool size or timeout');
    t.ok(waited >= 150, `waited for the acquire timeout (${waited} ms)`);
    await ctx.finish({ error: err });
    release();
    await Promise.all(holders);
    t.equal(checkedOut(db), 0);
    t.equal((await activity(appName)).idleInTransaction, 0);
  },
);

t.test('an unreachable server fails with DATABASE_UNREACHABLE (503)', async (t) => {
  const db = new DbConnect({ connectionString: 'postgres://postgres@127.0.0.1:1/postgres' });
  t.teardown(() => db.close());
  await t.rejects(
    newNonCtxSession(db, (s) => s.query('SELECT 1')),
    { code: 'DATABASE_UNREACHABLE', statusCode: 503, detail: /cannot be reached.*ECONNREFUSED/ },
  );
  const err = await newNonCtxSession(db, (s) => s.query('SELECT 1')).catch((e: unknown) => e);
  t.notMatch((err as Error).message, /127\.0\.0\.1|:1\b|ECONNREFUSED/, 'the message shows a client no host or port');
});

t.test(
  'a server that accepts TCP but never answers fails with DATABASE_UNREACHABLE (503), not a raw 500',
  async (t) => {
    const silent = net.createServer(() => {}); // accepts, never speaks
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const sockets = new Set<net.Socket>();
    silent.on('connection', (socket) => sockets.add(socket));
    t.teardown(() => {
      for (const socket of sockets) socket.destroy();
      silent.close();
    });
    const { port } = silent.address() as net.AddressInfo;
    const db = new DbConnect({
      connectionString: `postgres://postgres@127.0.0.1:${port}/postgres`,
      poolConfig: { connectionTimeoutMillis: 300 },
    });
    t.teardown(() => db.close());
    await t.rejects(
      newNonCtxSession(db, (s) => s.query('SELECT 1')),
      {
        code: 'DATABASE_UNREACHABLE',
        statusCode: 503,
        detail: /timeout/,
      },
    );
  },
);

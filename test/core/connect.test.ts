import {
  DbConnect,
  DbConnectClosedError,
  DbSessionCtx,
  dbSession,
  InvalidOptionsError,
  newNonCtxSession,
} from '@context-db/core';
import pg from 'pg';
import t from 'tap';
import { admin, DATABASE_URL, eventually, uniqueName } from '../fixtures/db.js';

async function connectionsOf(name: string): Promise<number> {
  const { rows } = await admin.query('SELECT 1 FROM pg_stat_activity WHERE application_name = $1', [name]);
  return rows.length;
}

t.test('changeHost moves new sessions to the new pool and ends the old one once its sessions close', async (t) => {
  // The "host" is turned into the pool's application_name so pg_stat_activity shows which pool
  // a connection belongs to, with one real server behind both.
  const hostA = uniqueName('host_a');
  const hostB = uniqueName('host_b');
  const pools: pg.Pool[] = [];
  const db = new DbConnect({
    host: hostA,
    createPool: (host) => {
      const pool = new pg.Pool({ connectionString: DATABASE_URL, application_name: host, max: 2 });
      pools.push(pool);
      return pool;
    },
  });
  t.teardown(() => db.close());
  const held = await db.createSession();
  await held.query('SELECT 1');
  t.equal(await connectionsOf(hostA), 1);
  const ended = db.changeHost(hostB);
  t.equal(db.host, hostB);
  await newNonCtxSession(db, (s) => s.query('SELECT 1'));
  t.equal(await connectionsOf(hostB), 1, 'new sessions use the new pool');
  t.equal(await connectionsOf(hostA), 1, 'the old connection stays while its session holds it');
  let endedYet = false;
  void ended.then(() => (endedYet = true));
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.notOk(endedYet, 'the old pool is not ended under a session');
  await held.query('SELECT 2');
  await held.close();
  await ended;
  t.ok(await eventually(async () => (await connectionsOf(hostA)) === 0), 'old pool ended');
  t.equal(pools.length, 2);
});

t.test('beforeCreateSession runs before each new session and can switch the host', async (t) => {
  const calls: string[] = [];
  const db = new DbConnect({
    connectionString: DATABASE_URL,
    beforeCreateSession: async (connect) => {
      calls.push(connect.host ?? 'default');
      if (calls.length === 2) await connect.changeHost('127.0.0.1');
    },
  });
  t.teardown(() => db.close());
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    await dbSession(db);
    await dbSession(db);
  });
  await ctx.finish();
  t.same(calls, ['default'], 'once per session, not per dbSession call');
  await newNonCtxSession(db, async (s) => {
    t.equal(db.host, '127.0.0.1');
    await s.query('SELECT 1');
  });
  t.same(calls, ['default', 'default']);
});

t.test('bad options and a closed DbConnect give clear errors', async (t) => {
  t.throws(() => new DbConnect({}), {
    name: 'InvalidOptionsError',
    message: /connectionString.*poolConfig.*createPool/,
  });
  t.throws(() => new DbConnect({ connectionString: '' }), InvalidOptionsError);
  t.throws(() => new DbConnect({ connectionString: 'not a url' }), /not a URL/);
  t.throws(() => new DbConnect({ connectionString: DATABASE_URL, createPool: () => new pg.Pool() }), /not both/);
  t.throws(() => new DbConnect(undefined as never), /needs an options object/);
  t.throws(
    () => new DbConnect({ connectionString: DATABASE_URL, beforeCreateSession: 'x' as never }),
    /beforeCreateSession must be a function/,
  );
  const notAPool = new DbConnect({ createPool: () => ({}) as pg.Pool });
  await t.rejects(
    newNonCtxSession(notAPool, (s) => s.query('SELECT 1')),
    /must return a pg.Pool/,
  );
  const db = new DbConnect({ connectionString: DATABASE_URL });
  await db.close();
  await t.rejects(db.createSession(), DbConnectClosedError);
  t.throws(() => db.pool(), { code: 'DB_CONNECT_CLOSED' });
  await db.close();
});

t.test('the connectionString shorthand puts host into the URL, host:port included', async (t) => {
  const db = new DbConnect({ connectionString: 'postgres://u@db.invalid:5432/app', host: '127.0.0.1:6543' });
  const pool = db.pool() as pg.Pool & { options: pg.PoolConfig };
  t.equal(pool.options.connectionString, 'postgres://u@127.0.0.1:6543/app');
  await db.close();
});

/** A DbConnect on two "hosts": each pool's application_name is its host (one real server behind both). */
function twoHosts(t: { teardown(fn: () => unknown): void }) {
  const hostA = uniqueName('host_a');
  const hostB = uniqueName('host_b');
  const db = new DbConnect({
    host: hostA,
    createPool: (host) => new pg.Pool({ connectionString: DATABASE_URL, application_name: host, max: 2 }),
  });
  t.teardown(() => db.close());
  return { db, hostA, hostB };
}

t.test('changeHost: a session that committed early takes its next transaction from the new host', async (t) => {
  // After a failover the old primary may still accept connections (as a demoted replica, or
  // split-brained): a request that committed early must not write its next transaction there.
  const { db, hostA, hostB } = twoHosts(t);
  const ctx = new DbSessionCtx();
  const hosts = await ctx.run(async () => {
    const session = await dbSession(db);
    const app = "SELECT current_setting('application_name') AS app";
    const before = (await session.query<{ app: string }>(app)).rows[0]?.app;
    await session.commit();
    const ended = db.changeHost(hostB);
    const after = (await session.query<{ app: string }>(app)).rows[0]?.app;
    return { before, after, ended };
  });
  await ctx.finish({ statusCode: 200 });
  t.same([hosts.before, hosts.after], [hostA, hostB], 'the second transaction ran on the new host');
  await hosts.ended;
  t.equal(await connectionsOf(hostA), 0, 'the old pool ended: the session gave its connection back when it moved');
});

t.test('changeHost: a session in the middle of a transaction keeps its connection until it ends', async (t) => {
  const { db, hostB } = twoHosts(t);
  const session = await db.createSession();
  const app = "SELECT current_setting('application_name') AS app, txid_current() AS tx";
  const first = (await session.query<{ app: string; tx: string }>(app)).rows[0];
  const ended = db.changeHost(hostB);
  const second = (await session.query<{ app: string; tx: string }>(app)).rows[0];
  t.same(second, first, 'same host, same transaction: a transaction is never split across connections');
  await session.commit();
  const third = (await session.query<{ app: string }>(app)).rows[0]?.app;
  t.equal(third, hostB, 'the next transaction moved');
  await session.close();
  await ended;
});

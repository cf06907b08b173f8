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

// Transaction control (issue #12), from its review; every failure described here failed before its fix: things checked that held. Kept as regression tests next to the failing
// reproductions in this folder.
import http from 'node:http';
import {
  atomicDbSession,
  closeDbSession,
  commitDbSession,
  DbConnect,
  DbSessionCtx,
  dbSession,
  newNonCtxSession,
  onCommit,
  onRollback,
  runInNewCtx,
  type TransactionOptions,
} from '@context-db/core';
import { contextDb as expressContextDb, transactionOptions as expressOptions } from '@context-db/express';
import { contextDbPlugin } from '@context-db/fastify';
import { contextDb as koaContextDb, transactionOptions as koaOptions } from '@context-db/koa';
import Router from '@koa/router';
import express from 'express';
import Fastify from 'fastify';
import Koa from 'koa';
import pg from 'pg';
import t, { type Test } from 'tap';
import {
  activity,
  checkedOut,
  createDeferredTable,
  createTable,
  DATABASE_URL,
  eventually,
  testDb,
  texts,
  uniqueName,
} from '../fixtures/db.js';
import { deferred, request as httpRequest, listen } from '../fixtures/express.js';
import { crashes } from '../fixtures/fastify.js';
import { serve } from '../fixtures/koa.js';

const SETTINGS = `SELECT pg_backend_pid() AS pid,
  current_setting('transaction_isolation') AS iso, current_setting('transaction_read_only') AS ro,
  current_setting('statement_timeout') AS st, current_setting('lock_timeout') AS lt,
  current_setting('idle_in_transaction_session_timeout') AS it`;
const DEFAULTS = { iso: 'read committed', ro: 'off', st: '0', lt: '0', it: '0' };
const ALL: TransactionOptions = {
  isolationLevel: 'serializable',
  readOnly: false,
  statementTimeout: 1234,
  lockTimeout: 999,
  idleInTransactionTimeout: 4321,
};

type Settings = typeof DEFAULTS & { pid: number };

for (const resetSession of [true, false]) {
  t.test(`options end with their transaction on a pooled connection (resetSession: ${resetSession})`, async (t) => {
    const { db } = testDb(t, { max: 1 }, { resetSession });
    const table = await createDeferredTable(t);
    const read = async (): Promise<Settings> =>
      (await (await dbSession(db)).query<Settings>(SETTINGS)).rows[0] as Settings;
    const after = async (what: string) => {
      const next = await runInNewCtx(read);
      const { pid, ...rest } = next;
      t.same(rest, DEFAULTS, `${what}: the next transaction on the connection has the defaults`);
      return pid;
    };
    const pids = new Set<number>();
    // After COMMIT.
    pids.add((await runInNewCtx({ transaction: ALL }, read)).pid);
    pids.add(await after('after COMMIT'));
    // After ROLLBACK.
    await runInNewCtx({ transaction: ALL }, async () => {
      await read();
      throw new Error('roll back');
    }).catch(() => {});
    pids.add(await after('after ROLLBACK'));
    // After a failed COMMIT (a deferred unique key).
    const failed = await runInNewCtx({ transaction: { ...ALL, isolationLevel: 'read committed' } }, async () => {
      const s = await dbSession(db);
      await s.query(`INSERT INTO ${table} (text, key) VALUES ('a', 'k'), ('b', 'k')`);
    }).catch((err: Error) => err.name);
    t.equal(failed, 'CommitFailedError');
    pids.add(await after('after a failed COMMIT'));
    // An atomic block's options do not reach the request's later transactions.
    const ctx = new DbSessionCtx();
    const [inBlock, later] = await ctx.run(async () => {
      const b = await atomicDbSession(db, read, { transaction: ALL });
      return [b, await read()];
    });
    await ctx.finish();
    t.equal(inBlock.st, '1234ms');
    t.same({ ...later, pid: 0 }, { ...DEFAULTS, pid: 0 }, "the request's next transaction has the defaults");
    // A context's options apply again after an early commit.
    const ctx2 = new DbSessionCtx();
    ctx2.setTransactionOptions({ statementTimeout: 2222 });
    const [first, second] = await ctx2.run(async () => {
      const a = await read();
      await commitDbSession(db);
      return [a, await read()];
    });
    await ctx2.finish();
    t.equal(first.st, '2222ms');
    t.equal(second.st, '2222ms', 'the transaction after commitDbSession has the context options too');
    t.equal(pids.size, 1, 'all on the one pooled connection');
    t.equal(checkedOut(db), 0);
  });
}

t.test('deferrable reaches PostgreSQL', async (t) => {
  const { db } = testDb(t);
  const d = await runInNewCtx(
    { transaction: { isolationLevel: 'serializable', readOnly: true, deferrable: true } },
    async () =>
      (await (await dbSession(db)).query<{ d: string }>("SELECT current_setting('transaction_deferrable') AS d"))
        .rows[0]?.d,
  );
  t.equal(d, 'on');
});

t.test('an idle-in-transaction timeout ends the request with a 500, no crash and no connection left', async (t) => {
  const seen = crashes(t);
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.post('/slow', { config: { contextDb: { transaction: { idleInTransactionTimeout: 100 } } } }, async () => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('x')`);
    await new Promise((resolve) => setTimeout(resolve, 400)); // a slow upstream call
    return 'ok';
  });
  const res = await app.inject({ method: 'POST', url: '/slow' });
  t.equal(res.statusCode, 500);
  t.same(await texts(table), []);
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
  t.same(seen, []);
});

// A pool whose connections count every client.query: one per round trip.
function countingDb(t: Test, options: TransactionOptions | undefined): { db: DbConnect; sent: string[] } {
  const sent: string[] = [];
  const appName = uniqueName('cdb_rt');
  const db = new DbConnect({
    ...(options && { transaction: options }),
    createPool: () => {
      const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 2, application_name: appName });
      pool.on('connect', (client) => {
        const query = client.query;
        client.query = function (this: pg.PoolClient, ...args: unknown[]) {
          const [first] = args;
          sent.push(typeof first === 'string' ? first : String((first as { text?: unknown }).text));
          return Reflect.apply(query, this, args);
        } as typeof client.query;
      });
      return pool;
    },
  });
  t.teardown(() => db.close());
  return { db, sent };
}

t.test('options add no round trip: N queries are still N + 2 statements, per framework', async (t) => {
  const table = await createTable(t);
  const route: TransactionOptions = { isolationLevel: 'repeatable read', statementTimeout: 5000, lockTimeout: 100 };
  const frameworks: Record<string, (db: DbConnect) => Promise<(path: string) => Promise<number>>> = {
    fastify: async (db) => {
      const app = Fastify();
      t.teardown(() => app.close());
      await app.register(contextDbPlugin, { db });
      app.post('/q', { config: { contextDb: { transaction: route } } }, async () => {
        const s = await dbSession(db);
        await s.query(`INSERT INTO ${table} (text) VALUES ('f1')`);
        await s.query(`INSERT INTO ${table} (text) VALUES ('f2')`);
        return 'ok';
      });
      return async (path) => (await app.inject({ method: 'POST', url: path })).statusCode;
    },
    express: async (db) => {
      const app = express();
      app.use(expressContextDb({ db }));
      app.post('/q', expressOptions(route), async (_req, res) => {
        const s = await dbSession(db);
        await s.query(`INSERT INTO ${table} (text) VALUES ('e1')`);
        await s.query(`INSERT INTO ${table} (text) VALUES ('e2')`);
        res.send('ok');
      });
      const url = await listen(t, app);
      return async (path) => (await httpRequest(`${url}${path}`)).status;
    },
    koa: async (db) => {
      const app = new Koa();
      app.use(koaContextDb({ db }));
      const router = new Router();
      router.post('/q', koaOptions(route), async (ctx) => {
        const s = await dbSession(db);
        await s.query(`INSERT INTO ${table} (text) VALUES ('k1')`);
        await s.query(`INSERT INTO ${table} (text) VALUES ('k2')`);
        ctx.body = 'ok';
      });
      app.use(router.routes());
      const url = await serve(t, app);
      return async (path) => (await httpRequest(`${url}${path}`)).status;
    },
  };
  for (const [name, build] of Object.entries(frameworks)) {
    for (const defaults of [undefined, { idleInTransactionTimeout: 60000 } as TransactionOptions]) {
      const { db, sent } = countingDb(t, defaults);
      const send = await build(db);
      t.equal(await send('/q'), 200);
      await eventually(() => checkedOut(db) === 0);
      t.equal(sent.length, 4, `${name}${defaults ? ' + DbConnect defaults' : ''}: BEGIN, 2 × INSERT, COMMIT`);
      t.match(
        sent[0],
        /^BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL statement_timeout = 5000; SET LOCAL lock_timeout = 100/,
      );
    }
  }
});

t.test('hooks are awaited before the response is released, per framework', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const handler = async (events: string[], gate: Promise<void>) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('x')`);
    await onCommit(db, async () => {
      await gate;
      events.push('hook done');
    });
  };
  const servers: Record<string, (events: string[], gate: Promise<void>) => Promise<string>> = {
    fastify: async (events, gate) => {
      const app = Fastify();
      t.teardown(() => app.close());
      await app.register(contextDbPlugin, { db });
      app.post('/h', async () => {
        await handler(events, gate);
        return 'ok';
      });
      return app.listen({ port: 0, host: '127.0.0.1' });
    },
    express: async (events, gate) => {
      const app = express();
      app.use(expressContextDb({ db }));
      app.post('/h', async (_req, res) => {
        await handler(events, gate);
        res.send('ok');
      });
      return listen(t, app);
    },
    koa: async (events, gate) => {
      const app = new Koa();
      app.use(koaContextDb({ db }));
      app.use(async (ctx) => {
        await handler(events, gate);
        ctx.body = 'ok';
      });
      return serve(t, app);
    },
  };
  for (const [name, start] of Object.entries(servers)) {
    const events: string[] = [];
    const gate = deferred();
    const url = await start(events, gate.promise);
    const response = httpRequest(`${url}/h`, { onHead: () => events.push('response head') });
    await new Promise((resolve) => setTimeout(resolve, 200));
    gate.resolve();
    await response;
    t.same(events, ['hook done', 'response head'], `${name}: the hook finished before the response head`);
  }
});

t.test('a client abort during a nested block: rolled back, onRollback run, nothing left, no crash', async (t) => {
  const seen = crashes(t);
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const inBlock = deferred();
  const resume = deferred();
  const ran: string[] = [];
  const blockEnd = deferred<string>();
  const app = express();
  app.use(expressContextDb({ db }));
  app.post('/nested', async (_req, res) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('outer')`);
    await onRollback(db, () => void ran.push('outer rollback'));
    await atomicDbSession(
      db,
      async (s) => {
        await s.query(`INSERT INTO ${table} (text) VALUES ('inner')`);
        await onRollback(db, () => void ran.push('inner rollback'));
        inBlock.resolve();
        await resume.promise;
        await s.query(`INSERT INTO ${table} (text) VALUES ('after abort')`);
      },
      { currentTransaction: 'nested' },
    ).then(
      () => blockEnd.resolve('resolved'),
      (err: { code?: string }) => blockEnd.resolve(err.code ?? 'error'),
    );
    res.send('ok');
  });
  const url = await listen(t, app);
  const req = http.request(`${url}/nested`, { method: 'POST' });
  req.on('error', () => {});
  req.end();
  await inBlock.promise;
  req.destroy();
  t.ok(await eventually(async () => checkedOut(db) === 0 && (await activity(appName)).idleInTransaction === 0));
  resume.resolve();
  t.equal(await blockEnd.promise, 'SESSION_CLOSED', 'the block learns its session is gone');
  t.same(await texts(table), []);
  t.same(ran.sort(), ['inner rollback', 'outer rollback']);
  t.same(seen, []);
});

t.test('a hook may open a new context from the finishing request (newNonCtxSession too)', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('order')`);
    await onCommit(db, () =>
      newNonCtxSession(db, async (s) => {
        await s.query(`INSERT INTO ${table} (text) VALUES ('outbox')`);
        await s.commit();
      }),
    );
  });
  await ctx.run(() => ctx.finish());
  t.same(await texts(table), ['order', 'outbox']);
  t.equal(checkedOut(db), 0);
});

t.test('a nested block and hooks inside a beforeCommit; hooks on closeDbSession', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const insert = async (text: string) => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
  const ran: string[] = [];
  const ctx = new DbSessionCtx();
  await ctx.run(() => insert('request'));
  await ctx.run(() =>
    ctx.finish({
      beforeCommit: async () => {
        await atomicDbSession(
          db,
          async () => {
            await insert('dropped');
            await onCommit(db, () => void ran.push('dropped commit'));
            throw new Error('inner');
          },
          { currentTransaction: 'nested' },
        ).catch(() => {});
        await atomicDbSession(db, () => insert('audit'), { currentTransaction: 'nested' });
        await onCommit(db, () => void ran.push('beforeCommit hook'));
      },
    }),
  );
  t.same(await texts(table), ['request', 'audit']);
  t.same(ran, ['beforeCommit hook']);

  const ctx2 = new DbSessionCtx();
  await ctx2.run(async () => {
    await insert('closed');
    await onCommit(db, () => void ran.push('closed commit'));
    await onRollback(db, () => void ran.push('closed rollback'));
    await closeDbSession(db);
    await insert('kept');
    await onCommit(db, () => void ran.push('kept commit'));
  });
  await ctx2.finish();
  t.same(ran.slice(1), ['closed rollback', 'kept commit']);
  t.same(await texts(table), ['request', 'audit', 'kept']);
  t.equal(checkedOut(db), 0);
});

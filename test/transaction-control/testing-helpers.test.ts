// Transaction control (issue #12), from its review; every failure described here failed before its fix with the testing helpers: inside a test's transaction a request's
// transaction is a savepoint, so its options must apply to that savepoint only and leave the
// rest of the test's transaction as it was.
import { atomicDbSession, type DbSession, dbSession } from '@context-db/core';
import { putSavepointSessionInCtx, rollbackSession, setTestContext } from '@context-db/core/testing';
import { contextDbPlugin } from '@context-db/fastify';
import Fastify from 'fastify';
import t, { type Test } from 'tap';
import { checkedOut, createTable, type TestDb, testDb } from '../fixtures/db.js';

function inTestTransaction({ db }: TestDb, fn: (session: DbSession) => Promise<void>): Promise<void> {
  return setTestContext(() =>
    rollbackSession(db, (session) => putSavepointSessionInCtx(db, session, () => fn(session))),
  );
}

async function setting(session: DbSession, name: string): Promise<string | undefined> {
  const { rows } = await session.query<{ v: string }>('SELECT current_setting($1) AS v', [name]);
  return rows[0]?.v;
}

async function app(t: Test, testdb: TestDb, table: string) {
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db: testdb.db });
  app.post('/write', async () => {
    await (await dbSession(testdb.db)).query(`INSERT INTO ${table} (text) VALUES ('w')`);
    return 'ok';
  });
  app.post(
    '/fast-write',
    { config: { contextDb: { transaction: { statementTimeout: 1500, lockTimeout: 700 } } } },
    async () => {
      await (await dbSession(testdb.db)).query(`INSERT INTO ${table} (text) VALUES ('f')`);
      return 'ok';
    },
  );
  app.get('/report', { config: { contextDb: { transaction: { readOnly: true } } } }, async () => {
    const { rows } = await (await dbSession(testdb.db)).query(`SELECT count(*)::int AS n FROM ${table}`);
    return rows[0];
  });
  app.post('/nested', async () => {
    await (await dbSession(testdb.db)).query(`INSERT INTO ${table} (text) VALUES ('before')`);
    await atomicDbSession(
      testdb.db,
      async (s) => {
        await s.query(`INSERT INTO ${table} (text) VALUES ('dropped')`);
        throw new Error('inner');
      },
      { currentTransaction: 'nested' },
    ).catch(() => {});
    return 'ok';
  });
  return app;
}

t.test("the DbConnect's default timeouts survive a request committed inside the test's transaction", async (t) => {
  const testdb = testDb(t, {}, { transaction: { statementTimeout: 5000, lockTimeout: 3000 } });
  const table = await createTable(t);
  const a = await app(t, testdb, table);
  await inTestTransaction(testdb, async (session) => {
    t.equal(await setting(session, 'statement_timeout'), '5s', "the test's transaction begins with the default");
    t.equal((await a.inject({ method: 'POST', url: '/write' })).statusCode, 200);
    t.equal(await setting(session, 'statement_timeout'), '5s', 'still the default after the request');
    t.equal(await setting(session, 'lock_timeout'), '3s');
  });
  t.equal(checkedOut(testdb.db), 0);
});

t.test("a route's own timeouts end with its savepoint, restoring the test's values", async (t) => {
  const testdb = testDb(t, {}, { transaction: { statementTimeout: 5000 } });
  const table = await createTable(t);
  const a = await app(t, testdb, table);
  await inTestTransaction(testdb, async (session) => {
    t.equal((await a.inject({ method: 'POST', url: '/fast-write' })).statusCode, 200);
    t.equal(await setting(session, 'statement_timeout'), '5s', 'the test keeps its 5s, not the route 1.5s nor 0');
    t.equal(await setting(session, 'lock_timeout'), '0');
  });
});

t.test('held: a read-only route and a nested block inside the test transaction', async (t) => {
  const testdb = testDb(t);
  const table = await createTable(t);
  const a = await app(t, testdb, table);
  await inTestTransaction(testdb, async (session) => {
    t.equal((await a.inject({ method: 'GET', url: '/report' })).statusCode, 200);
    t.equal(await setting(session, 'transaction_read_only'), 'off', 'the test transaction is still read-write');
    t.equal((await a.inject({ method: 'POST', url: '/nested' })).statusCode, 200);
    const { rows } = await session.query<{ text: string }>(`SELECT text FROM ${table} ORDER BY id`);
    t.same(
      rows.map((r) => r.text),
      ['before'],
      'the nested block inside the request savepoint rolled back alone',
    );
  });
});

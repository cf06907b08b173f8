// The other test style of the seed: inside the test's context each request gets a context of its
// own whose sessions are savepoints in the test's transaction, so the test sees the app's writes
// on its own session and everything is rolled back at the end.
import { type DbSession, dbSession } from '@context-db/core';
import { putSavepointSessionInCtx, rollbackSession, setTestContext } from '@context-db/core/testing';
import type { FastifyInstance } from 'fastify';
import t from 'tap';
import { activity, checkedOut, createTable, type TestDb, testDb, texts } from '../fixtures/db.js';
import { exampleApp } from '../fixtures/fastify.js';

/** Run `fn` with the app sharing the test's rolled-back transaction (the seed's recipe). */
function inTestTransaction({ db }: TestDb, fn: (session: DbSession) => Promise<void>): Promise<void> {
  return setTestContext(() =>
    rollbackSession(db, (session) => putSavepointSessionInCtx(db, session, () => fn(session))),
  );
}

async function tableTexts(session: DbSession, table: string): Promise<string[]> {
  const { rows } = await session.query<{ text: string }>(`SELECT text FROM ${table} ORDER BY id`);
  return rows.map((row) => row.text);
}

// The routes whose work stays on the context session; the others (concurrent, opted-out) open
// connections of their own on purpose, which a shared transaction cannot cover.
const cases: readonly [url: string, texts: readonly string[]][] = [
  ['/simple', ['simple']],
  ['/atomic', ['atomic']],
  [
    '/atomic-prev-transaction',
    ['prev-committed', 'atomic-after-commit', 'atomic-after-rollback', 'prev-appended', 'atomic-appended'],
  ],
  ['/early-commit', ['early-commit-1', 'early-commit-2']],
  ['/early-rollback', ['early-rollback-kept']],
];

for (const [url, expected] of cases) {
  t.test(`POST ${url} in the test's transaction: seen by the test, rolled back after`, async (t) => {
    const testdb = testDb(t);
    const table = await createTable(t);
    const app: FastifyInstance = exampleApp(t, testdb.db, table);
    await inTestTransaction(testdb, async (session) => {
      const res = await app.inject({ method: 'POST', url });
      t.equal(res.statusCode, 200, res.body);
      t.same(await tableTexts(session, table), expected, "the app's writes, on the test's session");
      t.equal(checkedOut(testdb.db), 1, 'the app used the test connection only');
      t.same(await texts(table), [], 'not visible outside the test transaction');
    });
    t.same(await texts(table), [], 'nothing survives the test');
    t.equal(checkedOut(testdb.db), 0);
    t.equal((await activity(testdb.appName)).idleInTransaction, 0);
  });
}

t.test('GET /rows reads what the test inserted, through the shared transaction', async (t) => {
  const testdb = testDb(t);
  const table = await createTable(t);
  const app = exampleApp(t, testdb.db, table);
  await inTestTransaction(testdb, async (session) => {
    await session.query(`INSERT INTO ${table} (text) VALUES ('fixture')`);
    await app.inject({ method: 'POST', url: '/simple' });
    const res = await app.inject({ method: 'GET', url: '/rows' });
    t.same(res.json(), ['fixture', 'simple']);
  });
  t.same(await texts(table), []);
});

t.test("a request in a test's context gets a session of its own, inside the test's transaction", async (t) => {
  const testdb = testDb(t);
  const table = await createTable(t);
  const app = exampleApp(t, testdb.db, table);
  let inRequest: DbSession | undefined;
  app.post('/whoami', async () => {
    inRequest = await dbSession(testdb.db);
    await inRequest.query(`INSERT INTO ${table} (text) VALUES ('from-request')`);
    return {};
  });
  await inTestTransaction(testdb, async (session) => {
    const outside = await dbSession(testdb.db);
    t.equal((await app.inject({ method: 'POST', url: '/whoami' })).statusCode, 200);
    t.not(inRequest, outside, 'not the test session: two requests in one test do not share one');
    t.notOk(outside.closed, 'and the request left the test session open');
    t.same(await tableTexts(session, table), ['from-request'], "the request's write, seen by the test");
    t.equal(checkedOut(testdb.db), 1, 'on the test connection');
  });
  t.same(await texts(table), [], 'nothing survives the test');
});

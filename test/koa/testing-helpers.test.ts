// DESIGN "testing helpers": a test shares one outer transaction with the app; the app's commits
// become savepoint releases and everything is rolled back at the end. The test context reaches
// the Koa app over a real loopback request when the server starts listening inside it: Node
// carries the async context from listen() to every connection the server accepts.
import type { DbSession } from '@context-db/core';
import { putSavepointSessionInCtx, rollbackSession, setTestContext } from '@context-db/core/testing';
import t from 'tap';
import { buildApp } from '../../examples/koa/src/app.js';
import { activity, checkedOut, createTable, testDb, texts } from '../fixtures/db.js';
import { request, serve } from '../fixtures/koa.js';

t.test('the app runs in the test transaction: its work is visible to the test, then rolled back', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const rows = async (session: DbSession) =>
    (await session.query<{ text: string }>(`SELECT text FROM ${table} ORDER BY id`)).rows.map((row) => row.text);

  await setTestContext(() =>
    rollbackSession(db, (session) =>
      putSavepointSessionInCtx(db, session, async () => {
        const url = await serve(t, buildApp({ db, table }));
        t.equal((await request(`${url}/simple`)).status, 200);
        t.equal((await request(`${url}/early-commit`)).status, 200);
        t.same(await rows(session), ['simple', 'early-commit-1', 'early-commit-2'], 'the test sees the app rows');
        t.same(await texts(table), [], 'nothing committed: other connections see nothing');
        t.same(
          await request(`${url}/rows`, { method: 'GET' }),
          { status: 200, body: '["simple","early-commit-1","early-commit-2"]' },
          'the app reads the shared transaction too',
        );
        t.equal((await activity(appName)).total, 1, 'app and test share one connection');
      }),
    ),
  );
  t.same(await texts(table), [], 'rolled back at the end');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('a server listening outside the test context gives each request a context of its own', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const url = await serve(t, buildApp({ db, table }));
  await setTestContext(() =>
    rollbackSession(db, (session) =>
      putSavepointSessionInCtx(db, session, async () => {
        t.equal((await request(`${url}/simple`)).status, 200);
        t.same(await texts(table), ['simple'], 'committed by the request, not shared');
      }),
    ),
  );
  t.same(await texts(table), ['simple']);
});

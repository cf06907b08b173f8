// The example app: every route proven on the table, and the testing-helpers style (the app
// shares the test's transaction, nothing survives) over real HTTP.
import { putSavepointSessionInCtx, rollbackSession, setTestContext } from '@context-db/core/testing';
import t from 'tap';
import { buildApp } from '../../examples/express/src/app.js';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { exampleRouteCases } from '../fixtures/example-routes.js';
import { listen, request } from '../fixtures/express.js';

t.test('every example route does what it says, on the table', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = buildApp({ db, table });
  app.set('env', 'test');
  const url = await listen(t, app);

  const health = await request(`${url}/health`, { method: 'GET' });
  t.equal(health.status, 200, 'GET /health');
  t.equal((await activity(appName)).total, 0, 'GET /health took no connection');

  for (const { url: path, status, texts: rows } of exampleRouteCases) {
    const before = (await texts(table)).length;
    t.equal((await request(`${url}${path}`)).status, status, `POST ${path}: ${status}`);
    t.same((await texts(table)).slice(before).sort(), rows, `POST ${path}: ${rows.join(', ') || 'no row'}`);
  }
  const list = await request(`${url}/rows`, { method: 'GET' });
  t.equal(list.status, 200);
  t.same(JSON.parse(list.body), await texts(table), 'GET /rows lists the table');
  t.ok(await eventually(() => checkedOut(db) === 0), 'no connection held');
  t.equal((await activity(appName)).idleInTransaction, 0, 'no transaction left open');
});

t.test(
  'testing helpers over HTTP: the app shares the test transaction when its server listens inside the test context',
  async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    const app = buildApp({ db, table });
    app.set('env', 'test');

    await setTestContext(() =>
      rollbackSession(db, (session) =>
        putSavepointSessionInCtx(db, session, async () => {
          // A server's connections run in the async context of listen(): here, the test context.
          const url = await listen(t, app);
          // The requests join the test context, which they do not finish: nothing commits or rolls
          // back at their end, so early-rollback goes first (it would undo the others' open work).
          for (const path of ['/early-rollback', '/simple', '/atomic', '/early-commit']) {
            t.equal((await request(`${url}${path}`)).status, 200, `POST ${path}`);
          }
          const inTest = ['early-rollback-kept', 'simple', 'atomic', 'early-commit-1', 'early-commit-2'];
          const seen = await session.query<{ text: string }>(`SELECT text FROM ${table} ORDER BY id`);
          t.same(
            seen.rows.map((row) => row.text),
            inTest,
            "the test's session sees the app's work",
          );
          t.same(JSON.parse((await request(`${url}/rows`, { method: 'GET' })).body), inTest, 'so does the app');
          t.same(await texts(table), [], 'nothing is committed for anyone else');
        }),
      ),
    );
    t.same(await texts(table), [], 'nothing survives the test');

    // The context does not travel over the socket: a server listening outside it is on its own.
    const outside = await listen(t, app);
    await setTestContext(() =>
      rollbackSession(db, (session) =>
        putSavepointSessionInCtx(db, session, async () => {
          t.equal((await request(`${outside}/simple`)).status, 200);
        }),
      ),
    );
    t.same(await texts(table), ['simple'], 'a server started outside the test context commits for real');
  },
);

// The Koa example app, route by route, proven on the table it writes to.

import t from 'tap';
import { buildApp } from '../../examples/koa/src/app.js';
import { activity, admin, checkedOut, createTable, testDb, texts } from '../fixtures/db.js';
import { exampleRouteCases } from '../fixtures/example-routes.js';
import { collectErrors, request, serve } from '../fixtures/koa.js';

t.test('every example route does what it says, on the table', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = buildApp({ db, table });
  const errors = collectErrors(app);
  const url = await serve(t, app);

  for (const { url: route, status, texts: rows } of exampleRouteCases) {
    await admin.query(`DELETE FROM ${table}`);
    t.equal((await request(`${url}${route}`)).status, status, `POST ${route} answers ${status}`);
    t.same((await texts(table)).sort(), rows, `POST ${route} leaves ${rows.length} rows`);
    t.equal(checkedOut(db), 0, `POST ${route} gave its connections back`);
  }
  t.same(
    errors.map((err) => err.message),
    ['something went wrong after the insert'],
    'only /rollback-by-exception reached app.on("error")',
  );

  await admin.query(`DELETE FROM ${table}`);
  await admin.query(`INSERT INTO ${table} (text) VALUES ('a'), ('b')`);
  t.same(await request(`${url}/rows`, { method: 'GET' }), { status: 200, body: '["a","b"]' });
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('GET /health takes no connection', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const url = await serve(t, buildApp({ db, table }));
  t.same(await request(`${url}/health`, { method: 'GET' }), { status: 200, body: '{"status":"ok"}' });
  t.equal(db.pool().totalCount, 0, 'the pool never connected');
  t.equal((await activity(appName)).total, 0, 'no server connection');
});

t.test('unknown routes and methods answer 404 and 405 without a connection', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const url = await serve(t, buildApp({ db, table }));
  t.equal((await request(`${url}/nope`)).status, 404);
  t.equal((await request(`${url}/simple`, { method: 'GET' })).status, 405);
  t.equal((await activity(appName)).total, 0);
});

// The Koa example app, route by route, proven on the table it writes to.

import t from 'tap';
import { buildApp } from '../../examples/koa/src/app.js';
import { activity, admin, checkedOut, createTable, testDb, texts } from '../fixtures/db.js';
import { collectErrors, request, serve } from '../fixtures/koa.js';

t.test('every example route does what it says, on the table', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = buildApp({ db, table });
  const errors = collectErrors(app);
  const url = await serve(t, app);

  // Each case starts from an empty table and lists the rows the route leaves behind.
  const cases: [route: string, status: number, rows: string[]][] = [
    ['/simple', 200, ['simple']],
    ['/atomic', 200, ['atomic']],
    [
      '/atomic-prev-transaction',
      200,
      ['prev-committed', 'atomic-after-commit', 'atomic-after-rollback', 'prev-appended', 'atomic-appended'],
    ],
    ['/rollback-by-exception', 500, []],
    ['/rollback-by-status', 422, []],
    [
      '/concurrent',
      200,
      [
        'concurrent-context',
        'concurrent-new-ctx',
        'concurrent-new-ctx-manual',
        'concurrent-non-ctx',
        'concurrent-non-ctx-atomic',
      ],
    ],
    ['/early-commit', 200, ['early-commit-1', 'early-commit-2']],
    ['/early-close', 200, ['early-close-1', 'early-close-2']],
    ['/early-rollback', 200, ['early-rollback-kept']],
    ['/opted-out', 200, ['opted-out']],
  ];
  for (const [route, status, rows] of cases) {
    await admin.query(`DELETE FROM ${table}`);
    t.equal((await request(`${url}${route}`)).status, status, `POST ${route} answers ${status}`);
    // The concurrent route's rows arrive in any order.
    const stored = await texts(table);
    t.same(route === '/concurrent' ? stored.sort() : stored, rows, `POST ${route} leaves ${rows.length} rows`);
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

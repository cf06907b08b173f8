// Every route of the example app, proven on the database. The app uses its own sessions and
// connections; the test checks the table from outside, through the admin pool.
import t from 'tap';
import { activity, checkedOut, createTable, testDb, texts } from '../fixtures/db.js';
import { exampleRouteCases } from '../fixtures/example-routes.js';
import { exampleApp } from '../fixtures/fastify.js';

const cases = [...exampleRouteCases, { method: 'GET' as const, url: '/health', status: 200, texts: [] }];

for (const route of cases) {
  const { url, status } = route;
  const method = 'method' in route ? route.method : 'POST';
  t.test(`${method} ${url} answers ${status} and leaves ${JSON.stringify(route.texts)}`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const app = exampleApp(t, db, table);
    const res = await app.inject({ method, url });
    t.equal(res.statusCode, status, res.body);
    const found = await texts(table);
    t.same(found.sort(), route.texts);
    t.equal(checkedOut(db), 0, 'nothing checked out');
    t.equal((await activity(appName)).idleInTransaction, 0, 'nothing idle in transaction');
  });
}

t.test('GET /rows lists what the other routes committed', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = exampleApp(t, db, table);
  await app.inject({ method: 'POST', url: '/simple' });
  await app.inject({ method: 'POST', url: '/rollback-by-exception' });
  await app.inject({ method: 'POST', url: '/early-rollback' });
  const res = await app.inject({ method: 'GET', url: '/rows' });
  t.equal(res.statusCode, 200);
  t.same(res.json(), ['simple', 'early-rollback-kept']);
  t.equal(checkedOut(db), 0);
});

// The Fastify example's Kysely routes (examples/fastify/src/routes/kysely.ts), each proven on the
// table, and GET /kysely/rows streaming what they committed.
import t from 'tap';
import { builderExampleCases } from '../fixtures/builders.js';
import { activity, checkedOut, createTable, testDb, texts } from '../fixtures/db.js';
import { exampleApp } from '../fixtures/fastify.js';

for (const { url, status, texts: expected } of builderExampleCases('kysely')) {
  t.test(`POST ${url} answers ${status} and leaves ${JSON.stringify(expected)}`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const app = exampleApp(t, db, table);
    const res = await app.inject({ method: 'POST', url });
    t.equal(res.statusCode, status, res.body);
    t.same((await texts(table)).sort(), expected);
    t.equal(checkedOut(db), 0, 'nothing checked out');
    t.equal((await activity(appName)).idleInTransaction, 0, 'nothing idle in transaction');
  });
}

t.test('GET /kysely/rows streams the table on the request session', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = exampleApp(t, db, table);
  await app.inject({ method: 'POST', url: '/kysely/simple' });
  await app.inject({ method: 'POST', url: '/kysely/rollback-by-status' });
  await app.inject({ method: 'POST', url: '/kysely/early-commit' });
  const res = await app.inject({ method: 'GET', url: '/kysely/rows' });
  t.equal(res.statusCode, 200);
  t.same(res.json(), ['kysely-simple', 'kysely-early-commit-1', 'kysely-early-commit-2']);
  t.equal(checkedOut(db), 0);
});

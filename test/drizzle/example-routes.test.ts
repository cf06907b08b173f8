// The Express example's Drizzle routes (examples/express/src/drizzle-routes.ts), each proven on
// the table over real HTTP, and GET /drizzle/rows reading what they committed.
import t from 'tap';
import { buildApp } from '../../examples/express/src/app.js';
import { builderExampleCases } from '../fixtures/builders.js';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { listen, request } from '../fixtures/express.js';

t.test('every Drizzle route of the Express example does what it says, on the table', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = buildApp({ db, table });
  app.set('env', 'test');
  const url = await listen(t, app);

  for (const { url: path, status, texts: expected } of builderExampleCases('drizzle')) {
    const before = (await texts(table)).length;
    t.equal((await request(`${url}${path}`)).status, status, `POST ${path}: ${status}`);
    t.same((await texts(table)).slice(before).sort(), expected, `POST ${path}: ${expected.join(', ') || 'no row'}`);
    t.ok(await eventually(() => checkedOut(db) === 0), `POST ${path}: no connection held`);
    t.equal((await activity(appName)).idleInTransaction, 0, `POST ${path}: no transaction left open`);
  }
  const list = await request(`${url}/drizzle/rows`, { method: 'GET' });
  t.equal(list.status, 200);
  t.same(JSON.parse(list.body), await texts(table), 'GET /drizzle/rows lists the table');
});

// Every route of the example app, proven on the database. The app uses its own sessions and
// connections; the test checks the table from outside, through the admin pool.
import t from 'tap';
import { activity, checkedOut, createTable, testDb, texts } from '../fixtures/db.js';
import { exampleApp } from '../fixtures/fastify.js';

interface RouteCase {
  readonly method?: 'GET' | 'POST';
  readonly url: string;
  readonly status: number;
  /** The table's texts afterwards, in insertion order (sorted when `unordered`). */
  readonly texts: readonly string[];
  readonly unordered?: boolean;
}

const cases: readonly RouteCase[] = [
  { url: '/simple', status: 200, texts: ['simple'] },
  { url: '/atomic', status: 200, texts: ['atomic'] },
  {
    url: '/atomic-prev-transaction',
    status: 200,
    // 'prev-rolled-back' is gone: atomicDbSession with currentTransaction 'rollback' undid it.
    texts: ['prev-committed', 'atomic-after-commit', 'atomic-after-rollback', 'prev-appended', 'atomic-appended'],
  },
  { url: '/rollback-by-exception', status: 500, texts: [] },
  { url: '/rollback-by-status', status: 422, texts: [] },
  {
    url: '/concurrent',
    status: 200,
    // Five ways committed; the new context that threw was rolled back.
    texts: [
      'concurrent-context',
      'concurrent-new-ctx',
      'concurrent-new-ctx-manual',
      'concurrent-non-ctx',
      'concurrent-non-ctx-atomic',
    ],
    unordered: true,
  },
  { url: '/early-commit', status: 200, texts: ['early-commit-1', 'early-commit-2'] },
  { url: '/early-close', status: 200, texts: ['early-close-1', 'early-close-2'] },
  { url: '/early-rollback', status: 200, texts: ['early-rollback-kept'] },
  { url: '/opted-out', status: 200, texts: ['opted-out'] },
  { method: 'GET', url: '/health', status: 200, texts: [] },
];

for (const route of cases) {
  const { method = 'POST', url, status } = route;
  t.test(`${method} ${url} answers ${status} and leaves ${JSON.stringify(route.texts)}`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const app = exampleApp(t, db, table);
    const res = await app.inject({ method, url });
    t.equal(res.statusCode, status, res.body);
    const found = await texts(table);
    t.same(route.unordered ? found.sort() : found, route.texts);
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

// Many requests at once through a small pool: each request's outcome is its own, and nothing is
// left held afterwards.
import t from 'tap';
import { activity, admin, checkedOut, eventually, testDb, texts } from '../fixtures/db.js';
import { deferredTable, probeApp, type WriteBody } from '../fixtures/fastify.js';

const REQUESTS = 500;

t.test(`${REQUESTS} concurrent requests, half failing in mixed ways, through a pool of 10`, async (t) => {
  const { db, appName } = testDb(t, { max: 10 });
  const table = await deferredTable(t);
  await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'taken')`);
  const app = await probeApp(t, db, table);
  await app.ready();

  // Even requests succeed; odd ones fail in turn by a throw, a 4xx, a 5xx and a failed COMMIT.
  const failures: [Partial<WriteBody>, number][] = [
    [{ throw: true }, 500],
    [{ status: 422 }, 422],
    [{ status: 503 }, 503],
    [{ key: 'taken' }, 500],
  ];
  const requests = Array.from({ length: REQUESTS }, (_, i) => {
    const text = `r${String(i).padStart(3, '0')}`;
    const [extra, status] = i % 2 === 0 ? [{ key: text }, 200] : (failures[(i >> 1) % failures.length] ?? [{}, 0]);
    return { text, status, body: { text, delayMs: i % 5, ...extra } };
  });
  const responses = await Promise.all(
    requests.map(({ body }) => app.inject({ method: 'POST', url: '/write', payload: body })),
  );

  const wrongStatus = requests.filter(({ status }, i) => responses[i]?.statusCode !== status).map(({ text }) => text);
  t.same(wrongStatus, [], 'every request answered its expected status');
  const committed = requests.filter(({ status }) => status === 200).map(({ text }) => text);
  t.equal(committed.length, REQUESTS / 2);
  t.same((await texts(table)).sort(), ['existing', ...committed].sort(), 'exactly the successful rows');
  t.equal(checkedOut(db), 0, 'no connection checked out');
  t.ok(
    await eventually(async () => (await activity(appName)).idleInTransaction === 0),
    'no connection idle in transaction',
  );
  t.ok((await activity(appName)).total <= 10, 'the pool never grew past max');
});

// Request deadlines (the adapter's deadline option, setDbDeadline in a route, and Fastify's own
// handlerTimeout): the running statement is cancelled, the transaction rolled back, and the
// response is a 503, never a 2xx.
import { contextDbPlugin } from '@context-db/fastify';
import Fastify from 'fastify';
import t from 'tap';
import { deadlines, sleeping } from '../fixtures/cancel.js';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';

t.test('deadlines cancel, roll back and answer 503', (t) => deadlines(t, 'fastify'));

t.test("Fastify's handlerTimeout cancels the running statement and rolls back", async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  let failure: unknown;
  app.post('/slow', { handlerTimeout: 200 }, async (request) => {
    const session = await request.db.session();
    await session.query(`INSERT INTO ${table} (text) VALUES ('slow')`);
    try {
      await session.query('SELECT pg_sleep(3)');
    } catch (err) {
      failure = err;
      throw err;
    }
    return { ok: true };
  });
  const sent = performance.now();
  const response = await app.inject({ method: 'POST', url: '/slow' });
  t.comment(`answered ${(performance.now() - sent).toFixed(0)} ms after it was sent`);
  t.equal(response.statusCode, 503, "Fastify's timeout answer");
  t.ok(await eventually(() => failure !== undefined, 1000), 'the handler saw its statement fail at once');
  t.match(failure, { code: 'DEADLINE_EXCEEDED', sqlState: '57014', deadlineMs: 200 });
  t.equal(await sleeping(appName), 0, 'pg_sleep(3) no longer runs');
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
  t.same(await texts(table), [], 'nothing committed');
});

// Work a handler starts without awaiting it and that reaches the session after the reply was sent,
// while the request's COMMIT runs: it fails with SessionClosedError and writes nothing, and the
// response's own row is committed.
import { SessionClosedError } from '@context-db/core';
import t from 'tap';
import { activity, checkedOut, eventually, testDb, texts } from '../fixtures/db.js';
import { probeApp, slowCommitTable } from '../fixtures/fastify.js';

t.test('a query fired after the reply, while the COMMIT runs, fails with SessionClosedError', async (t) => {
  const { db, appName } = testDb(t);
  const table = await slowCommitTable(t, 0.3);
  const app = await probeApp(t, db, table);
  let late: Promise<unknown> = Promise.resolve('not fired');
  app.post('/fire-and-forget', async (request, reply) => {
    const session = await request.db.session();
    await session.query(`INSERT INTO ${table} (text) VALUES ('response')`);
    // Not awaited: it runs while onSend waits for the (slow) COMMIT.
    late = new Promise((resolve) => {
      setTimeout(() => {
        session.query(`INSERT INTO ${table} (text) VALUES ('late')`).then(resolve, resolve);
      }, 5);
    });
    return reply.send({ ok: true });
  });
  const res = await app.inject({ method: 'POST', url: '/fire-and-forget' });
  t.equal(res.statusCode, 200, res.body);
  t.type(await late, SessionClosedError, 'the late query failed');
  t.same(await texts(table), ['response'], "the response's row is committed, the late row is not");
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
});

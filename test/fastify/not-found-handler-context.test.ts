// The not-found handler is no route onRoute sees: the plugin's setNotFoundHandler wraps its
// handler (and its own hooks) to re-enter the request's context. A request parked by an app
// onRequest gate (added after the plugin) and resumed by another request's code must run
// setNotFoundHandler's handler with its own session, so its writes commit or roll back by its
// own status, not the other's. Both directions: a SPA fallback answering 200 whose write must
// commit, and a 404 whose write must not.
import type { DbConnect } from '@context-db/core';
import t, { type Test } from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { addOpener, gatedApp, postJson } from '../fixtures/fastify.js';

async function app(t: Test, db: DbConnect, table: string, notFoundStatus: number, openStatus: number) {
  const { app, write, parked, listen } = await gatedApp(t, db, table);
  app.addHook('onRequest', (request, _reply, done) => {
    if (request.url === '/missing') parked.push(done);
    else done();
  });
  app.setNotFoundHandler(async (request, reply) => {
    await write(`${request.url} not found`);
    return reply.code(notFoundStatus).send({ fallback: true });
  });
  addOpener(app, write, parked, openStatus);
  return { port: await listen(), parked };
}

for (const [notFoundStatus, openStatus, expected] of [
  [200, 409, ['/missing not found']],
  [404, 200, ['/open handler']],
] as const) {
  t.test(
    `a parked request's not-found handler (${notFoundStatus}, resumed by a ${openStatus}) uses its own session`,
    async (t) => {
      const { db, appName } = testDb(t);
      const table = await createTable(t);
      const { port, parked } = await app(t, db, table, notFoundStatus, openStatus);
      const parkedAnswer = postJson(port, '/missing', '{}');
      t.ok(await eventually(() => parked.length === 1), 'a request is parked');
      t.equal(await postJson(port, '/open', '{}'), openStatus, 'the request that resumed it');
      t.equal(await parkedAnswer, notFoundStatus, "the not-found handler's answer");
      t.same(await texts(table), expected, "each request's writes follow its own status");
      t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
      t.equal((await activity(appName)).idleInTransaction, 0);
    },
  );
}

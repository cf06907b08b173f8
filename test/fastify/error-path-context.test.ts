// The error path. A callback-style gate that parks a request and is resumed by another request's
// code with done(err) (a lock whose holder failed, a queue that rejects): Fastify goes straight
// from that done(err) to the app's onError hooks and its error handler. The plugin's own onError
// hook re-enters the request's context, so an error handler that writes (an audit row, a
// fallback answer) writes in the failed request's transaction, which rolls back (any error
// does, whatever status the error handler sends), not in the resumer's. Also checked: a hook
// that fails after the gate resumed it normally; its error handler writes in its own transaction.
import type { DbConnect } from '@context-db/core';
import type { FastifyError } from 'fastify';
import t, { type Test } from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { addOpener, gatedApp, postJson } from '../fixtures/fastify.js';

type Gate = 'preValidation gate' | 'onRequest gate';

/**
 * /park?fail is parked by `gate` until POST /open resumes it with done(err: 503); /park?later is
 * resumed with done() and its app preHandler hook throws (503). The error handler writes
 * `<url> error handler` and answers `errorStatus`; an app onError hook writes `<url> onError`.
 * POST /open writes `/open handler`, resumes the parked request and answers 200 (commits).
 */
async function app(t: Test, db: DbConnect, table: string, gate: Gate, errorStatus: number) {
  const { app, write, parked, listen } = await gatedApp<(err?: Error) => void>(t, db, table);
  const park = (request: { query: unknown }, done: (err?: Error) => void) => {
    const query = request.query as object;
    if ('fail' in query) parked.push(() => done(Object.assign(new Error('gate refused'), { statusCode: 503 })));
    else if ('later' in query) parked.push(() => done());
    else done();
  };
  app.setErrorHandler(async (error: FastifyError, request, reply) => {
    await write(`${request.url} error handler`);
    return reply.code(errorStatus).send({ error: error.message });
  });
  app.addHook('onError', async (request) => {
    await write(`${request.url} onError`);
  });
  if (gate === 'onRequest gate') app.addHook('onRequest', (request, _reply, done) => park(request, done));
  else app.addHook('preValidation', (request, _reply, done) => park(request, done));
  app.addHook('preHandler', async (request) => {
    if ('later' in (request.query as object)) throw Object.assign(new Error('hook failed'), { statusCode: 503 });
  });
  app.post('/park', async () => ({ ok: true }));
  addOpener(app, write, parked, 200);
  return { port: await listen(), parked };
}

for (const gate of ['onRequest gate', 'preValidation gate'] as const) {
  for (const [query, how] of [
    ['fail', 'resumed with done(err)'],
    ['later', 'resumed, then a hook throws'],
  ] as const) {
    for (const errorStatus of [200, 422]) {
      t.test(`${gate} ${how}: the error handler (${errorStatus}) writes in its own request`, async (t) => {
        const { db, appName } = testDb(t);
        const table = await createTable(t);
        const { port, parked } = await app(t, db, table, gate, errorStatus);
        const url = `/park?${query}`;
        const parkedAnswer = postJson(port, url, '{}');
        t.ok(await eventually(() => parked.length === 1), 'a request is parked');
        t.equal(await postJson(port, '/open', '{}'), 200, 'the request that resumed it commits');
        t.equal(await parkedAnswer, errorStatus, "the error handler's answer");
        t.same(
          await texts(table),
          ['/open handler'],
          "the failed request's writes (error handler, onError) roll back with it, not commit with /open",
        );
        t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
        t.equal((await activity(appName)).idleInTransaction, 0);
      });
    }
  }
}

// App onRequest hooks get a re-entering hook before each, like the later phases' hooks. An app
// onRequest hook added after the plugin, after a callback-style onRequest gate (a rate limiter,
// a queue) that parks the request, would otherwise run wherever the gate's done() is called:
// resumed from another request's code, in that request's context, with its session (its write
// committing or rolling back with the other request), and, for an opted-out route, in a context
// where it had none. An auth hook using the database after a rate limiter is the usual shape.
import { type DbConnect, isContextInitiated } from '@context-db/core';
import t, { type Test } from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { addOpener, gatedApp, postJson } from '../fixtures/fastify.js';

async function app(t: Test, db: DbConnect, table: string) {
  const { app, write, parked, listen } = await gatedApp(t, db, table);
  const seenContext: Record<string, boolean> = {};
  // The gate: a callback-style onRequest hook that parks ?park requests.
  app.addHook('onRequest', (request, _reply, done) => {
    if ('park' in (request.query as object)) parked.push(done);
    else done();
  });
  // The app's next onRequest hook (an auth check, say) uses the request's session.
  app.addHook('onRequest', async function authHook(request) {
    const url = request.routeOptions.url ?? request.url;
    seenContext[url] = isContextInitiated();
    if (request.routeOptions.config.contextDb !== false) await write(`${url} onRequest`);
  });
  app.post('/r', async () => {
    await write('/r handler');
    return { ok: true };
  });
  app.post('/out', { config: { contextDb: false } }, async () => ({ ok: true }));
  addOpener(app, write, parked);
  const port = await listen();
  t.comment(app.printRoutes({ commonPrefix: false, includeHooks: true }));
  return { port, parked, seenContext };
}

t.test("an app onRequest hook after a parked onRequest gate runs in its request's context", async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const { port, parked } = await app(t, db, table);
  t.equal(await postJson(port, '/r', '{}'), 200, 'a request nothing parks');
  t.same((await texts(table)).sort(), ['/r handler', '/r onRequest'], 'it commits both writes');
  const parkedAnswer = postJson(port, '/r?park', '{}');
  t.ok(await eventually(() => parked.length === 1), 'a request is parked');
  t.equal(await postJson(port, '/open', '{}'), 409, 'the request that resumed it rolls back');
  t.equal(await parkedAnswer, 200, 'the resumed request answers 200');
  t.same(
    (await texts(table)).sort(),
    ['/r handler', '/r handler', '/r onRequest', '/r onRequest'],
    "the resumed request's onRequest write is committed with it, not rolled back with /open",
  );
  t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('an app onRequest hook of an opted-out route after a parked gate runs outside any context', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const { port, parked, seenContext } = await app(t, db, table);
  t.equal(await postJson(port, '/out', '{}'), 200, 'an opted-out request nothing parks');
  t.equal(seenContext['/out'], false, 'its onRequest hook runs outside any context');
  const parkedAnswer = postJson(port, '/out?park', '{}');
  t.ok(await eventually(() => parked.length === 1), 'an opted-out request is parked');
  t.equal(await postJson(port, '/open', '{}'), 409, 'the request that resumed it');
  t.equal(await parkedAnswer, 200, 'the resumed opted-out request');
  t.equal(seenContext['/out'], false, 'its onRequest hook still runs outside any context');
});

// Review of 2c86b15 (re-entering hooks before each app hook of preParsing, preValidation,
// preHandler and preSerialization). onRequest is not among those phases: an app onRequest hook
// added after the plugin, after a callback-style onRequest gate (a rate limiter, a queue) that
// parks the request, runs wherever the gate's done() is called. Resumed from another request's
// code, it runs in that request's context: its dbSession() is the other request's session (its
// write commits or rolls back with the other request), and for an opted-out route it finds a
// context where it had none. An auth hook reading or writing the database in onRequest after a
// rate limiter is the usual shape. Todo (REVIEW_RUN_TODO=1 runs the failing assertions).
import type { AddressInfo } from 'node:net';
import { type DbConnect, dbSession, isContextInitiated } from '@context-db/core';
import { contextDbPlugin } from '@context-db/fastify';
import Fastify from 'fastify';
import t, { type Test } from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { postJson } from '../fixtures/fastify.js';

const runTodo = process.env.REVIEW_RUN_TODO === '1';

async function app(t: Test, db: DbConnect, table: string) {
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  const write = async (text: string) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
  };
  const parked: (() => void)[] = [];
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
  app.post('/open', async (_request, reply) => {
    await write('/open handler');
    for (const resume of parked.splice(0)) resume();
    await new Promise((resolve) => setTimeout(resolve, 50));
    return reply.code(409).send({ conflict: true });
  });
  await app.listen({ port: 0, host: '127.0.0.1' });
  t.comment(app.printRoutes({ commonPrefix: false, includeHooks: true }));
  return { port: (app.server.address() as AddressInfo).port, parked, seenContext };
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
    { todo: !runTodo && 'app onRequest hooks get no re-entering hook: the auth hook wrote in /open' },
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
  t.equal(seenContext['/out'], false, 'its onRequest hook still runs outside any context', {
    todo: !runTodo && "app onRequest hooks get no re-entering hook: it ran in /open's context",
  });
});

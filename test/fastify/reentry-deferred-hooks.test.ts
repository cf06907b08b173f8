// The plugin's addHook puts a re-entering hook right before each app hook of preParsing,
// preValidation, preHandler and preSerialization. Fastify adds request hooks later than addHook is
// called, in an after() callback of the scope's queue, and what avvio loads in between (a
// fastify-plugin plugin or a child scope registered, not awaited, just before) adds its own hooks
// of the phase first; once the plugin marked a phase as re-entered at the first addHook, so those
// ran before any re-entering hook, and a request parked earlier (an app onRequest gate) and
// resumed by another request's code ran them in the other request's transaction. Each app is
// printed with its hooks (t.comment) to show the order Fastify ended up with.
import type { DbConnect } from '@context-db/core';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import t, { type Test } from 'tap';
import { activity, admin, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { addOpener, gatedApp, postJson } from '../fixtures/fastify.js';

type Phase = 'preValidation' | 'preHandler';
type How = 'fastify-plugin plugin' | 'child scope';

/**
 * Every hook and handler writes `<route> <name>` with dbSession(). A request to `<route>?park`
 * is parked by an app onRequest gate (added after the plugin) until POST /open, which writes
 * `/open handler`, resumes it and answers 409 (rolls back).
 */
async function app(t: Test, db: DbConnect, table: string, phase: Phase, how: How) {
  const { app, write, parked, listen } = await gatedApp(t, db, table);
  app.addHook('onRequest', (request, _reply, done) => {
    if ('park' in (request.query as object)) parked.push(done);
    else done();
  });
  const hooked = (scope: FastifyInstance, name: string) => {
    scope.addHook(phase, async function pluginHook(request) {
      await write(`${request.routeOptions.url} ${name}`);
    });
  };
  if (how === 'fastify-plugin plugin') {
    // An auth plugin, say: shares the app's scope; registered, not awaited, as is usual.
    app.register(fp(async (scope) => hooked(scope, 'plugin hook')));
  } else {
    app.register(async (child) => {
      hooked(child, 'child hook');
      child.post('/c', async () => {
        await write('/c handler');
        return { ok: true };
      });
    });
  }
  // The app's own hook of the same phase, added right after (the scope's first of the phase).
  app.addHook(phase, async function appHook(request) {
    await write(`${request.routeOptions.url} app hook`);
  });
  app.post('/r', async () => {
    await write('/r handler');
    return { ok: true };
  });
  addOpener(app, write, parked);
  const port = await listen();
  t.comment(app.printRoutes({ commonPrefix: false, includeHooks: true }));
  return { port, parked };
}

for (const phase of ['preValidation', 'preHandler'] as const) {
  for (const [how, route, name] of [
    ['fastify-plugin plugin', '/r', 'plugin hook'],
    ['child scope', '/c', 'child hook'],
  ] as const) {
    t.test(`a ${phase} hook of a ${how} registered before the app's own runs in its request's context`, async (t) => {
      const { db, appName } = testDb(t);
      const table = await createTable(t);
      const { port, parked } = await app(t, db, table, phase, how);
      const expected = [`${route} ${name}`, `${route} app hook`, `${route} handler`].sort();
      t.equal(await postJson(port, route, '{"a":1}'), 200, 'a request nothing parks');
      t.same((await texts(table)).sort(), expected, 'it commits all its writes');
      await admin.query(`TRUNCATE ${table}`);

      const parkedAnswer = postJson(port, `${route}?park`, '{"a":2}');
      t.ok(await eventually(() => parked.length === 1), 'a request is parked');
      t.equal(await postJson(port, '/open', '{}'), 409, 'the request that resumed it rolls back');
      t.equal(await parkedAnswer, 200, 'the resumed request answers 200');
      t.same((await texts(table)).sort(), expected, "each write was made in its own request's transaction");
      t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
      t.equal((await activity(appName)).idleInTransaction, 0);
    });
  }
}

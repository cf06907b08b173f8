// The plugin puts a re-entering hook right before each app hook of onRequest, preParsing,
// preValidation, preHandler and preSerialization (a phase without hooks, which Fastify skips,
// gets none), and re-enters in each route's handler. What is checked: an app hook of each phase,
// added after the plugin in the root scope or in a child scope, finds the request's own session
// when the request was parked before it (in an app onRequest hook, or a reply sent from a parked
// callback) and resumed by another request's code; so does a handler after a hook the plugin
// never saw (added before it); and the phases the app leaves empty stay without hooks.
import type { AddressInfo } from 'node:net';
import type { DbConnect } from '@context-db/core';
import { contextDbPlugin } from '@context-db/fastify';
import Fastify, { type FastifyInstance } from 'fastify';
import t, { type Test } from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { addOpener, gatedApp, postJson, writer } from '../fixtures/fastify.js';

type Phase = 'preParsing' | 'preValidation' | 'preHandler' | 'preSerialization';
const phases: readonly Phase[] = ['preParsing', 'preValidation', 'preHandler', 'preSerialization'];

/**
 * An app whose hook of `phase` (in `where`) writes `<url> <phase>` with dbSession(), and whose
 * POST /w handler writes `/w handler`. POST /park is parked until POST /open runs: in an app
 * onRequest hook, or (preSerialization) its handler sends the reply from a parked callback.
 */
async function hookedApp(t: Test, db: DbConnect, table: string, phase: Phase, where: 'root' | 'child') {
  const { app, write, parked, listen } = await gatedApp(t, db, table);
  const routes = async (scope: FastifyInstance) => {
    scope.addHook('onRequest', (request, _reply, done) => {
      if (request.url === '/park' && phase !== 'preSerialization') parked.push(done);
      else done();
    });
    if (phase === 'preParsing') {
      scope.addHook(phase, async (request, _reply, payload) => {
        await write(`${request.url} ${phase}`);
        return payload;
      });
    } else if (phase === 'preSerialization') {
      scope.addHook(phase, async (request, _reply, payload: unknown) => {
        await write(`${request.url} ${phase}`);
        return payload;
      });
    } else {
      scope.addHook(phase, async (request) => write(`${request.url} ${phase}`));
    }
    scope.post('/w', async () => {
      await write('/w handler');
      return { ok: true };
    });
    scope.post('/park', async (_request, reply) => {
      await write('/park handler');
      if (phase !== 'preSerialization') return { ok: true };
      parked.push(() => void reply.send({ ok: true }));
      return reply;
    });
  };
  if (where === 'root') await routes(app);
  else await app.register(routes);
  addOpener(app, write, parked);
  return { app, port: await listen(), parked };
}

for (const phase of phases) {
  for (const where of ['root', 'child'] as const) {
    t.test(`an app ${phase} hook in the ${where} scope runs in the request's context`, async (t) => {
      const { db, appName } = testDb(t);
      const table = await createTable(t);
      const { port, parked } = await hookedApp(t, db, table, phase, where);
      t.equal(await postJson(port, '/w', '{"a":1}'), 200, 'a body read over the socket');
      const parkedAnswer = postJson(port, '/park', '{"a":2}');
      t.ok(await eventually(() => parked.length === 1), 'a request is parked');
      t.equal(await postJson(port, '/open', '{}'), 409, 'the request that resumed it rolls back');
      t.equal(await parkedAnswer, 200, 'the resumed request commits by its own status');
      t.same(
        (await texts(table)).sort(),
        [`/park ${phase}`, '/park handler', `/w ${phase}`, '/w handler'].sort(),
        "each hook wrote in its own request's transaction",
      );
      t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
      t.equal((await activity(appName)).idleInTransaction, 0);
    });
  }
}

t.test('the phases the app gives no hooks stay without the plugin hooks', async (t) => {
  const { db } = testDb(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.post('/r', async () => ({ ok: true }));
  await app.register(async (child) => {
    child.addHook('preValidation', async function appHook() {});
    child.post('/c', async () => ({ ok: true }));
  });
  await app.ready();
  const routes = app.printRoutes({ commonPrefix: false, includeHooks: true });
  t.comment(routes);
  t.notMatch(routes, /preParsing|preHandler|preSerialization/, 'no route has hooks in phases the app left empty');
  t.match(
    routes,
    /\/c \(POST\)[\s\S]*• \(preValidation\) \["reenter\(\)","appHook\(\)"\]/,
    'the re-entering hook comes first',
  );
});

t.test("a handler after a parked hook added before the plugin runs in its request's context", async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = Fastify();
  t.teardown(() => app.close());
  const parked: (() => void)[] = [];
  // Added before the plugin: its addHook does not see it, and no phase start follows it.
  app.addHook('preHandler', (request, _reply, done) => {
    if (request.url === '/park') parked.push(done);
    else done();
  });
  await app.register(contextDbPlugin, { db });
  const write = writer(db, table);
  app.post('/park', async () => {
    await write('/park handler');
    return { ok: true };
  });
  addOpener(app, write, parked);
  await app.listen({ port: 0, host: '127.0.0.1' });
  const port = (app.server.address() as AddressInfo).port;
  const parkedAnswer = postJson(port, '/park', '{}');
  t.ok(await eventually(() => parked.length === 1), 'a request is parked');
  t.equal(await postJson(port, '/open', '{}'), 409, 'the request that resumed it rolls back');
  t.equal(await parkedAnswer, 200, 'the resumed request commits by its own status');
  t.same(await texts(table), ['/park handler'], "the handler wrote in its own request's transaction");
  t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
  t.equal((await activity(appName)).idleInTransaction, 0);
});

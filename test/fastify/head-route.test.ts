// Fastify's automatic HEAD route and the decision.

import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { contextDbPlugin } from '@context-db/fastify';
import Fastify, { type FastifyPluginAsync } from 'fastify';
import fp from 'fastify-plugin';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';

t.test('HEAD on a GET route returning an endless web stream cancels the stream, as Fastify does', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  let pulls = 0;
  let cancelled = false;
  let stop = false; // ends the endless body at teardown, so that the test process can exit
  t.teardown(() => {
    stop = true;
  });
  app.get('/ticker', async (request, reply) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('tick')`);
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        pulls++;
        await sleep(1);
        if (stop) return controller.close();
        controller.enqueue(new TextEncoder().encode('tick\n'));
      },
      cancel() {
        cancelled = true;
      },
    });
    return reply.type('text/plain').send(body);
  });
  const res = await app.inject({ method: 'HEAD', url: '/ticker' });
  t.equal(res.statusCode, 200);
  await sleep(200);
  const after = pulls;
  await sleep(200);
  t.ok(cancelled, 'the web stream is cancelled (Fastify cancels a HEAD web stream body)');
  t.equal(pulls, after, 'nothing keeps reading the endless body after the HEAD response');
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
});

// Like @fastify/compress (global) or any plugin that gives every route an onSend hook of its own
// through onRoute, registered before context-db.
const addsOnSend: FastifyPluginAsync = fp(async (app) => {
  app.addHook('onRoute', (route) => {
    const hooks = route.onSend === undefined ? [] : Array.isArray(route.onSend) ? route.onSend : [route.onSend];
    route.onSend = [...hooks, (_request, _reply, payload, done) => done(null, payload)];
  });
});

t.test(
  'HEAD on a GET route whose stream fails before its first chunk rolls back, with an onRoute plugin before',
  async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const app = Fastify();
    t.teardown(() => app.close());
    await app.register(addsOnSend);
    await app.register(contextDbPlugin, { db });
    app.get('/stream', async (request, reply) => {
      await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('head')`);
      return reply.type('text/plain').send(
        Readable.from(
          (async function* () {
            await sleep(10);
            throw new Error('the export failed before any row');
            // biome-ignore lint/correctness/noUnreachable: never yields
            yield 'never';
          })(),
        ),
      );
    });
    const get = await app.inject({ method: 'GET', url: '/stream' });
    t.equal(get.statusCode, 500, 'GET: 500');
    const head = await app.inject({ method: 'HEAD', url: '/stream' });
    t.equal(head.statusCode, 500, 'HEAD: 500, as without the other plugin (test/fastify/streams.test.ts)');
    t.same(await texts(table), [], 'rolled back both times');
    t.ok(await eventually(() => checkedOut(db) === 0));
    t.equal((await activity(appName)).idleInTransaction, 0);
  },
);

// A Response that is not the global class (npm undici's fetch, another realm).
// Fastify recognises a Response by Object.prototype.toString ('[object Response]') and a web
// stream by getReader: the plugin must too.
import { createRequire } from 'node:module';
import { setTimeout as sleep } from 'node:timers/promises';
import { contextDbPlugin } from '@context-db/fastify';
import Fastify from 'fastify';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';

// npm undici (as `import { fetch, Response } from 'undici'` gives an app): its own Response class.
const undici = createRequire(import.meta.url)('../../node_modules/.pnpm/undici@6.29.1/node_modules/undici') as {
  Response: typeof Response;
};

t.test('an undici Response decides by its own status before the commit', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.post('/proxy', async (request, reply) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('proxied')`);
    // The upstream answered 404: the client gets 404.
    return reply.send(new undici.Response('upstream: not found', { status: 404 }));
  });
  t.notOk(new undici.Response('x') instanceof Response, 'not the global Response class');
  const res = await app.inject({ method: 'POST', url: '/proxy' });
  t.equal(res.statusCode, 404);
  t.same(await texts(table), [], 'a 404 rolls back');
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('an undici Response whose body fails before its first chunk rolls back', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.post('/proxy', async (request, reply) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('proxied')`);
    const body = new ReadableStream({
      async pull(controller) {
        await sleep(10);
        controller.error(new Error('upstream reset'));
      },
    });
    return reply.send(new undici.Response(body, { status: 200 }));
  });
  const res = await app.inject({ method: 'POST', url: '/proxy' });
  t.equal(res.statusCode, 500);
  t.same(await texts(table), [], 'a 500 means none of the writes are durable');
});

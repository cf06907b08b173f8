// Serializers, an app injected into from another app, a status without a body.
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { dbSession } from '@context-db/core';
import { contextDbPlugin } from '@context-db/fastify';
import Fastify from 'fastify';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { crashes } from '../fixtures/fastify.js';

t.test('a failing serializer (response schema, custom serializer) rolls back', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const seen = crashes(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.post(
    '/schema',
    { schema: { response: { 200: { type: 'object', required: ['id'], properties: { id: { type: 'integer' } } } } } },
    async (request) => {
      await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('schema')`);
      return { other: 1 };
    },
  );
  app.post('/custom', async (request, reply) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('custom')`);
    return reply
      .serializer(() => {
        throw new Error('cannot serialise');
      })
      .send({ a: 1 });
  });
  t.equal((await app.inject({ method: 'POST', url: '/schema' })).statusCode, 500);
  t.equal((await app.inject({ method: 'POST', url: '/custom' })).statusCode, 500);
  t.same(await texts(table), []);
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
  t.same(seen, []);
});

t.test('an app injected into from another app request keeps its own context and outcome', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const inner = Fastify();
  const outer = Fastify();
  t.teardown(() => inner.close());
  t.teardown(() => outer.close());
  await inner.register(contextDbPlugin, { db });
  await outer.register(contextDbPlugin, { db });
  inner.post<{ Querystring: { status: string } }>('/inner', async (request, reply) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('inner-' || $1)`, [request.query.status]);
    return reply.code(Number(request.query.status)).send('inner');
  });
  outer.post<{ Querystring: { inner: string; outer: string } }>('/outer', async (request, reply) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('outer-' || $1)`, [request.query.outer]);
    const res = await inner.inject({ method: 'POST', url: `/inner?status=${request.query.inner}` });
    return reply.code(Number(request.query.outer)).send(`outer saw ${res.statusCode}`);
  });
  t.equal((await outer.inject({ method: 'POST', url: '/outer?inner=500&outer=200' })).statusCode, 200);
  t.equal((await outer.inject({ method: 'POST', url: '/outer?inner=201&outer=409' })).statusCode, 409);
  t.same((await texts(table)).sort(), ['inner-201', 'outer-200']);
});

t.test('a 204 with a stream body that produces nothing for a while does not hold the transaction', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.post('/w', async (request, reply) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('x')`);
    // Fastify discards the body of a 204 (resumes the stream) and answers at once.
    return reply.code(204).send(
      Readable.from(
        (async function* () {
          await sleep(1500);
          yield 'ignored';
        })(),
      ),
    );
  });
  const started = Date.now();
  const res = await app.inject({ method: 'POST', url: '/w' });
  t.equal(res.statusCode, 204);
  t.ok(Date.now() - started < 500, `answered at once, as without the plugin (took ${Date.now() - started} ms)`);
  t.same(await texts(table), ['x']);
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
});

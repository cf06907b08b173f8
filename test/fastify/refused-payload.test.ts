// What Fastify refuses while writing a response must be refused before the COMMIT.
import { contextDbPlugin } from '@context-db/fastify';
import Fastify from 'fastify';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { crashes } from '../fixtures/fastify.js';

t.test('a payload Fastify refuses to write (object with a text/plain type) answers 500 and rolls back', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const seen = crashes(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.post('/note', async (request, reply) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('note')`);
    // Fastify serialises only JSON-ish types; this payload reaches onSendEnd as an object,
    // which throws FST_ERR_REP_INVALID_PAYLOAD_TYPE: the client gets a 500.
    return reply.type('text/plain').send({ not: 'a string' });
  });
  const res = await app.inject({ method: 'POST', url: '/note' });
  t.equal(res.statusCode, 500);
  t.same(await texts(table), [], 'a 500 means none of the writes are durable');
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
  t.same(seen, []);
});

t.test('a Response whose body was already read answers 500 and rolls back', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const seen = crashes(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.post('/note', async (request, reply) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('note')`);
    const upstream = new Response('proxied', { status: 201 });
    await upstream.text(); // consumed by mistake: Fastify throws FST_ERR_REP_RESPONSE_BODY_CONSUMED
    return reply.send(upstream);
  });
  const res = await app.inject({ method: 'POST', url: '/note' });
  t.equal(res.statusCode, 500);
  t.same(await texts(table), [], 'a 500 means none of the writes are durable');
  t.same(seen, []);
});

// onSend hooks of the app and of the route run before the response is written, and may still
// fail it: the plugin decides in the route's last onSend hook, after all of them, so that a 500
// from any of them never comes with a COMMIT.
import { contextDbPlugin } from '@context-db/fastify';
import Fastify from 'fastify';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { probeApp } from '../fixtures/fastify.js';

t.test('a route-level onSend hook that fails answers 500 and rolls back', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = await probeApp(t, db, table);
  app.post(
    '/notes',
    // Fastify runs a route's own onSend hooks after the app's, the plugin's included.
    { onSend: (_request, _reply, _payload, done) => done(new Error('signing the response failed')) },
    async (request) => {
      await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('note')`);
      return { ok: true };
    },
  );
  const res = await app.inject({ method: 'POST', url: '/notes' });
  t.equal(res.statusCode, 500);
  t.equal(res.json().message, 'signing the response failed');
  t.same(await texts(table), [], 'a 500 means none of the writes are durable');
  t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('an async onSend hook added after the plugin that fails answers 500 and rolls back', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = await probeApp(t, db, table);
  app.addHook('onSend', async (_request, reply, payload) => {
    if (reply.statusCode === 200) throw new Error('response too large for the gateway');
    return payload;
  });
  const res = await app.inject({ method: 'POST', url: '/write', payload: { text: 'note' } });
  t.equal(res.statusCode, 500);
  t.equal(res.json().message, 'response too large for the gateway');
  t.same(await texts(table), [], 'a 500 means none of the writes are durable');
  t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('onSend hooks that pass let the response commit, with what they changed', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = await probeApp(t, db, table);
  app.addHook('onSend', async (_request, reply, payload) => {
    reply.header('x-app', 'seen');
    return payload;
  });
  app.post(
    '/notes',
    { onSend: (_request, reply, payload, done) => done(null, `${String(payload)} ${reply.getHeader('x-app')}`) },
    async (request) => {
      await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('note')`);
      return 'stored';
    },
  );
  const res = await app.inject({ method: 'POST', url: '/notes' });
  t.equal(res.statusCode, 200);
  t.equal(res.body, 'stored seen');
  t.same(await texts(table), ['note']);
});

t.test('a route declared before the plugin loaded is decided in the app-level onSend hook', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = Fastify();
  t.teardown(() => app.close());
  app.register(contextDbPlugin, { db }); // not awaited: the route below is declared first
  app.post<{ Querystring: { status: string } }>('/notes', async (request, reply) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ($1)`, [request.query.status]);
    return reply.code(Number(request.query.status)).send({ ok: true });
  });
  t.equal((await app.inject({ method: 'POST', url: '/notes?status=201' })).statusCode, 201);
  t.equal((await app.inject({ method: 'POST', url: '/notes?status=409' })).statusCode, 409);
  t.same(await texts(table), ['201'], 'the 201 committed, the 409 rolled back');
  t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
  t.equal((await activity(appName)).idleInTransaction, 0);
});

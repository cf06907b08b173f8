// What the client is told matches what the database holds, whatever the handler does around its
// reply: a second send, a header Node refuses, headers meant for a success that did not happen.
import type { FastifyReply } from 'fastify';
import t from 'tap';
import { activity, admin, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { crashes, deferredTable, probeApp } from '../fixtures/fastify.js';

t.test('a header value Node refuses answers 500 and rolls back, without crashing the process', async (t) => {
  const seen = crashes(t);
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = await probeApp(t, db, table);
  app.post('/bad-header', async (request, reply) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('bad-header')`);
    return reply.header('x-note', 'line one\nline two').send({ ok: true });
  });
  app.post('/bad-header-no-session', { config: { contextDb: false } }, async (_request, reply) =>
    reply.header('x-note', 'line one\nline two').send({ ok: true }),
  );
  const plain = await app.inject({ method: 'POST', url: '/bad-header-no-session' });
  t.equal(plain.statusCode, 500, 'Fastify alone answers 500');
  const res = await app.inject({ method: 'POST', url: '/bad-header' });
  t.equal(res.statusCode, 500, 'so does the route with a session');
  t.equal(res.headers['x-note'], undefined);
  t.same(await texts(table), [], 'the row is rolled back: the response failed before its head went out');
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
  await new Promise((resolve) => setTimeout(resolve, 20));
  t.same(seen, [], 'no unhandled rejection, no uncaught exception');
});

// The ways a handler sends twice: each route below runs with a session and, for comparison, as
// the same handler with no session (where Fastify writes the first send and warns of the second).
const twice = {
  'send without return': async (_text: string, reply: FastifyReply) => {
    reply.code(201).send({ first: true });
  },
  'send then return a value': async (_text: string, reply: FastifyReply) => {
    reply.code(201).send({ first: true });
    return { second: true };
  },
  'send then send again': async (_text: string, reply: FastifyReply) => {
    reply.code(201).send({ first: true });
    reply.code(202).send({ second: true });
    return reply;
  },
  'send then throw': async (_text: string, reply: FastifyReply) => {
    reply.code(201).send({ first: true });
    throw new Error('after the send');
  },
};

for (const [name, handler] of Object.entries(twice)) {
  t.test(`${name}: the first send is written after the COMMIT, as without a session`, async (t) => {
    const seen = crashes(t);
    const { db, appName } = testDb(t);
    const table = await deferredTable(t);
    await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'taken')`);
    const app = await probeApp(t, db, table);
    app.post<{ Querystring: { key: string } }>('/twice', async (request, reply) => {
      const text = `${name} ${request.query.key}`;
      await (await request.db.session()).query(`INSERT INTO ${table} (text, key) VALUES ($1, $2)`, [
        text,
        request.query.key,
      ]);
      return handler(text, reply);
    });
    app.post('/twice-no-session', { config: { contextDb: false } }, (_request, reply) => handler('', reply));

    const plain = await app.inject({ method: 'POST', url: '/twice-no-session' });
    const ok = await app.inject({ method: 'POST', url: '/twice', query: { key: 'fresh' } });
    t.equal(ok.statusCode, plain.statusCode, `the status Fastify alone gives (${plain.statusCode})`);
    t.equal(ok.body, plain.body, 'and the same body');
    t.same(ok.json(), { first: true });

    const failed = await app.inject({ method: 'POST', url: '/twice', query: { key: 'taken' } });
    t.equal(failed.statusCode, 500, 'a failed COMMIT answers 500, not the second send');
    t.equal(failed.json().code, 'COMMIT_FAILED');

    t.same(await texts(table), ['existing', `${name} fresh`], 'only the committed request wrote');
    t.ok(await eventually(() => checkedOut(db) === 0));
    t.equal((await activity(appName)).idleInTransaction, 0);
    await new Promise((resolve) => setTimeout(resolve, 20));
    t.same(seen, [], 'no unhandled rejection (ERR_HTTP_HEADERS_SENT), no uncaught exception');
  });
}

t.test('the 500 that replaces a failed commit carries none of the success headers', async (t) => {
  const { db } = testDb(t);
  const table = await deferredTable(t);
  await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'taken')`);
  const app = await probeApp(t, db, table);
  app.post('/created', async (request, reply) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text, key) VALUES ('new', 'taken')`);
    return reply
      .code(201)
      .header('location', '/items/1')
      .header('set-cookie', 'session=for-the-new-item')
      .header('x-item-id', '1')
      .send({ id: 1 });
  });
  const res = await app.inject({ method: 'POST', url: '/created' });
  t.equal(res.statusCode, 500);
  t.equal(res.json().code, 'COMMIT_FAILED');
  t.equal(res.headers.location, undefined, 'no location');
  t.equal(res.headers['set-cookie'], undefined, 'no set-cookie');
  t.equal(res.headers['x-item-id'], undefined, 'no other header of the handler');
  t.match(res.headers['content-type'], /application\/json/, "the error's own headers");
  t.same(await texts(table), ['existing']);
});

t.test('an error handler that throws answers 500 and rolls back, without crashing the process', async (t) => {
  const seen = crashes(t);
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = await probeApp(t, db, table, {}, {}, (app) =>
    app.setErrorHandler(() => {
      throw new Error('the error handler itself failed');
    }),
  );
  const res = await app.inject({ method: 'POST', url: '/write', payload: { text: 'thrown', throw: true } });
  t.equal(res.statusCode, 500);
  t.same(await texts(table), []);
  t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
  t.equal((await activity(appName)).idleInTransaction, 0);
  t.same(seen, [], 'no unhandled rejection or uncaught exception');
});

// The request lifecycle: what commits, what rolls back, and that every way a request can end
// (validation failure, 404, hijack) leaves nothing held.
import { dbSession, InvalidOptionsError } from '@context-db/core';
import { contextDbPlugin } from '@context-db/fastify';
import Fastify from 'fastify';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { exampleApp, probeApp } from '../fixtures/fastify.js';

t.test('2xx commits; a throw, a 4xx and a 5xx roll back', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = await probeApp(t, db, table);
  const cases = [
    { body: { text: 'ok-200' }, status: 200 },
    { body: { text: 'ok-201', status: 201 }, status: 201 },
    { body: { text: 'redirect-303', status: 303 }, status: 303 },
    { body: { text: 'thrown', throw: true }, status: 500 },
    { body: { text: 'client-409', status: 409 }, status: 409 },
    { body: { text: 'server-503', status: 503 }, status: 503 },
  ];
  for (const { body, status } of cases) {
    const res = await app.inject({ method: 'POST', url: '/write', payload: body });
    t.equal(res.statusCode, status, body.text);
  }
  t.same(await texts(table), ['ok-200', 'ok-201', 'redirect-303'], 'only the < 400 requests are in the table');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('an error rolls back even when the error handler answers 2xx', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = await probeApp(t, db, table, {}, {}, (app) =>
    app.setErrorHandler(async (_error, _request, reply) => reply.code(200).send({ handled: true })),
  );
  const res = await app.inject({ method: 'POST', url: '/write', payload: { text: 'thrown', throw: true } });
  t.equal(res.statusCode, 200);
  t.same(await texts(table), [], 'rolled back: the error decides, not the status');
});

t.test('commitOn and beforeCommit', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const seen: boolean[] = [];
  const app = await probeApp(t, db, table, {
    commitOn: (status) => status < 500,
    beforeCommit: (session) => {
      seen.push(session.inTransaction);
    },
  });
  await app.inject({ method: 'POST', url: '/write', payload: { text: 'client-409', status: 409 } });
  await app.inject({ method: 'POST', url: '/write', payload: { text: 'server-500', status: 500 } });
  t.same(await texts(table), ['client-409'], 'commitOn decides which statuses commit');
  t.same(seen, [true], 'beforeCommit ran once, with the transaction still open, and not on rollback');
});

t.test('a POST with a JSON body finds its session in the handler', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = await probeApp(t, db, table);
  let sameSession = false;
  // Fastify runs the handler of a request with a body from the body stream's 'end' callback.
  app.post<{ Body: { text: string } }>('/echo', async (request) => {
    const session = await dbSession(db);
    sameSession = session === (await request.db.session());
    await session.query(`INSERT INTO ${table} (text) VALUES ($1)`, [request.body.text]);
    return { ok: true };
  });
  const res = await app.inject({ method: 'POST', url: '/echo', payload: { text: 'from-body' } });
  t.equal(res.statusCode, 200, res.body);
  t.ok(sameSession, 'dbSession(db) and request.db.session() are the same session');
  t.same(await texts(table), ['from-body']);
});

t.test('a hook that resumes the request from another async context does not lose its session', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = await probeApp(t, db, table);
  // A callback-style gate (a throttle, a queue): parked callbacks run on the stack of whoever
  // opens it, here another request's handler, so in that request's async context.
  const parked: (() => void)[] = [];
  app.post<{ Body: { text: string } }>(
    '/parked',
    { preParsing: (_request, _reply, payload, done) => void parked.push(() => done(null, payload)) },
    async (request) => {
      await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ($1)`, [request.body.text]);
      return { ok: true };
    },
  );
  app.post('/open-gate', async (request, reply) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('gate')`);
    for (const resume of parked.splice(0)) resume();
    return reply.code(409).send({ rolledBack: true });
  });
  const parkedRes = app.inject({ method: 'POST', url: '/parked', payload: { text: 'parked' } });
  t.ok(await eventually(() => parked.length === 1), 'the request is parked');
  t.equal((await app.inject({ method: 'POST', url: '/open-gate' })).statusCode, 409);
  const res = await parkedRes;
  t.equal(res.statusCode, 200, res.body);
  t.same(await texts(table), ['parked'], "the parked request used its own session, not the gate's");
  t.equal(checkedOut(db), 0);
});

t.test('a route that never calls the database takes no pool connection', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = exampleApp(t, db, table);
  const res = await app.inject({ method: 'GET', url: '/health' });
  t.equal(res.statusCode, 200);
  t.equal(db.pool().totalCount, 0, 'the pool never opened a connection');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).total, 0, 'no server connection for the app');
});

t.test('an opted-out route runs without a context', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = exampleApp(t, db, table);
  const res = await app.inject({ method: 'POST', url: '/opted-out' });
  t.equal(res.statusCode, 200);
  t.same(res.json(), { ok: true, dbSessionThrows: true }, 'dbSession threw ContextNotInitiatedError');
  t.same(await texts(table), ['opted-out'], 'newNonCtxAtomicSession committed its row');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('a schema validation failure answers 400 and holds nothing', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = await probeApp(t, db, table);
  const res = await app.inject({ method: 'POST', url: '/write', payload: { status: 200 } });
  t.equal(res.statusCode, 400);
  t.equal(res.json().code, 'FST_ERR_VALIDATION');
  const after = await app.inject({ method: 'POST', url: '/write', payload: { text: 'after' } });
  t.equal(after.statusCode, 200, 'the app keeps working');
  t.same(await texts(table), ['after']);
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('a 404 runs in a context of its own that is rolled back and released', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = Fastify();
  await app.register(contextDbPlugin, { db });
  app.get('/known', async () => ({ ok: true }));
  const plain = await app.inject({ method: 'GET', url: '/nope' });
  t.equal(plain.statusCode, 404, 'the default not-found handler');
  t.equal(db.pool().totalCount, 0, 'and no connection');

  const app2 = Fastify();
  await app2.register(contextDbPlugin, { db });
  app2.setNotFoundHandler(async (request, reply) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('not-found')`);
    return reply.code(404).send({ path: request.url });
  });
  t.teardown(() => Promise.all([app.close(), app2.close()]));
  const res = await app2.inject({ method: 'POST', url: '/nope', payload: { a: 1 } });
  t.equal(res.statusCode, 404);
  t.same(await texts(table), [], 'the not-found handler had a session, rolled back by the 404');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('a hijacked reply is finished when its raw response closes', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = await probeApp(t, db, table);
  app.post<{ Querystring: { status: string } }>('/hijack', async (request, reply) => {
    reply.hijack();
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ($1)`, [
      `hijack-${request.query.status}`,
    ]);
    reply.raw.writeHead(Number(request.query.status), { 'content-type': 'text/plain' });
    reply.raw.end('written by hand');
  });
  const ok = await app.inject({ method: 'POST', url: '/hijack?status=200' });
  t.equal(ok.statusCode, 200);
  t.equal(ok.body, 'written by hand');
  const failed = await app.inject({ method: 'POST', url: '/hijack?status=500' });
  t.equal(failed.statusCode, 500);
  t.ok(
    await eventually(async () => (await texts(table)).length > 0 && checkedOut(db) === 0),
    'committed and released after the response closed',
  );
  t.same(await texts(table), ['hijack-200'], 'the 200 committed, the 500 rolled back');
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('request.db helpers are bound to the plugin db', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = await probeApp(t, db, table);
  app.post('/helpers', async (request) => {
    await request.db.newAtomicSession((s) => s.query(`INSERT INTO ${table} (text) VALUES ('new-atomic')`));
    await request.db.newSession(async (s) => {
      await s.query(`INSERT INTO ${table} (text) VALUES ('new-session-uncommitted')`);
    });
    await request.db.runInNewCtx(async () => {
      await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('new-ctx')`);
    });
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('request')`);
    throw new Error('only the request session rolls back');
  });
  const res = await app.inject({ method: 'POST', url: '/helpers' });
  t.equal(res.statusCode, 500);
  t.same(await texts(table), ['new-atomic', 'new-ctx'], 'the helpers used sessions of their own');
  t.equal(checkedOut(db), 0);
});

t.test('options are checked when the plugin is registered', async (t) => {
  const { db } = testDb(t);
  for (const [options, message] of [
    [{ db: 'postgres://x' }, /options\.db must be a DbConnect/],
    [{ db, commitOn: 400 }, /options\.commitOn must be a function/],
    [{ db, beforeCommit: 'x' }, /options\.beforeCommit must be a function/],
  ] as const) {
    const app = Fastify();
    // Deliberately wrong options, as an untyped caller would pass them.
    app.register(contextDbPlugin, options as unknown as { db: typeof db });
    await t.rejects(
      async () => {
        await app.ready();
      },
      { constructor: InvalidOptionsError, message },
      Object.keys(options).join(', '),
    );
  }
});

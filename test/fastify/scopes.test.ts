// Encapsulated scopes, the 404 handler, error handlers.
import { contextDbPlugin } from '@context-db/fastify';
import Fastify from 'fastify';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { crashes } from '../fixtures/fastify.js';

t.test(
  'a not-found handler that writes, with an onSend hook added after the plugin that fails: 500 and rolled back',
  async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const seen = crashes(t);
    const app = Fastify();
    t.teardown(() => app.close());
    await app.register(contextDbPlugin, { db });
    // An ordinary app-level onSend hook, added after the plugin as the README asks for routes.
    app.addHook('onSend', (request, _reply, payload, done) => {
      if (request.url.startsWith('/gone')) return done(new Error('response signing failed'));
      done(null, payload);
    });
    // SPA fallback that records the miss and answers 200.
    app.setNotFoundHandler(async (request, reply) => {
      await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ($1)`, [request.url]);
      return reply.code(200).send('index.html');
    });
    const res = await app.inject({ method: 'GET', url: '/gone' });
    t.equal(res.statusCode, 500);
    t.same(await texts(table), [], 'a 500 means none of the writes are durable');
    t.ok(await eventually(() => checkedOut(db) === 0));
    t.equal((await activity(appName)).idleInTransaction, 0);
    t.same(seen, []);
  },
);

t.test('a child scope with a prefix, its own onSend hook and an error handler that throws', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const seen = crashes(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  await app.register(
    async (child) => {
      child.addHook('onSend', async (_request, reply, payload) => {
        if (reply.getHeader('x-deny')) reply.code(403);
        return payload;
      });
      child.setErrorHandler(() => {
        throw new Error('the error handler failed');
      });
      child.post<{ Querystring: { mode: string } }>('/w', async (request, reply) => {
        const { mode } = request.query;
        await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ($1)`, [mode]);
        if (mode === 'throw') throw new Error('boom');
        if (mode === 'deny') reply.header('x-deny', '1');
        return { mode };
      });
    },
    { prefix: '/child' },
  );
  const thrown = await app.inject({ method: 'POST', url: '/child/w?mode=throw' });
  t.equal(thrown.statusCode, 500);
  const denied = await app.inject({ method: 'POST', url: '/child/w?mode=deny' });
  t.equal(denied.statusCode, 403);
  const ok = await app.inject({ method: 'POST', url: '/child/w?mode=ok' });
  t.equal(ok.statusCode, 200);
  t.same(await texts(table), ['ok']);
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
  t.same(seen, []);
});

t.test('an error handler that sends twice: the first goes out, rolled back, no crash', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const seen = crashes(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.setErrorHandler((_error, _request, reply) => {
    reply.code(418).send({ first: true });
    reply.code(200).send({ second: true });
  });
  app.post('/w', async (request) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('x')`);
    throw new Error('boom');
  });
  const res = await app.inject({ method: 'POST', url: '/w' });
  t.equal(res.statusCode, 418);
  t.same(res.json(), { first: true });
  t.same(await texts(table), []);
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
  t.same(seen, []);
});

t.test(
  "a child scope's not-found handler answers under its prefix only and decides after the scope's hooks",
  async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const seen = crashes(t);
    const app = Fastify();
    t.teardown(() => app.close());
    await app.register(contextDbPlugin, { db });
    await app.register(
      async (child) => {
        child.addHook('onSend', (request, _reply, payload, done) => {
          if (request.url.endsWith('/fail')) return done(new Error('response signing failed'));
          done(null, payload);
        });
        child.setNotFoundHandler(async (request, reply) => {
          await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ($1)`, [request.url]);
          return reply.code(200).send('child fallback');
        });
      },
      { prefix: '/child' },
    );
    const root = await app.inject({ method: 'GET', url: '/elsewhere' });
    t.equal(root.statusCode, 404, "the root keeps Fastify's own 404");
    const ok = await app.inject({ method: 'GET', url: '/child/ok' });
    t.equal(ok.statusCode, 200);
    t.equal(ok.body, 'child fallback');
    const failed = await app.inject({ method: 'GET', url: '/child/fail' });
    t.equal(failed.statusCode, 500);
    t.same(await texts(table), ['/child/ok'], 'only the answered request is durable');
    t.ok(await eventually(() => checkedOut(db) === 0));
    t.equal((await activity(appName)).idleInTransaction, 0);
    t.same(seen, []);
  },
);

t.test('a not-found handler opted out with config.contextDb false runs outside any context', async (t) => {
  const { db } = testDb(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.setNotFoundHandler({ config: { contextDb: false } } as object, async (request, reply) => {
    const refused = await request.db.session().then(
      () => false,
      () => true,
    );
    return reply.code(404).send({ refused });
  });
  const res = await app.inject({ method: 'GET', url: '/nowhere' });
  t.equal(res.statusCode, 404);
  t.same(res.json(), { refused: true });
});

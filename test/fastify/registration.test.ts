// The plugin registered a second time for the same request, in a child scope with options of its
// own: the inner, more specific options decide that scope's requests, not silently the outer's.
import { DbConnect, dbSession } from '@context-db/core';
import { contextDbPlugin } from '@context-db/fastify';
import Fastify from 'fastify';
import t from 'tap';
import { activity, checkedOut, createTable, DATABASE_URL, testDb, texts } from '../fixtures/db.js';

t.test("a child scope's own registration decides its routes' outcome with its options", async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const committedByChild: boolean[] = [];
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  // App-level work before the child's hooks: part of the same request, so of the same transaction.
  const sessions = new Map<string, unknown[]>();
  app.addHook('onRequest', async (request) => {
    const session = await dbSession(db);
    sessions.set(request.url, [session]);
    await session.query(`INSERT INTO ${table} (text) VALUES ($1)`, [`hook ${request.url}`]);
  });
  const insertAndRedirect = async (request: { url: string }, reply: { redirect(url: string): unknown }) => {
    sessions.get(request.url)?.push(await dbSession(db));
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [request.url]);
    return reply.redirect('/elsewhere');
  };
  app.post('/outer', insertAndRedirect);
  await app.register(
    async (child) => {
      // Redirects roll back here: the child answers 302 only when a write did not happen.
      await child.register(contextDbPlugin, {
        db,
        commitOn: (status) => status < 300,
        beforeCommit: () => {
          committedByChild.push(true);
        },
      });
      child.post('/redirect', insertAndRedirect);
      child.post('/ok', async (request) => {
        await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [request.url]);
        return { ok: true };
      });
    },
    { prefix: '/child' },
  );
  t.equal((await app.inject({ method: 'POST', url: '/outer' })).statusCode, 302);
  t.equal((await app.inject({ method: 'POST', url: '/child/redirect' })).statusCode, 302);
  t.equal((await app.inject({ method: 'POST', url: '/child/ok' })).statusCode, 200);
  t.same(
    await texts(table),
    ['hook /outer', '/outer', 'hook /child/ok', '/child/ok'],
    "the child's commitOn rolled back its 302, the app hook's row with it; the outer rule committed its own",
  );
  const [hookSession, handlerSession] = sessions.get('/child/redirect') ?? [];
  t.ok(hookSession !== undefined && hookSession === handlerSession, 'one session for the app hook and the child route');
  t.same(committedByChild, [true], "the child's beforeCommit ran for its committed request only");
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test("a child scope's own registration binds request.db to its db", async (t) => {
  const outer = testDb(t);
  const inner = new DbConnect({ connectionString: DATABASE_URL });
  t.teardown(() => inner.close());
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db: outer.db });
  let same: [boolean, boolean] = [false, false];
  await app.register(async (child) => {
    await child.register(contextDbPlugin, { db: inner });
    child.get('/which', async (request) => {
      const session = await request.db.session();
      same = [session === (await dbSession(inner)), session === (await dbSession(outer.db))];
      return {};
    });
  });
  t.equal((await app.inject({ method: 'GET', url: '/which' })).statusCode, 200);
  t.same(same, [true, false], "request.db in the child is the child's database");
});

t.test('registering the plugin twice in one scope is refused', async (t) => {
  const { db } = testDb(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.register(contextDbPlugin, { db, commitOn: () => false });
  await t.rejects(async () => {
    await app.ready();
  }, /decorator 'db' has already been added/);
});

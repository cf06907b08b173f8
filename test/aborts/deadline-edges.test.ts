// Request deadlines where tests rarely look: a statement sent on the raw client of
// session.client(), a beforeCommit that is still querying when the deadline passes, and a COMMIT
// that is still running then. The rule checked: a 2xx means committed, anything else means
// nothing committed, and a deadline passing during the request's work never answers 2xx.
import http from 'node:http';
import { contextDbPlugin } from '@context-db/fastify';
import Fastify from 'fastify';
import t from 'tap';
import { sleeping } from '../fixtures/cancel.js';
import { frameworks, get, startServer } from '../fixtures/chaos.js';
import { activity, admin, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';

const OK = { status: 200, body: { ok: true } } as const;

for (const framework of frameworks) {
  t.test(`${framework}: a deadline passing during a statement on session.client() answers 503`, async (t) => {
    const { db, appName } = testDb(t, { max: 4 });
    const table = await createTable(t);
    const server = await startServer(
      framework,
      db,
      {
        raw: async (helpers) => {
          const session = await helpers.session();
          await session.query(`INSERT INTO ${table} (text) VALUES ('raw')`);
          const client = await session.client();
          await client.query('SELECT pg_sleep(3)');
          return OK;
        },
      },
      undefined,
      { deadline: 300 },
    );
    t.teardown(() => server.close());
    const sent = performance.now();
    const result = await get(`${server.url}/r/raw`, { agent: new http.Agent() });
    t.ok(performance.now() - sent < 2000, 'answered well before the 3 s statement would end');
    t.match(result, { kind: 'response', status: 503 }, 'the passed deadline answers 503, like session.query');
    t.ok(await eventually(() => checkedOut(db) === 0));
    t.equal(await sleeping(appName), 0, 'the statement was cancelled');
    t.equal((await activity(appName)).idleInTransaction, 0);
    t.same(await texts(table), [], 'nothing committed');
  });
}

for (const framework of frameworks) {
  t.test(`${framework}: a client from session.client() used after the deadline passed answers 503`, async (t) => {
    const { db } = testDb(t, { max: 4 });
    const table = await createTable(t);
    const server = await startServer(
      framework,
      db,
      {
        late: async (helpers) => {
          const session = await helpers.session();
          const client = await session.client();
          await client.query(`INSERT INTO ${table} (text) VALUES ('late')`);
          // The deadline passes here, and the cut rolls back and releases the connection.
          await eventually(() => checkedOut(db) === 0);
          await client.query('SELECT 1');
          return OK;
        },
      },
      undefined,
      { deadline: 200 },
    );
    t.teardown(() => server.close());
    const result = await get(`${server.url}/r/late`, { agent: new http.Agent() });
    t.match(
      result,
      { kind: 'response', status: 503 },
      'the passed deadline answers 503, not a 500 for a released client',
    );
    t.same(await texts(table), [], 'nothing committed');
  });
}

for (const framework of frameworks) {
  t.test(`${framework}: a statement on session.client() that outlives its cancel answers 503`, async (t) => {
    const { db } = testDb(t, { max: 4 });
    const table = await createTable(t);
    const server = await startServer(
      framework,
      db,
      {
        stubborn: async (helpers) => {
          const session = await helpers.session();
          await session.query(`INSERT INTO ${table} (text) VALUES ('stubborn')`);
          const client = await session.client();
          // Catches the cancel and sleeps on: the cut closes the connection instead.
          await client.query(
            'DO $$ BEGIN PERFORM pg_sleep(3); EXCEPTION WHEN query_canceled THEN PERFORM pg_sleep(3); END $$',
          );
          return OK;
        },
      },
      undefined,
      { deadline: 300 },
    );
    t.teardown(() => server.close());
    const sent = performance.now();
    const result = await get(`${server.url}/r/stubborn`, { agent: new http.Agent() });
    t.ok(performance.now() - sent < 2000, 'answered well before the statement would end');
    t.match(result, { kind: 'response', status: 503 }, 'the deadline, not the lost connection, is the answer');
    t.ok(await eventually(() => checkedOut(db) === 0), 'the connection was let go');
    t.same(await texts(table), [], 'nothing committed');
  });
}

// The deadline covers the request's work; once the request is committing (beforeCommit, then
// COMMIT) it is not cut short (README, Guarantees): the answer must still agree with the database.
t.test(
  'fastify: a deadline passing while beforeCommit still runs a statement: the answer agrees with the database',
  async (t) => {
    const { db, appName } = testDb(t, { max: 4 });
    const table = await createTable(t);
    const app = Fastify();
    await app.register(contextDbPlugin, {
      db,
      deadline: 300,
      beforeCommit: async (session) => {
        await session.query('SELECT pg_sleep(0.6)');
      },
    });
    app.post('/write', async (request) => {
      await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('late')`);
      return { ok: true };
    });
    t.teardown(() => app.close());
    const response = await app.inject({ method: 'POST', url: '/write' });
    t.equal(response.statusCode, 200, 'the commit phase ran to its end');
    t.same(await texts(table), ['late'], 'and committed');
    t.ok(await eventually(() => checkedOut(db) === 0));
    t.equal((await activity(appName)).idleInTransaction, 0);
  },
);

t.test('fastify: a deadline passing during a slow COMMIT: the response agrees with the database', async (t) => {
  const { db, appName } = testDb(t, { max: 4 });
  const table = await createTable(t);
  // A deferred constraint trigger that sleeps: the COMMIT itself takes ~800 ms.
  await admin.query(
    `CREATE FUNCTION ${table}_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.8); RETURN NULL; END $$`,
  );
  t.teardown(() => admin.query(`DROP FUNCTION IF EXISTS ${table}_slow() CASCADE`));
  await admin.query(
    `CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON ${table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ${table}_slow()`,
  );
  const app = Fastify();
  await app.register(contextDbPlugin, { db, deadline: 300 });
  app.post('/write', async (request) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('commit')`);
    return { ok: true };
  });
  t.teardown(() => app.close());
  const response = await app.inject({ method: 'POST', url: '/write' });
  const rows = await texts(table);
  t.comment(`answered ${response.statusCode}, rows ${JSON.stringify(rows)}`);
  t.ok(
    (response.statusCode === 200 && rows.length === 1) || (response.statusCode !== 200 && rows.length === 0),
    '2xx if and only if committed',
  );
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
});

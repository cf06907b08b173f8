// A COMMIT that fails must never reach the client as the handler's 2xx: the plugin decides the
// commit in onSend, before any byte is written, and answers 500 instead.
import { Readable } from 'node:stream';
import { CommitFailedError, dbSession } from '@context-db/core';
import t from 'tap';
import { activity, admin, checkedOut, eventually, testDb, texts } from '../fixtures/db.js';
import { deferredTable, probeApp } from '../fixtures/fastify.js';

t.test('a COMMIT that fails on a deferred unique constraint answers 500 and the row is absent', async (t) => {
  const { db, appName } = testDb(t);
  const table = await deferredTable(t);
  await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'taken')`);
  const app = await probeApp(t, db, table);
  const sent: number[] = [];
  app.addHook('onSend', async (_request, reply) => {
    sent.push(reply.statusCode);
  });
  const res = await app.inject({ method: 'POST', url: '/write', payload: { text: 'duplicate', key: 'taken' } });
  t.equal(res.statusCode, 500, 'not the handler 200');
  t.match(res.headers['content-type'], /application\/json/);
  t.match(res.json(), {
    statusCode: 500,
    error: 'Internal Server Error',
    code: 'COMMIT_FAILED',
  });
  // The app's onSend hooks run before the decision (any of them may still fail the response):
  // they see the handler's 200, then, once, the 500 that replaces it.
  t.same(sent, [200, 500], 'the error response did not loop');
  t.same(await texts(table), ['existing'], 'the duplicate row is absent');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);

  const ok = await app.inject({ method: 'POST', url: '/write', payload: { text: 'fresh', key: 'new' } });
  t.equal(ok.statusCode, 200, 'a non-conflicting write still commits');
  t.same(await texts(table), ['existing', 'fresh']);
});

t.test('a stream payload whose commit fails answers 500 with none of its bytes', async (t) => {
  const { db } = testDb(t);
  const table = await deferredTable(t);
  await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'taken')`);
  const app = await probeApp(t, db, table);
  app.post<{ Body: { key: string } }>('/stream', async (request, reply) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text, key) VALUES ('streamed', $1)`, [request.body.key]);
    const body = Readable.from(
      (async function* () {
        yield 'chunk-1,';
        yield 'chunk-2';
      })(),
    );
    return reply.type('text/plain').send(body);
  });
  const failed = await app.inject({ method: 'POST', url: '/stream', payload: { key: 'taken' } });
  t.equal(failed.statusCode, 500);
  t.equal(failed.json().code, 'COMMIT_FAILED');
  t.notMatch(failed.body, /chunk/, 'not a byte of the stream was sent');
  const ok = await app.inject({ method: 'POST', url: '/stream', payload: { key: 'other' } });
  t.equal(ok.statusCode, 200);
  t.equal(ok.body, 'chunk-1,chunk-2');
  t.same(await texts(table), ['existing', 'streamed']);
  t.equal(checkedOut(db), 0);
});

for (const [callback, options] of [
  [
    'beforeCommit',
    {
      beforeCommit: () => {
        throw new Error('audit store unavailable');
      },
    },
  ],
  [
    'commitOn',
    {
      commitOn: () => {
        throw new Error('commit rule broken');
      },
    },
  ],
] as const) {
  t.test(`a throwing ${callback} answers 500, rolls back and releases`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await deferredTable(t);
    const app = await probeApp(t, db, table, options);
    const res = await app.inject({ method: 'POST', url: '/write', payload: { text: 'vetoed' } });
    t.equal(res.statusCode, 500, res.body);
    t.same(await texts(table), [], 'the row is absent');
    t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
    t.equal((await activity(appName)).idleInTransaction, 0, 'nothing idle in transaction');
  });
}

t.test("the app's error handler sees the CommitFailedError", async (t) => {
  const { db } = testDb(t);
  const table = await deferredTable(t);
  await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'taken')`);
  const handled: unknown[] = [];
  const app = await probeApp(t, db, table, {}, {}, (app) =>
    app.setErrorHandler(async (error, _request, reply) => {
      handled.push(error);
      return reply.code(503).send({ retry: true });
    }),
  );
  const res = await app.inject({ method: 'POST', url: '/write', payload: { text: 'duplicate', key: 'taken' } });
  t.equal(res.statusCode, 503);
  t.same(res.json(), { retry: true });
  t.equal(handled.length, 1);
  t.type(handled[0], CommitFailedError);
  t.same(await texts(table), ['existing']);
});

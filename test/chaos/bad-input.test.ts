// Bad input at the API: each mistake gets a clear error that names the fix.
import {
  type ContextDbOptions,
  ContextNotInitiatedError,
  closeDbSession,
  commitDbSession,
  createDbHelpers,
  DbConnect,
  DbConnectClosedError,
  type DbConnectOptions,
  dbSession,
  InvalidOptionsError,
  rollbackDbSession,
  runInNewCtx,
} from '@context-db/core';
import { contextDb as expressContextDb } from '@context-db/express';
import { contextDbPlugin } from '@context-db/fastify';
import { contextDb as koaContextDb } from '@context-db/koa';
import Fastify from 'fastify';
import t from 'tap';
import { get, startServer } from '../fixtures/chaos.js';
import { DATABASE_URL } from '../fixtures/db.js';

// Wrong on purpose: what a JavaScript caller (or a cast) can pass.
const wrong = (value: unknown): ContextDbOptions => value as ContextDbOptions;

// (No options, or no db, is fine: see test/adapters/no-options.test.ts.)
const badOptions: ReadonlyArray<readonly [string, unknown, RegExp]> = [
  ['options not an object', 'postgres://x', /takes an options object/],
  ['db not a DbConnect', { db: { connectionString: DATABASE_URL } }, /options\.db must be a DbConnect.*got Object/],
  ['db a string', { db: DATABASE_URL }, /options\.db must be a DbConnect.*got string/],
];

t.test('adapters reject wrong options at registration with a message naming the fix', async (t) => {
  const db = new DbConnect({ connectionString: DATABASE_URL });
  t.teardown(() => db.close());
  const cases: ReadonlyArray<readonly [string, unknown, RegExp]> = [
    ...badOptions,
    [
      'beforeCommit not a function',
      { db, beforeCommit: 'flush' },
      /options\.beforeCommit must be a function, got string/,
    ],
    ['commitOn not a function', { db, commitOn: 200 }, /options\.commitOn must be a function, got number/],
  ];
  for (const [name, options, message] of cases) {
    const app = Fastify();
    app.register(contextDbPlugin, wrong(options));
    await t.rejects(
      async () => {
        await app.ready();
      },
      { name: 'InvalidOptionsError', code: 'INVALID_OPTIONS', message },
      `fastify: ${name}`,
    );
    await app.close().catch(() => {});
    t.throws(() => expressContextDb(wrong(options)), { code: 'INVALID_OPTIONS', message }, `express: ${name}`);
    t.throws(() => koaContextDb(wrong(options)), { code: 'INVALID_OPTIONS', message }, `koa: ${name}`);
  }
  t.throws(() => expressContextDb({ db, skip: wrong('yes') as never }), {
    message: /options\.skip must be a function/,
  });
  t.throws(() => koaContextDb({ db, skip: wrong('yes') as never }), { message: /options\.skip must be a function/ });
});

t.test('new DbConnect() without a database names the options to pass', async (t) => {
  const make = (options: unknown) => () => new DbConnect(options as DbConnectOptions);
  t.throws(make({}), { name: 'InvalidOptionsError', message: /connectionString.*DATABASE_URL/ });
  t.throws(make(undefined), InvalidOptionsError);
  t.throws(make({ connectionString: '' }), { message: /non-empty string.*Is DATABASE_URL set/ });
  t.throws(make({ connectionString: undefined }), { message: /connectionString/ });
  t.throws(make({ connectionString: 'not a url' }), { message: /postgres:\/\/user:password@host/ });
  t.throws(make({ createPool: 'pool' }), { message: /createPool must be a function/ });
});

t.test('a closed DbConnect fails with DbConnectClosedError, also through an app', async (t) => {
  const db = new DbConnect({ connectionString: DATABASE_URL });
  await db.close();
  await t.rejects(db.createSession(), DbConnectClosedError);
  t.throws(() => db.pool(), { code: 'DB_CONNECT_CLOSED', message: /create a new DbConnect/ });
  for (const framework of ['fastify', 'express', 'koa'] as const) {
    const server = await startServer(framework, db, {
      q: async (helpers) => {
        await (await helpers.session()).query('SELECT 1');
        return { status: 200, body: {} };
      },
    });
    const res = await get(`${server.url}/r/q`);
    await server.close();
    // 503: the app is shutting down (or its database went away); a retry can reach another instance.
    t.equal(res.kind === 'response' && res.status, 503, `${framework}: 503`);
    t.match(res.kind === 'response' ? res.body : '', /DB_CONNECT_CLOSED/, `${framework}: with DB_CONNECT_CLOSED`);
  }
});

t.test('helpers outside a context say how to open one', async (t) => {
  const db = new DbConnect({ connectionString: DATABASE_URL });
  t.teardown(() => db.close());
  const fix = /contextDbPlugin.*contextDb\(\).*runInNewCtx/;
  await t.rejects(dbSession(db), { name: 'ContextNotInitiatedError', message: fix });
  await t.rejects(createDbHelpers(db).session(), ContextNotInitiatedError);
  await t.rejects(commitDbSession(db), { message: /commitDbSession\(\) was called outside/ });
  await t.rejects(rollbackDbSession(db), { message: /rollbackDbSession\(\) was called outside/ });
  await t.rejects(closeDbSession(db), { message: /closeDbSession\(\) was called outside/ });
  await t.rejects(runInNewCtx(wrong(42) as never), { code: 'INVALID_OPTIONS', message: /needs a function/ });
  t.equal(db.pool().totalCount, 0, 'none of it opened a connection');
});

// Review of 71d4590 (core: final COMMIT and reset in one flight, endWithReset/plainOnly) and
// ab1c9d4 (koa: ResponseHold with module-level held methods): all held. Its Fastify header
// tests (a68f4f3), one of which found a defect, are in test/fastify/header-check.test.ts.
import { DbSessionCtx, dbSession } from '@context-db/core';
import { contextDb } from '@context-db/koa';
import Koa from 'koa';
import t from 'tap';
import {
  activity,
  admin,
  checkedOut,
  createTable,
  eventually,
  nextRequestRow,
  outcome,
  testDb,
  texts,
} from '../fixtures/db.js';
import { collectErrors, createDeferredTable, request, serve } from '../fixtures/koa.js';

// ---------------------------------------------------------------------------------------------
// 71d4590: endWithReset
// ---------------------------------------------------------------------------------------------

for (const pipeline of [false, true]) {
  t.test(
    `core: a COMMIT answered ROLLBACK is reported failed and the reset still runs (pipeline: ${pipeline})`,
    async (t) => {
      const { db, appName } = testDb(t, { max: 1, pipeline });
      const table = await createTable(t);
      const ctx = new DbSessionCtx();
      await ctx.run(async () => {
        const session = await dbSession(db);
        await session.query(`INSERT INTO ${table} (text) VALUES ('lost')`);
        await session.query("SET application_name = 'review_leak'").catch(() => undefined);
        await session.query("SELECT set_config('review.x', 'leaked', false)");
        await session.query('SELECT pg_advisory_lock(4242)');
        await session.query('CREATE TEMP TABLE review_leak (x int)');
        await session.query('SELECT 1/0').catch(() => undefined);
      });
      const result = await outcome(ctx.finish({ statusCode: 200 }));
      t.equal(result, 'COMMIT_FAILED', 'PostgreSQL rolled back: reported failed');
      t.same(await texts(table), []);
      const state = await nextRequestRow(
        db,
        "SELECT current_setting('review.x', true) AS x, " +
          "(SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks, " +
          "(SELECT count(*)::int FROM pg_class WHERE relname = 'review_leak' AND relpersistence = 't') AS temps",
      );
      t.ok(
        ((state as { x: string | null }).x ?? '') === '' &&
          (state as { locks: number }).locks === 0 &&
          (state as { temps: number }).temps === 0,
        `nothing carried to the next request: ${JSON.stringify(state)}`,
      );
      t.ok(await eventually(() => checkedOut(db) === 0));
      t.equal((await activity(appName)).idleInTransaction, 0);
    },
  );

  t.test(`core: session state of a committed request is not seen by the next (pipeline: ${pipeline})`, async (t) => {
    const { db, appName } = testDb(t, { max: 1, pipeline });
    const table = await createTable(t);
    const ctx = new DbSessionCtx();
    await ctx.run(async () => {
      const session = await dbSession(db);
      await session.query(`INSERT INTO ${table} (text) VALUES ('kept')`);
      await session.query("SELECT set_config('review.x', 'leaked', false)");
      await session.query('SELECT pg_advisory_lock(4243)');
      await session.query('LISTEN review_channel');
      await session.query('SET ROLE pg_read_all_data').catch(() => undefined);
    });
    t.equal(await outcome(ctx.finish({ statusCode: 200 })), 'ok');
    const state = await nextRequestRow(
      db,
      "SELECT current_setting('review.x', true) AS x, current_user = session_user AS role_reset, " +
        "(SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks, " +
        '(SELECT count(*)::int FROM pg_listening_channels()) AS listening',
    );
    t.match(state, { locks: 0, listening: 0, role_reset: true });
    t.ok(((state as { x: string | null }).x ?? '') === '');
    t.same(await texts(table), ['kept']);
    t.ok(await eventually(() => checkedOut(db) === 0));
    t.equal((await activity(appName)).idleInTransaction, 0);
  });

  t.test(
    `core: a COMMIT failing on a deferred key is reported failed, reset, nothing leaks (pipeline: ${pipeline})`,
    async (t) => {
      const { db, appName } = testDb(t, { max: 1, pipeline });
      const table = await createDeferredTable(t);
      await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'taken')`);
      const ctx = new DbSessionCtx();
      await ctx.run(async () => {
        const session = await dbSession(db);
        await session.query(`INSERT INTO ${table} (text, key) VALUES ('dup', 'taken')`);
        await session.query("SELECT set_config('review.x', 'leaked', false)");
        await session.query('SELECT pg_advisory_lock(4244)');
      });
      t.equal(await outcome(ctx.finish({ statusCode: 200 })), 'COMMIT_FAILED');
      const state = await nextRequestRow(
        db,
        "SELECT coalesce(current_setting('review.x', true), '') AS x, " +
          "(SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks",
      );
      t.match(state, { x: '', locks: 0 });
      t.same(await texts(table), ['existing']);
      t.ok(await eventually(() => checkedOut(db) === 0));
      t.equal((await activity(appName)).idleInTransaction, 0);
    },
  );
}

// ---------------------------------------------------------------------------------------------
// ab1c9d4: ResponseHold
// ---------------------------------------------------------------------------------------------

t.test('koa: a wrapper above contextDb that wraps res.end/res.write after the hold, HEAD and 204', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createDeferredTable(t);
  await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'taken')`);
  const app = new Koa();
  const errors = collectErrors(app);
  const seen: string[] = [];
  app.use(async (ctx, next) => {
    await next();
    // Installed after contextDb() held the response: calls go through the held methods with `this`.
    const { res } = ctx;
    const end = res.end;
    const write = res.write;
    res.end = function (this: typeof res, ...args: unknown[]) {
      seen.push('end');
      return (end as (...a: unknown[]) => typeof res).apply(this, args);
    } as typeof res.end;
    res.write = function (this: typeof res, ...args: unknown[]) {
      seen.push('write');
      return (write as (...a: unknown[]) => boolean).apply(this, args);
    } as typeof res.write;
  });
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    const key = ctx.path.slice(1);
    await (await dbSession(db)).query(`INSERT INTO ${table} (text, key) VALUES ($1, $1)`, [key]);
    if (ctx.query.empty !== undefined) ctx.status = 204;
    else ctx.body = { saved: key };
  });
  const url = await serve(t, app);
  t.same(await request(`${url}/taken`), { status: 500, body: 'Internal Server Error' });
  t.same(await request(`${url}/free`), { status: 200, body: '{"saved":"free"}' });
  t.same(await request(`${url}/head`, { method: 'HEAD' }), { status: 200, body: '' });
  t.same(await request(`${url}/none?empty`), { status: 204, body: '' });
  t.same(await texts(table), ['existing', 'free', 'head', 'none']);
  t.equal(errors.length, 1);
  t.ok(seen.includes('end'));
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('koa: the held end() captured and called with the response as `this` later', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  collectErrors(app);
  app.use(async (ctx, next) => {
    await next();
    // A middleware that takes over responding with the held end, bound.
    ctx.respond = false;
    const end = ctx.res.end.bind(ctx.res);
    ctx.res.setHeader('content-type', 'text/plain');
    setImmediate(() => end('late'));
  });
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('x')`);
    ctx.body = 'body';
  });
  const url = await serve(t, app);
  const res = await request(url);
  t.equal(res.status, 200);
  t.same(await texts(table), ['x']);
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
});

// Issue 16 items 7 and 8: how contextDb() meets what is already on the request. An app's own
// ctx.db is refused, not overwritten; a second contextDb() on the same request (a mounted app, a
// router-level install) joins the request's transaction and its options decide the outcome.
import { dbSession, InvalidOptionsError } from '@context-db/core';
import { contextDb } from '@context-db/koa';
import Router from '@koa/router';
import Koa, { type Middleware } from 'koa';
import t from 'tap';
import { activity, checkedOut, createTable, testDb, texts } from '../fixtures/db.js';
import { collectErrors, request, serve } from '../fixtures/koa.js';

t.test('contextDb() refuses to overwrite an app’s own ctx.db, naming the fix', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  const errors = collectErrors(app);
  const own = { mine: true };
  (app.context as unknown as { db: unknown }).db = own;
  let ran = false;
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    ran = true;
    await (await dbSession(db)).query(`INSERT INTO ${table} DEFAULT VALUES`);
    ctx.body = 'ok';
  });
  const url = await serve(t, app);
  t.same(await request(url), { status: 500, body: 'Internal Server Error' });
  t.notOk(ran, 'nothing below contextDb() ran');
  t.equal(errors.length, 1);
  t.type(errors[0], InvalidOptionsError);
  t.match(errors[0]?.message, /ctx\.db is already taken.*app\.context\.db/);
  t.equal((app.context as unknown as { db: unknown }).db, own, 'the app’s ctx.db is untouched');
  t.same(await texts(table), []);
  t.equal((await activity(appName)).total, 0, 'no connection was taken');
});

t.test('a ctx.db set per request by an earlier middleware is refused too', async (t) => {
  const { db } = testDb(t);
  const app = new Koa();
  const errors = collectErrors(app);
  app.use((ctx, next) => {
    (ctx as unknown as { db: unknown }).db = 'a database handle of the app';
    return next();
  });
  app.use(contextDb({ db }));
  app.use((ctx) => {
    ctx.body = 'ok';
  });
  const url = await serve(t, app);
  t.equal((await request(url)).status, 500);
  t.type(errors[0], InvalidOptionsError);
});

t.test('a router-level contextDb() joins the request and its commitOn decides (a 302 rolls back)', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  const insert = async (text: string) => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
  const sessions = new Set<unknown>();
  const admin = new Router({ prefix: '/admin' });
  // The admin routes redirect after a form post; a redirect there means the form was refused.
  admin.use(contextDb({ db, commitOn: (status) => status < 300 }));
  admin.post('/form', async (ctx) => {
    sessions.add(await dbSession(db));
    await insert('admin form');
    ctx.redirect('/admin/form?error=1');
  });
  admin.post('/save', async (ctx) => {
    sessions.add(await dbSession(db));
    await insert('admin save');
    ctx.body = 'saved';
  });
  const site = new Router();
  site.post('/site', async (ctx) => {
    await insert('site form');
    ctx.redirect('/site?done=1');
  });
  app.use(contextDb({ db }));
  app.use(async (ctx, next) => {
    // Work before the router: it must share the router's transaction, not have one of its own.
    if (ctx.path.startsWith('/admin')) {
      sessions.add(await dbSession(db));
      await insert(`audit ${ctx.path}`);
    }
    await next();
  });
  app.use(admin.routes()).use(site.routes());
  const url = await serve(t, app);

  t.equal((await request(`${url}/admin/form`)).status, 302);
  t.equal((await request(`${url}/site`)).status, 302);
  t.equal((await request(`${url}/admin/save`)).status, 200);
  t.same(
    await texts(table),
    ['site form', 'audit /admin/save', 'admin save'],
    'the admin 302 rolled back with its audit row; the site 302 committed',
  );
  t.equal(sessions.size, 2, 'one session per request, shared by the outer middleware and the route');
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('a mounted Koa app with its own contextDb() shares the request transaction and its options', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const beforeCommit: string[] = [];
  const sub = new Koa();
  sub.use(
    contextDb({
      db,
      beforeCommit: async (session) => {
        beforeCommit.push('inner');
        await session.query(`INSERT INTO ${table} (text) VALUES ('inner beforeCommit')`);
      },
    }),
  );
  sub.use(async (ctx) => {
    await (await ctx.db.session()).query(`INSERT INTO ${table} (text) VALUES ('mounted')`);
    ctx.body = 'ok';
  });
  // What koa-mount does: run the sub-app's middleware on the same ctx, below a path prefix.
  const composed = (sub as unknown as { compose(mw: Middleware[]): Middleware }).compose(sub.middleware);
  const mount: Middleware = (ctx, next) => (ctx.path.startsWith('/sub') ? composed(ctx, next) : next());
  const app = new Koa();
  app.use(
    contextDb({
      db,
      beforeCommit: () => {
        beforeCommit.push('outer');
      },
    }),
  );
  app.use(async (_ctx, next) => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('outer')`);
    await next();
  });
  app.use(mount);
  const url = await serve(t, app);
  t.equal((await request(`${url}/sub/x`)).status, 200);
  t.same(beforeCommit, ['inner'], 'the inner beforeCommit ran, once, instead of the outer');
  t.same(await texts(table), ['outer', 'mounted', 'inner beforeCommit'], 'one transaction');
  t.equal(checkedOut(db), 0);
});

t.test('one contextDb() instance on the app (skipping the path) and on a route runs the route once', async (t) => {
  const { db } = testDb(t);
  const dbMw = contextDb({ db, skip: (ctx) => ctx.path.startsWith('/public') });
  const app = new Koa();
  const router = new Router();
  let routerRuns = 0;
  app.use(dbMw);
  app.use(async (_ctx, next) => {
    routerRuns++;
    await next();
  });
  router.get('/public/x', dbMw, (ctx) => {
    ctx.body = 'handler';
  });
  app.use(router.routes());
  const url = await serve(t, app);
  const res = await request(`${url}/public/x`, { method: 'GET' });
  t.same(res, { status: 200, body: 'handler' }, "the route's handler answers");
  t.equal(routerRuns, 1, 'the app chain below contextDb() ran once');
});

// DESIGN "Core API": the request's session is one object for all its code, found through async
// work Koa middleware does (body parsing), and `ctx.db` is typed on Koa's context.
import { dbSession } from '@context-db/core';
import { contextDb } from '@context-db/koa';
import { bodyParser } from '@koa/bodyparser';
import Router from '@koa/router';
import Koa from 'koa';
import t from 'tap';
import { checkedOut, createTable, testDb, texts } from '../fixtures/db.js';
import { request, serve } from '../fixtures/koa.js';

t.test('a POST parsed by @koa/bodyparser inside the context still finds its session', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  const router = new Router();
  router.post('/notes', async (ctx) => {
    const { text } = ctx.request.body as { text: string };
    const session = await ctx.db.session();
    t.equal(session, await dbSession(db), 'ctx.db.session() is the context session');
    await session.query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
    ctx.status = 201;
    ctx.body = { text };
  });
  app.use(contextDb({ db }));
  // The body arrives through stream events after the context opened; parsing resumes in it.
  app.use(bodyParser());
  app.use(router.routes());
  const url = await serve(t, app);
  const big = 'x'.repeat(256 * 1024); // several chunks, several turns of the event loop
  for (const text of ['hello', big]) {
    const reply = await request(`${url}/notes`, {
      body: JSON.stringify({ text }),
      headers: { 'content-type': 'application/json' },
    });
    t.equal(reply.status, 201);
  }
  t.same(await texts(table), ['hello', big]);
  t.equal(checkedOut(db), 0);
});

t.test('ctx.db helpers: runInNewCtx, newSession and newAtomicSession on the adapter db', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = new Koa();
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    const insert = async (text: string) =>
      (await ctx.db.session()).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
    const [own] = await Promise.all([
      ctx.db.runInNewCtx(async (text: string) => {
        await insert(text);
        return ctx.db.session();
      }, 'new-ctx'),
      insert('request'),
      ctx.db.newAtomicSession((s) => s.query(`INSERT INTO ${table} (text) VALUES ('atomic')`)),
      ctx.db.newSession(async (s) => {
        await s.query(`INSERT INTO ${table} (text) VALUES ('manual')`);
        await s.commit();
      }),
    ]);
    t.not(own, await ctx.db.session(), 'runInNewCtx ran in a context of its own');
    ctx.body = 'ok';
  });
  const url = await serve(t, app);
  t.equal((await request(url)).status, 200);
  t.same((await texts(table)).sort(), ['atomic', 'manual', 'new-ctx', 'request']);
  t.equal(checkedOut(db), 0);
});

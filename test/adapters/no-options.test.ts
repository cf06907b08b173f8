// Installed with no options (`app.register(contextDbPlugin)`, `app.use(contextDb())`), each
// adapter opens a context per request and commits or rolls back every session made in it, from
// any DbConnect: here two. The request helpers take the database explicitly; called with none
// (and no default), they say how to fix it.
import { type DbConnect, type DbSession, dbSession } from '@context-db/core';
import { contextDb as expressContextDb } from '@context-db/express';
import { contextDbPlugin } from '@context-db/fastify';
import { contextDb as koaContextDb } from '@context-db/koa';
import Router from '@koa/router';
import express, { type NextFunction, type Request, type Response } from 'express';
import Fastify from 'fastify';
import Koa from 'koa';
import t, { type Test } from 'tap';
import { checkedOut, createTable, testDb, texts } from '../fixtures/db.js';
import { listen, request } from '../fixtures/express.js';

interface Setup {
  readonly first: DbConnect;
  readonly second: DbConnect;
  readonly tables: readonly [string, string];
}

/** The route body: a row through dbSession(first), one through the helpers with `second`. */
async function writeBoth(
  { first, tables }: Setup,
  session: (db: DbConnect) => Promise<DbSession>,
  second: DbConnect,
  text: string,
) {
  await (await dbSession(first)).query(`INSERT INTO ${tables[0]} (text) VALUES ($1)`, [text]);
  await (await session(second)).query(`INSERT INTO ${tables[1]} (text) VALUES ($1)`, [text]);
}

type Call = (path: string) => Promise<{ status: number; body: string }>;

const apps: Record<string, (t: Test, setup: Setup) => Promise<Call>> = {
  async fastify(t, setup) {
    const app = Fastify();
    t.teardown(() => app.close());
    await app.register(contextDbPlugin);
    app.post<{ Params: { text: string; status: string } }>('/write/:text/:status', async (request, reply) => {
      await writeBoth(setup, (db) => request.db.session(db), setup.second, request.params.text);
      if (request.params.status === 'throw') throw new Error('handler failed');
      return reply.code(Number(request.params.status)).send('done');
    });
    app.post('/no-db', async (request) => request.db.session());
    return async (path) => {
      const res = await app.inject({ method: 'POST', url: path });
      return { status: res.statusCode, body: res.body };
    };
  },
  async express(t, setup) {
    const app = express();
    app.set('env', 'test');
    app.use(expressContextDb());
    app.post('/write/:text/:status', async (req: Request, res: Response, next: NextFunction) => {
      try {
        await writeBoth(setup, (db) => req.db.session(db), setup.second, String(req.params.text));
        if (req.params.status === 'throw') throw new Error('handler failed');
        res.status(Number(req.params.status)).send('done');
      } catch (err) {
        next(err);
      }
    });
    app.post('/no-db', (req: Request, res: Response, next: NextFunction) => {
      req.db.session().then(() => res.send('?'), next);
    });
    app.use((err: Error, _req: Request, res: Response, _next: NextFunction) => void res.status(500).send(err.message));
    const url = await listen(t, app);
    return (path) => request(`${url}${path}`);
  },
  async koa(t, setup) {
    const app = new Koa();
    app.silent = true;
    app.use(async (ctx, next) => {
      try {
        await next();
      } catch (err) {
        ctx.status = 500;
        ctx.body = (err as Error).message;
      }
    });
    app.use(koaContextDb());
    const router = new Router();
    router.post('/write/:text/:status', async (ctx) => {
      await writeBoth(setup, (db) => ctx.db.session(db), setup.second, ctx.params.text ?? '');
      if (ctx.params.status === 'throw') throw new Error('handler failed');
      ctx.status = Number(ctx.params.status);
      ctx.body = 'done';
    });
    router.post('/no-db', async (ctx) => {
      await ctx.db.session();
    });
    app.use(router.routes());
    const url = await listen(t, app.callback());
    return (path) => request(`${url}${path}`);
  },
};

for (const [name, start] of Object.entries(apps)) {
  t.test(`${name}: no options, two databases: both commit with a 2xx, neither on a 4xx or a throw`, async (t) => {
    const first = testDb(t).db;
    const second = testDb(t).db;
    const tables = [await createTable(t), await createTable(t)] as const;
    const call = await start(t, { first, second, tables });
    t.equal((await call('/write/ok/200')).status, 200);
    t.equal((await call('/write/rejected/422')).status, 422);
    t.equal((await call('/write/failed/throw')).status, 500);
    t.same(await texts(tables[0]), ['ok']);
    t.same(await texts(tables[1]), ['ok']);
    const noDb = await call('/no-db');
    t.equal(noDb.status, 500);
    t.match(
      noDb.body,
      /db\.session\(\) needs a database: pass one \(db\.session\(myDb\)\), or install the adapter with a default/,
    );
    t.equal(checkedOut(first), 0);
    t.equal(checkedOut(second), 0);
  });
}

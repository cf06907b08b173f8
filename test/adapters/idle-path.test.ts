// A request that never asks for a session pays only for entering its context (issue #14): no
// listener on its response, no wrapped response methods. What needs a session (holding the
// response, rolling back when the client leaves) starts with the first session, and a client
// that left before it is not missed: the session is refused and no connection is taken. On all
// three adapters, over real sockets, against the same app without context-db.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { type DbConnect, dbSession, SessionClosedError } from '@context-db/core';
import { contextDb as expressContextDb } from '@context-db/express';
import { contextDbPlugin } from '@context-db/fastify';
import { contextDb as koaContextDb } from '@context-db/koa';
import express from 'express';
import Fastify from 'fastify';
import Koa from 'koa';
import t, { type Test } from 'tap';
import { checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { listen, request } from '../fixtures/express.js';

/** What a route sees of its response: the 'close' listeners on it, and any method made its own. */
interface Shape {
  readonly close: number;
  readonly own: string[];
}

function shape(res: http.ServerResponse): Shape {
  const own = ['write', 'end', 'writeHead', 'flushHeaders'].filter((name) => Object.hasOwn(res, name));
  return { close: res.listenerCount('close'), own };
}

/** The routes each app serves; `withDb` false: the same app without context-db. */
interface Routes {
  /** GET /idle: the response's shape, no session asked for. */
  idle(res: http.ServerResponse): Shape;
  /** GET /session: the shape once the request has its session. */
  session(res: http.ServerResponse): Promise<Shape>;
  /** GET /late: waits for the client to leave, then asks for a session and inserts. */
  late(res: http.ServerResponse): Promise<void>;
}

type Make = (t: Test, routes: Routes, withDb: boolean) => Promise<string>;

const apps: Record<string, Make> = {
  async fastify(t, routes, withDb) {
    const app = Fastify();
    t.teardown(() => app.close());
    if (withDb) await app.register(contextDbPlugin);
    app.get('/idle', async (_request, reply) => routes.idle(reply.raw));
    app.get('/session', async (_request, reply) => routes.session(reply.raw));
    app.get('/late', async (_request, reply) => {
      await routes.late(reply.raw);
      return 'late';
    });
    await app.listen({ port: 0, host: '127.0.0.1' });
    return `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  },
  async express(t, routes, withDb) {
    const app = express();
    app.set('env', 'test');
    if (withDb) app.use(expressContextDb());
    app.get('/idle', (_req, res) => void res.json(routes.idle(res)));
    app.get('/session', (_req, res, next) => void routes.session(res).then((body) => res.json(body), next));
    app.get('/late', (_req, res, next) => void routes.late(res).then(() => res.send('late'), next));
    return listen(t, app);
  },
  async koa(t, routes, withDb) {
    const app = new Koa();
    app.silent = true;
    if (withDb) app.use(koaContextDb());
    app.use(async (ctx) => {
      if (ctx.path === '/idle') ctx.body = routes.idle(ctx.res);
      else if (ctx.path === '/session') ctx.body = await routes.session(ctx.res);
      else if (ctx.path === '/late') {
        await routes.late(ctx.res);
        ctx.body = 'late';
      }
    });
    return listen(t, app.callback());
  },
};

function routesFor(db: DbConnect, table: string, late: { arrived?: () => void; outcome?: unknown }): Routes {
  return {
    idle: shape,
    async session(res) {
      await dbSession(db);
      return shape(res);
    },
    async late(res) {
      const closed = new Promise((resolve) => res.once('close', resolve));
      late.arrived?.();
      await closed;
      try {
        await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('late')`);
        late.outcome = 'inserted';
      } catch (err) {
        late.outcome = err;
      }
    },
  };
}

async function getJson(url: string): Promise<Shape> {
  const reply = await request(url, { method: 'GET' });
  return JSON.parse(reply.body) as Shape;
}

for (const [name, make] of Object.entries(apps)) {
  t.test(`${name}: a request without a session leaves its response as the app without context-db does`, async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    const routes = routesFor(db, table, {});
    const plain = await make(t, routes, false);
    const withDb = await make(t, routes, true);
    const baseline = await getJson(`${plain}/idle`);
    t.same(await getJson(`${withDb}/idle`), baseline, 'no close listener, no wrapped method');
    const held = await getJson(`${withDb}/session`);
    t.equal(held.close, baseline.close + 1, 'with a session, the client is watched');
    t.equal(checkedOut(db), 0);
  });

  t.test(`${name}: a client that left before the first session: the session is refused`, async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    const late: { arrived?: () => void; outcome?: unknown } = {};
    const url = await make(t, routesFor(db, table, late), true);
    const arrived = new Promise<void>((resolve) => {
      late.arrived = resolve;
    });
    const req = http.request(`${url}/late`, { method: 'GET' });
    req.on('error', () => {});
    req.end();
    await arrived;
    req.destroy();
    t.ok(await eventually(() => late.outcome !== undefined), 'the route went on');
    t.type(late.outcome, SessionClosedError, 'dbSession() refused the session');
    t.equal(checkedOut(db), 0, 'no connection taken');
    t.same(await texts(table), [], 'nothing inserted');
  });
}

// A request that made no session and answers with a plain (non-database) stream is decided after
// the stream's first chunk (a stream may start a query as it is read). Such a route must answer as
// without context-db and take no connection: a plain stream, one that errors before its first
// chunk, HEAD/204/304 with a stream, a stream whose first chunk comes after the request's deadline.
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { contextDbPlugin } from '@context-db/fastify';
import { contextDb as koaContextDb } from '@context-db/koa';
import Fastify from 'fastify';
import Koa from 'koa';
import type { Test } from 'tap';
import t from 'tap';
import { activity, checkedOut, testDb } from '../fixtures/db.js';
import { listen, request } from '../fixtures/express.js';

const { db, appName } = testDb(t);

function slowStream(delayMs: number, chunks = ['a', 'b', 'c']): Readable {
  async function* gen() {
    await sleep(delayMs);
    for (const c of chunks) yield c;
  }
  return Readable.from(gen());
}

function failingStream(): Readable {
  return new Readable({
    read() {
      setImmediate(() => this.destroy(new Error('boom before first chunk')));
    },
  });
}

async function noLeak(t: Test): Promise<void> {
  t.equal(checkedOut(db), 0, 'no connection checked out');
  const a = await activity(appName);
  t.equal(a.idleInTransaction, 0, 'none idle in transaction');
}

t.test('Fastify, no session, plain stream bodies', async (t) => {
  const app = Fastify();
  await app.register(contextDbPlugin, { db, deadline: 100 });
  app.get('/plain', async (_req, reply) => reply.type('text/plain').send(slowStream(10)));
  app.get('/late', async (_req, reply) => reply.type('text/plain').send(slowStream(400)));
  app.get('/fail', async (_req, reply) => reply.type('text/plain').send(failingStream()));
  app.get('/204', async (_req, reply) => reply.code(204).send(slowStream(10)));
  app.get('/304', async (_req, reply) => reply.code(304).send(slowStream(10)));
  t.teardown(() => app.close());

  const plain = await app.inject({ method: 'GET', url: '/plain' });
  t.equal(plain.statusCode, 200);
  t.equal(plain.body, 'abc');

  const head = await app.inject({ method: 'HEAD', url: '/plain' });
  t.equal(head.statusCode, 200, 'HEAD answers');
  t.equal(head.body, '');

  const fail = await app.inject({ method: 'GET', url: '/fail' });
  t.equal(fail.statusCode, 500, 'a stream failing before its first chunk is a 500');

  const c204 = await app.inject({ method: 'GET', url: '/204' });
  t.equal(c204.statusCode, 204);
  t.equal(c204.body, '');
  const c304 = await app.inject({ method: 'GET', url: '/304' });
  t.equal(c304.statusCode, 304);
  t.equal(c304.body, '');
  await noLeak(t);
});

t.test('Fastify, no session: a stream whose first chunk comes after the deadline', async (t) => {
  // Before 0597333 a route with no database work answered its stream whatever the deadline: the
  // deadline is about the request's database work, and this request has none.
  const app = Fastify();
  await app.register(contextDbPlugin, { db, deadline: 100 });
  app.get('/late', async (_req, reply) => reply.type('text/plain').send(slowStream(400)));
  t.teardown(() => app.close());
  const late = await app.inject({ method: 'GET', url: '/late' });
  t.equal(late.statusCode, 200, 'no database work: the stream is answered');
  t.equal(late.body, 'abc');
  await noLeak(t);
});

t.test('Koa, no session, plain stream bodies', async (t) => {
  const app = new Koa();
  app.use(koaContextDb({ db, deadline: 100 }));
  app.use(async (ctx) => {
    if (ctx.path === '/plain') ctx.body = slowStream(10);
    else if (ctx.path === '/fail') ctx.body = failingStream();
    else if (ctx.path === '/204') {
      ctx.body = slowStream(10);
      ctx.status = 204;
    } else if (ctx.path === '/304') {
      ctx.body = slowStream(10);
      ctx.status = 304;
    }
  });
  app.on('error', () => {});
  const url = await listen(t, app.callback());
  const plain = await request(`${url}/plain`, { method: 'GET' });
  t.equal(plain.status, 200);
  t.equal(plain.body, 'abc');
  const head = await request(`${url}/plain`, { method: 'HEAD' });
  t.equal(head.status, 200, 'HEAD answers');
  const fail = await request(`${url}/fail`, { method: 'GET' });
  t.equal(fail.status, 500, 'a stream failing before its first chunk is a 500');
  const c204 = await request(`${url}/204`, { method: 'GET' });
  t.equal(c204.status, 204);
  const c304 = await request(`${url}/304`, { method: 'GET' });
  t.equal(c304.status, 304);
  await noLeak(t);
});

t.test('Koa, no session: a stream whose first chunk comes after the deadline', async (t) => {
  const app = new Koa();
  app.use(koaContextDb({ db, deadline: 100 }));
  app.use(async (ctx) => {
    ctx.body = slowStream(400);
  });
  app.on('error', () => {});
  const url = await listen(t, app.callback());
  const late = await request(`${url}/late`, { method: 'GET' });
  t.equal(late.status, 200, 'no database work: the stream is answered');
  t.equal(late.body, 'abc');
  await noLeak(t);
});

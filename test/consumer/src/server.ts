// The consumer smoke test's app (scripts/consumer-smoke.ts copies it into a fresh ESM app and a
// fresh CommonJS app that install the packed tarballs): one Fastify, one Express and one Koa app
// on the same DbConnect. Each framework serves a committing and a rolled-back request, and the
// table must hold exactly the committed rows. No top-level await: the same file compiles to CJS.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { DbConnect, type DbSession, newNonCtxAtomicSession, newNonCtxSession } from '@context-db/core';
import { contextDb } from '@context-db/express';
import { contextDbPlugin } from '@context-db/fastify';
import { contextDb as koaContextDb } from '@context-db/koa';
import express from 'express';
import Fastify from 'fastify';
import Koa from 'koa';

const table = `consumer_smoke_${process.pid}_${Date.now()}`;

async function insert(session: DbSession, text: string): Promise<void> {
  await session.query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function post(url: string): Promise<number> {
  const res = await fetch(url, { method: 'POST' });
  await res.arrayBuffer();
  return res.status;
}

async function main(): Promise<void> {
  const db = new DbConnect({ connectionString: process.env.DATABASE_URL });
  await newNonCtxAtomicSession(db, (s) => s.query(`CREATE TABLE ${table} (id serial PRIMARY KEY, text text NOT NULL)`));
  const closers: Array<() => Promise<unknown>> = [];
  try {
    const fastify = Fastify();
    await fastify.register(contextDbPlugin, { db });
    fastify.post<{ Params: { outcome: string } }>('/:outcome', async (request, reply) => {
      await insert(await request.db.session(), `fastify-${request.params.outcome}`);
      return reply.code(request.params.outcome === 'commit' ? 201 : 422).send({ ok: true });
    });
    const fastifyUrl = await fastify.listen({ host: '127.0.0.1', port: 0 });
    closers.push(() => fastify.close());

    const expressApp = express();
    expressApp.use(contextDb({ db }));
    expressApp.post('/:outcome', async (req, res) => {
      await insert(await req.db.session(), `express-${req.params.outcome}`);
      res.status(req.params.outcome === 'commit' ? 201 : 422).json({ ok: true });
    });
    const expressServer = createServer(expressApp);
    const expressUrl = await listen(expressServer);
    closers.push(() => new Promise((resolve) => expressServer.close(resolve)));

    const koa = new Koa();
    koa.use(koaContextDb({ db }));
    koa.use(async (ctx) => {
      const outcome = ctx.path.slice(1);
      await insert(await ctx.db.session(), `koa-${outcome}`);
      ctx.status = outcome === 'commit' ? 201 : 422;
      ctx.body = { ok: true };
    });
    const koaServer = createServer(koa.callback());
    const koaUrl = await listen(koaServer);
    closers.push(() => new Promise((resolve) => koaServer.close(resolve)));

    const statuses: string[] = [];
    for (const [name, url] of [
      ['fastify', fastifyUrl],
      ['express', expressUrl],
      ['koa', koaUrl],
    ] as const) {
      statuses.push(`${name} ${await post(`${url}/commit`)} ${await post(`${url}/rollback`)}`);
    }
    const { rows } = await newNonCtxSession(db, (s) =>
      s.query<{ text: string }>(`SELECT text FROM ${table} ORDER BY id`),
    );
    const texts = rows.map((row) => row.text);
    const expected = ['fastify-commit', 'express-commit', 'koa-commit'];
    if (statuses.join() !== 'fastify 201 422,express 201 422,koa 201 422' || texts.join() !== expected.join()) {
      throw new Error(`unexpected: statuses ${JSON.stringify(statuses)}, rows ${JSON.stringify(texts)}`);
    }
    console.log(`committed ${texts.join(', ')}; rolled back one request per framework`);
  } finally {
    for (const close of closers) await close();
    await newNonCtxAtomicSession(db, (s) => s.query(`DROP TABLE IF EXISTS ${table}`));
    await db.close();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});

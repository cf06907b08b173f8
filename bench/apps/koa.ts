// The Koa variants: context-db's middleware, and a hand-written transaction with no database
// middleware. Same router, same body parser, same pool size.
import { createServer } from 'node:http';
import { DbConnect } from '@context-db/core';
import { contextDb } from '@context-db/koa';
import { bodyParser } from '@koa/bodyparser';
import Router from '@koa/router';
import Koa from 'koa';
import pg from 'pg';
import { INSERT_SQL, poolConfig, type ServerConfig } from '../variants.js';
import { type BenchServer, closeServer, type InsertBody, insertHandWritten, listenLoopback } from './shared.js';

async function listen(app: Koa, onClose: () => Promise<void>): Promise<BenchServer> {
  const server = createServer(app.callback());
  const port = await listenLoopback(server);
  return {
    port,
    async close() {
      await closeServer(server);
      await onClose();
    },
  };
}

function insertBody(body: unknown): InsertBody {
  return body as InsertBody;
}

export async function koaContextDb(config: ServerConfig): Promise<BenchServer> {
  const db = new DbConnect({ poolConfig: poolConfig(config) });
  const sql = INSERT_SQL(config.table);
  const app = new Koa();
  const router = new Router();
  router.post('/insert', async (ctx) => {
    const { text } = insertBody(ctx.request.body);
    const session = await ctx.db.session();
    const { rows } = await session.query<{ id: number }>(sql, [text]);
    ctx.body = { id: rows[0]?.id };
  });
  router.get('/ping', (ctx) => {
    ctx.body = { ok: true };
  });
  app.use(bodyParser());
  app.use(contextDb({ db }));
  app.use(router.routes());
  return listen(app, () => db.close());
}

export async function koaPlain(config: ServerConfig): Promise<BenchServer> {
  const pool = new pg.Pool(poolConfig(config));
  const sql = INSERT_SQL(config.table);
  const app = new Koa();
  const router = new Router();
  router.post('/insert', async (ctx) => {
    const { text } = insertBody(ctx.request.body);
    ctx.body = await insertHandWritten(pool, sql, text);
  });
  router.get('/ping', (ctx) => {
    ctx.body = { ok: true };
  });
  app.use(bodyParser());
  app.use(router.routes());
  return listen(app, () => pool.end());
}

// The Fastify variants: context-db's plugin (with and without the session reset), a hand-written transaction with no database plugin,
// and @fastify/postgres with `transact: true`. Same routes, same pool size.
import { DbConnect } from '@context-db/core';
import { contextDbPlugin } from '@context-db/fastify';
import fastifyPostgres from '@fastify/postgres';
import Fastify, { type FastifyInstance } from 'fastify';
import pg from 'pg';
import { INSERT_SQL, poolConfig, type ServerConfig } from '../variants.js';
import type { BenchServer, InsertBody } from './shared.js';
import { insertHandWritten } from './shared.js';

async function listen(app: FastifyInstance, onClose: () => Promise<void>): Promise<BenchServer> {
  await app.listen({ port: 0, host: '127.0.0.1' });
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('Fastify did not listen on a TCP port');
  return {
    port: address.port,
    async close() {
      await app.close();
      await onClose();
    },
  };
}

function addPing(app: FastifyInstance): void {
  app.get('/ping', async () => ({ ok: true }));
}

export async function fastifyContextDb(config: ServerConfig, resetSession = true): Promise<BenchServer> {
  const db = new DbConnect({ poolConfig: poolConfig(config), resetSession });
  const sql = INSERT_SQL(config.table);
  const app = Fastify();
  await app.register(contextDbPlugin, { db });
  app.post<{ Body: InsertBody }>('/insert', async (request) => {
    const session = await request.db.session();
    const { rows } = await session.query<{ id: number }>(sql, [request.body.text]);
    return { id: rows[0]?.id };
  });
  addPing(app);
  return listen(app, () => db.close());
}

export async function fastifyPlain(config: ServerConfig): Promise<BenchServer> {
  const pool = new pg.Pool(poolConfig(config));
  const sql = INSERT_SQL(config.table);
  const app = Fastify();
  app.post<{ Body: InsertBody }>('/insert', (request) => insertHandWritten(pool, sql, request.body.text));
  addPing(app);
  return listen(app, () => pool.end());
}

export async function fastifyPostgresTransact(config: ServerConfig): Promise<BenchServer> {
  const sql = INSERT_SQL(config.table);
  const app = Fastify();
  // The plugin owns its pool and ends it when the app closes.
  await app.register(fastifyPostgres, poolConfig(config));
  app.post<{ Body: InsertBody }>('/insert', { pg: { transact: true } }, async (request) => {
    const client = request.pg;
    if (client === undefined) throw new Error('@fastify/postgres did not attach a client');
    const { rows } = await client.query<{ id: number }>(sql, [request.body.text]);
    return { id: rows[0]?.id };
  });
  addPing(app);
  return listen(app, async () => {});
}

// The Express variants: context-db's middleware, and a hand-written transaction with no
// database middleware. Same routes, same body parser, same pool size.
import { createServer } from 'node:http';
import { DbConnect } from '@context-db/core';
import { contextDb } from '@context-db/express';
import express, { type Express } from 'express';
import pg from 'pg';
import { INSERT_SQL, poolConfig, type ServerConfig } from '../variants.js';
import { type BenchServer, closeServer, type InsertBody, insertHandWritten, listenLoopback } from './shared.js';

async function listen(app: Express, onClose: () => Promise<void>): Promise<BenchServer> {
  const server = createServer(app);
  const port = await listenLoopback(server);
  return {
    port,
    async close() {
      await closeServer(server);
      await onClose();
    },
  };
}

export async function expressContextDb(config: ServerConfig): Promise<BenchServer> {
  const db = new DbConnect({ poolConfig: poolConfig(config) });
  const sql = INSERT_SQL(config.table);
  const app = express();
  app.use(express.json(), contextDb({ db }));
  app.post('/insert', async (req, res) => {
    const { text } = req.body as InsertBody;
    const session = await req.db.session();
    const { rows } = await session.query<{ id: number }>(sql, [text]);
    res.json({ id: rows[0]?.id });
  });
  app.get('/ping', (_req, res) => {
    res.json({ ok: true });
  });
  return listen(app, () => db.close());
}

export async function expressPlain(config: ServerConfig): Promise<BenchServer> {
  const pool = new pg.Pool(poolConfig(config));
  const sql = INSERT_SQL(config.table);
  const app = express();
  app.use(express.json());
  app.post('/insert', async (req, res) => {
    const { text } = req.body as InsertBody;
    res.json(await insertHandWritten(pool, sql, text));
  });
  app.get('/ping', (_req, res) => {
    res.json({ ok: true });
  });
  return listen(app, () => pool.end());
}

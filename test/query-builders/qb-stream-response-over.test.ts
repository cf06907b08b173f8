// The streams a committed context kept open are closed when the response is over, also when it
// is over before the context finished deciding: a client that goes away while the commit phase
// runs (beforeCommit here), so that 'close' fires while nothing is retained yet.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { dbSession } from '@context-db/core';
import { contextDb as expressContextDb } from '@context-db/express';
import { contextDbPlugin } from '@context-db/fastify';
import { contextDb as koaContextDb } from '@context-db/koa';
import express from 'express';
import Fastify from 'fastify';
import Koa from 'koa';
import type { Test } from 'tap';
import t from 'tap';
import { admin, checkedOut, createTable, eventually, testDb } from '../fixtures/db.js';
import { deferred, listen } from '../fixtures/express.js';

/** Sends a request and destroys it once `away` resolves; resolves when the socket is gone. */
function goAway(url: string, away: Promise<void>): Promise<void> {
  return new Promise((resolve) => {
    const req = http.request(url, { method: 'POST' });
    req.on('error', () => resolve());
    req.on('close', () => resolve());
    req.end();
    void away.then(() => req.destroy());
  });
}

type Setup = (
  t: Test,
  db: ReturnType<typeof testDb>['db'],
  hooks: { beforeCommit: () => Promise<void>; handler: () => Promise<string> },
) => Promise<string>;

const setups: Record<string, Setup> = {
  Fastify: async (t, db, { beforeCommit, handler }) => {
    const app = Fastify();
    await app.register(contextDbPlugin, { db, beforeCommit });
    app.post('/', async () => handler());
    await app.listen({ port: 0, host: '127.0.0.1' });
    t.teardown(() => app.close());
    return `http://127.0.0.1:${(app.server.address() as AddressInfo).port}/`;
  },
  Express: async (t, db, { beforeCommit, handler }) => {
    const app = express();
    app.use(expressContextDb({ db, beforeCommit }));
    app.post('/', async (_req, res) => {
      res.send(await handler());
    });
    return `${await listen(t, app)}/`;
  },
  Koa: async (t, db, { beforeCommit, handler }) => {
    const app = new Koa();
    app.use(koaContextDb({ db, beforeCommit }));
    app.use(async (ctx) => {
      ctx.body = await handler();
    });
    app.on('error', () => {});
    return `${await listen(t, app.callback())}/`;
  },
};

for (const [name, setup] of Object.entries(setups)) {
  t.test(
    `${name}: a stream read part-way, client gone during the COMMIT phase: the connection goes back`,
    async (t) => {
      const { db } = testDb(t, { max: 1 });
      const table = await createTable(t);
      const kept: AsyncIterator<unknown>[] = [];
      t.teardown(() => Promise.all(kept.map((rows) => rows.return?.())));
      const inCommit = deferred();
      const gate = deferred();
      const url = await setup(t, db, {
        beforeCommit: async () => {
          inCommit.resolve();
          await gate.promise;
        },
        handler: async () => {
          const session = await dbSession(db);
          await session.query(`INSERT INTO ${table} (text) VALUES ('x')`);
          const rows = session.stream('SELECT g FROM generate_series(1, 100) g', [], 5);
          await rows.next();
          kept.push(rows); // the app drops it; kept so that the test can end it afterwards
          return 'ok';
        },
      });
      const gone = goAway(url, inCommit.promise);
      await inCommit.promise;
      await gone;
      await new Promise((r) => setTimeout(r, 50));
      gate.resolve();
      t.ok(
        await eventually(async () => (await admin.query(`SELECT 1 FROM ${table}`)).rowCount === 1),
        'the request committed (its client was gone before the answer)',
      );
      t.ok(await eventually(() => checkedOut(db) === 0), `connection back (checked out: ${checkedOut(db)})`);
    },
  );
}

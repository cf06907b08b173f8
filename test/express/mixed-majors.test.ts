// An Express 4 sub-app mounted in an Express 5 app (Express 4 and 5 side by side): its Layer
// class is out of reach from the Express 5 app (the mount layer's handle is a closure), yet a
// next() parked in it must resume in its own request's context, and its errors must roll back.
// In a file of its own: the wrapping is process-wide.
import { dbSession } from '@context-db/core';
import { contextDb } from '@context-db/express';
import type { NextFunction, Request, Response } from 'express';
import express from 'express';
import express4 from 'express4';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { listen, request, sleep } from '../fixtures/express.js';

t.test('express 4 sub-app in an express 5 app: a gate released by another request', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const parked: Array<() => void> = [];
  const sub = express4();
  sub.set('env', 'test');
  sub.use((req: Request, _res: Response, next: NextFunction) => {
    if (req.path === '/slow') parked.push(() => next());
    else next();
  });
  sub.post('/:name', (req: Request, res: Response, next: NextFunction) => {
    (async () => {
      await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [req.params.name]);
      if (req.params.name === 'slow') return res.json({ ok: true });
      for (const release of parked.splice(0)) release();
      await sleep(100);
      res.status(409).json({ conflict: true });
    })().catch(next);
  });
  const app = express();
  app.set('env', 'test');
  app.use(contextDb({ db }));
  app.use('/sub', sub);
  const url = await listen(t, app);
  const slow = request(`${url}/sub/slow`);
  t.ok(await eventually(() => parked.length === 1), 'parked');
  t.equal((await request(`${url}/sub/fast`)).status, 409);
  t.equal((await slow).status, 200);
  t.same(await texts(table), ['slow'], "the parked request's 200 keeps its row; nothing of the 409");
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
});

// Errors are recorded by the Layer class's handle_error: the Express 4 one must be wrapped too.
t.test('express 4 sub-app in an express 5 app: an error answered 200 by its error handler rolls back', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const sub = express4();
  sub.set('env', 'test');
  sub.post('/', (_req: Request, _res: Response, next: NextFunction) => {
    dbSession(db)
      .then((s) => s.query(`INSERT INTO ${table} (text) VALUES ('half-done')`))
      .then(() => next(new Error('failed after the insert')), next);
  });
  sub.use((_err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    res.status(200).json({ friendly: true });
  });
  const app = express();
  app.set('env', 'test');
  app.use(contextDb({ db }));
  app.use('/sub', sub);
  const url = await listen(t, app);
  t.equal((await request(`${url}/sub`)).status, 200);
  t.same(await texts(table), [], 'an error reached error handling: nothing is durable');
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
});

// DESIGN.md "Adapters" 2 and README "Guarantees": the status the client gets decides the outcome.
// res.writeHead() fixes the status line (Node stores the head at once, though no byte is sent
// before the first write), so a status set after it never reaches the client and must not
// decide the outcome either (issue 10 item 3).
import { dbSession } from '@context-db/core';
import { contextDb } from '@context-db/express';
import type { NextFunction, Request, Response } from 'express';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { listen, majors, request } from '../fixtures/express.js';

for (const { name, express } of majors) {
  t.test(`${name}: after res.writeHead(), the status in that head decides the outcome`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const app = express();
    app.set('env', 'test');
    app.use(contextDb({ db }));
    app.post('/:head/:later', (req: Request, res: Response, next: NextFunction) => {
      const { head, later } = req.params as { head: string; later: string };
      dbSession(db)
        .then((s) => s.query(`INSERT INTO ${table} (text) VALUES ($1)`, [`${head}-${later}`]))
        .then(() => {
          res.writeHead(Number(head), { 'Content-Type': 'text/plain' });
          res.status(Number(later)).end('done');
        })
        .catch(next);
    });
    const url = await listen(t, app);
    t.equal((await request(`${url}/200/500`)).status, 200, 'the client gets the head written first');
    t.equal((await request(`${url}/500/200`)).status, 500, 'the client gets the head written first');
    t.same(await texts(table), ['200-500'], 'the 200 the client got is committed, the 500 is rolled back');
    t.ok(await eventually(() => checkedOut(db) === 0));
    t.equal((await activity(appName)).idleInTransaction, 0);
  });

  t.test(`${name}: res.writeHead() after the response ended changes neither the head nor the outcome`, async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    const app = express();
    app.set('env', 'test');
    app.use(contextDb({ db }));
    app.post('/:status', (req: Request, res: Response, next: NextFunction) => {
      const status = Number(req.params.status);
      dbSession(db)
        .then((s) => s.query(`INSERT INTO ${table} (text) VALUES ($1)`, [String(status)]))
        .then(() => {
          res.status(status).end('done');
          // Unheld, Node would throw ERR_HTTP_HEADERS_SENT here; held, the head is not stored yet.
          try {
            res.writeHead(status === 200 ? 500 : 200);
          } catch {}
        })
        .catch(next);
    });
    const url = await listen(t, app);
    t.equal((await request(`${url}/200`)).status, 200);
    t.equal((await request(`${url}/500`)).status, 500);
    t.same(await texts(table), ['200'], 'each request committed or rolled back by the status its client got');
  });

  t.test(`${name}: res.writeHead(200) then a throw rolls back and the client gets no 2xx`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const app = express();
    app.set('env', 'test');
    app.use(contextDb({ db }));
    app.post('/:handler', (req: Request, res: Response, next: NextFunction) => {
      dbSession(db)
        .then((s) => s.query(`INSERT INTO ${table} (text) VALUES ($1)`, [req.params.handler]))
        .then(() => {
          res.writeHead(200, { 'Content-Type': 'application/json' });
          throw new Error('after writeHead');
        })
        .catch(next);
    });
    // An error handler that answers (res.json() would throw on the fixed head; res.end() does
    // not): the stored head still says 200 and the error rolled the request back, so that head
    // is replaced with a 500.
    app.use('/handled', (_err: unknown, _req: Request, res: Response, _next: NextFunction) => {
      res.status(500).end('failed');
    });
    const url = await listen(t, app);
    await t.rejects(request(`${url}/final`), "Express's final handler cuts a response whose head is fixed");
    t.equal((await request(`${url}/handled`)).status, 500, 'never a 200 for the rolled-back request');
    t.same(await texts(table), [], 'both rolled back');
    t.ok(await eventually(() => checkedOut(db) === 0));
    t.equal((await activity(appName)).idleInTransaction, 0);
  });
}

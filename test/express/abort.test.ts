// DESIGN.md "Adapters" 3: if the client goes away first, roll back and release at once.
import http from 'node:http';
import { dbSession } from '@context-db/core';
import { contextDb } from '@context-db/express';
import type { NextFunction, Request, Response } from 'express';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { deferred, listen, majors, request, sleep } from '../fixtures/express.js';

for (const { name, express } of majors) {
  t.test(`${name}: a client that goes away releases the connection within 1 s`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    let holding = deferred();
    const resume = deferred();
    const handlerDone = deferred<unknown>();
    const app = express();
    app.set('env', 'test');
    app.use(contextDb({ db }));
    // Two ways to be in the middle of a request: a handler waiting on a promise, and a body
    // parser waiting for a body that never comes, after middleware that opened a transaction.
    app.post('/wait', (_req: Request, res: Response, next: NextFunction) => {
      (async () => {
        await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('wait')`);
        holding.resolve();
        await resume.promise;
        await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('after abort')`);
        res.json({ late: true });
      })().then(handlerDone.resolve, (err: unknown) => {
        handlerDone.resolve(err);
        next(err);
      });
    });
    app.post(
      '/upload',
      (_req: Request, _res: Response, next: NextFunction) => {
        dbSession(db)
          .then((s) => s.query(`INSERT INTO ${table} (text) VALUES ('upload')`))
          .then(() => {
            holding.resolve();
            next();
          }, next);
      },
      express.json(),
      (_req: Request, res: Response) => res.json({ never: true }),
    );
    const url = await listen(t, app);

    for (const path of ['/wait', '/upload']) {
      holding = deferred();
      const req = http.request(`${url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': '100' },
      });
      req.on('error', () => {});
      req.write('{"partial":');
      await holding.promise;
      t.equal(checkedOut(db), 1, `${path}: the request holds a connection`);
      t.equal((await activity(appName)).idleInTransaction, 1, `${path}: in a transaction`);
      const destroyedAt = Date.now();
      req.destroy();
      t.ok(
        await eventually(async () => checkedOut(db) === 0 && (await activity(appName)).idleInTransaction === 0, 1000),
        `${path}: released and no transaction left within 1 s`,
      );
      t.ok(Date.now() - destroyedAt < 1000);
    }
    resume.resolve();
    t.match(await handlerDone.promise, { code: 'SESSION_CLOSED' }, 'the late handler gets a clear error');
    t.same(await texts(table), [], 'everything was rolled back');
    t.equal((await request(`${url}/wait`)).status, 200, 'the server still serves');
  });

  t.test(
    `${name}: a client that goes away while its request waits for the only pool connection leaves nothing behind`,
    async (t) => {
      const { db, appName } = testDb(t, { max: 1, connectionTimeoutMillis: 3000 });
      const table = await createTable(t);
      const gate = deferred();
      const waiterOutcome = deferred<unknown>();
      const app = express();
      app.set('env', 'test');
      app.use(contextDb({ db }));
      app.post('/holder', (_req: Request, res: Response, next: NextFunction) => {
        (async () => {
          await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('holder')`);
          await gate.promise;
          res.json({ ok: true });
        })().catch(next);
      });
      app.post('/waiter', (_req: Request, res: Response) => {
        (async () => {
          try {
            await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('waiter')`);
            await sleep(50);
            await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('waiter again')`);
            waiterOutcome.resolve('carried on');
            res.json({ ok: true });
          } catch (err) {
            waiterOutcome.resolve(err);
            res.status(500).end();
          }
        })();
      });
      const url = await listen(t, app);
      const holder = request(`${url}/holder`);
      t.ok(await eventually(() => checkedOut(db) === 1), 'the holder has the only connection');
      const waiter = http.request(`${url}/waiter`, { method: 'POST' });
      waiter.on('error', () => {});
      waiter.end();
      await sleep(150); // the waiter queues for the pool
      waiter.destroy();
      await sleep(100);
      gate.resolve();
      t.equal((await holder).status, 200);
      const outcome = await Promise.race([waiterOutcome.promise, sleep(4000).then(() => 'never finished')]);
      t.not(outcome, 'carried on', 'the waiter did not carry on as if its client were there');
      t.ok(await eventually(() => checkedOut(db) === 0, 4000), 'nothing checked out');
      t.equal((await activity(appName)).idleInTransaction, 0, 'nothing idle in transaction');
      t.same(await texts(table), ['holder'], "only the holder's row is durable");
    },
  );
}

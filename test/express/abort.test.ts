// DESIGN.md "Adapters" 3: if the client goes away first, roll back and release at once.
import http from 'node:http';
import { dbSession } from '@context-db/core';
import { contextDb } from '@context-db/express';
import type { NextFunction, Request, Response } from 'express';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { deferred, listen, majors, request } from '../fixtures/express.js';

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
}

// README "Guarantees": what the client is told matches what the database holds, for responses
// beyond a plain 200 with a body: HEAD, 204, 304, a response the app destroys, an error handler
// that throws, a timeout middleware that answers before the handler.
import { dbSession } from '@context-db/core';
import { contextDb } from '@context-db/express';
import type { NextFunction, Request, Response } from 'express';
import t from 'tap';
import { activity, admin, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { deferred, listen, majors, request } from '../fixtures/express.js';

for (const { name, express } of majors) {
  const route =
    (fn: (req: Request, res: Response) => Promise<unknown>) => (req: Request, res: Response, next: NextFunction) =>
      void fn(req, res).catch(next);

  t.test(`${name}: HEAD, 204 and 304 are decided by the status the client gets`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t, 'key text UNIQUE DEFERRABLE INITIALLY DEFERRED');
    await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'taken')`);
    const app = express();
    app.set('env', 'test');
    app.use(contextDb({ db }));
    const insert = async (text: string, key: string | null = null) =>
      (await dbSession(db)).query(`INSERT INTO ${table} (text, key) VALUES ($1, $2)`, [text, key]);
    app.get(
      '/head/:key',
      route(async (req, res) => {
        await insert(`head ${req.params.key}`, req.params.key === 'taken' ? 'taken' : null);
        res.json({ body: 'not sent for HEAD' });
      }),
    );
    app.post(
      '/no-content',
      route(async (_req, res) => {
        await insert('204');
        res.status(204).send('dropped by Express');
      }),
    );
    app.get(
      '/fresh',
      route(async (_req, res) => {
        await insert('304');
        res.json({ same: 'body' });
      }),
    );
    const url = await listen(t, app);

    const head = await request(`${url}/head/free`, { method: 'HEAD' });
    t.equal(head.status, 200);
    t.equal(head.body, '');
    t.equal((await request(`${url}/head/taken`, { method: 'HEAD' })).status, 500, 'a failed COMMIT under HEAD');
    t.equal((await request(`${url}/no-content`)).status, 204);
    const first = await request(`${url}/fresh`, { method: 'GET' });
    const etag = first.headers.etag;
    t.ok(etag);
    const fresh = await request(`${url}/fresh`, { method: 'GET', headers: { 'if-none-match': etag } });
    t.equal(fresh.status, 304, "Express turns the handler's 200 into a 304");
    t.same(
      (await texts(table)).sort(),
      ['204', '304', '304', 'existing', 'head free'].sort(),
      'committed below 400, the failed COMMIT absent',
    );
    t.ok(await eventually(() => checkedOut(db) === 0));
    t.equal((await activity(appName)).idleInTransaction, 0);
  });

  t.test(`${name}: a response the app destroys rolls back`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const app = express();
    app.set('env', 'test');
    app.use(contextDb({ db }));
    app.post(
      '/',
      route(async (_req, res) => {
        await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('destroyed')`);
        res.destroy();
      }),
    );
    const url = await listen(t, app);
    await t.rejects(request(url), 'the client gets no response');
    t.ok(await eventually(async () => checkedOut(db) === 0 && (await activity(appName)).idleInTransaction === 0));
    t.same(await texts(table), []);
  });

  t.test(`${name}: an error handler that throws answers 500 and rolls back`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const app = express();
    app.set('env', 'test');
    app.use(contextDb({ db }));
    app.post(
      '/',
      route(async () => {
        await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('thrown')`);
        throw new Error('handler failed');
      }),
    );
    app.use((_err: unknown, _req: Request, _res: Response, _next: NextFunction) => {
      throw new Error('error handler failed too');
    });
    const url = await listen(t, app);
    t.equal((await request(url)).status, 500);
    t.same(await texts(table), []);
    t.ok(await eventually(() => checkedOut(db) === 0));
    t.equal((await activity(appName)).idleInTransaction, 0);
  });

  t.test(`${name}: a timeout middleware's 503 rolls back the handler's writes, before and after it`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const timedOut = deferred();
    const late = deferred<unknown>();
    const app = express();
    app.set('env', 'test');
    app.use(contextDb({ db }));
    // As connect-timeout does: answer 503 if the handler has not answered in time.
    app.use((_req: Request, res: Response, next: NextFunction) => {
      setTimeout(() => {
        if (!res.headersSent) res.status(503).json({ error: 'timeout' });
        timedOut.resolve();
      }, 50);
      next();
    });
    app.post(
      '/',
      route(async (_req, res) => {
        const session = await dbSession(db);
        await session.query(`INSERT INTO ${table} (text) VALUES ('before the timeout')`);
        await timedOut.promise;
        await session.query(`INSERT INTO ${table} (text) VALUES ('after the timeout')`).then(
          () => late.resolve('reported done'),
          (err: unknown) => late.resolve(err),
        );
        res.json({ late: true });
      }),
    );
    const url = await listen(t, app);
    t.equal((await request(url)).status, 503);
    t.match(await late.promise, { code: 'SESSION_CLOSED' }, 'the late write fails');
    t.same(await texts(table), [], 'nothing of the timed-out request is committed');
    t.ok(await eventually(() => checkedOut(db) === 0));
    t.equal((await activity(appName)).idleInTransaction, 0);
  });
}

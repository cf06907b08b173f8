// Issue 16 item 6: with the app in production, what the client is told of a library error (a
// failed COMMIT, a full pool, an unreachable database) shows no database internals: no
// constraint name, host, port or pool size. Through Express's own final handler and through the
// error handler most apps write, `res.status(err.status ?? 500).json({ error: err.message })`.
import { DbConnect, dbSession } from '@context-db/core';
import { contextDb, noContextDb } from '@context-db/express';
import type { Express, NextFunction, Request, Response } from 'express';
import t from 'tap';
import { admin, checkedOut, createTable, eventually, testDb, uniqueName } from '../fixtures/db.js';
import { deferred, listen, majors, request } from '../fixtures/express.js';

type ErrorHandling = 'default handler' | 'user handler';
const handlings: readonly ErrorHandling[] = ['default handler', 'user handler'];

function finish(app: Express, handling: ErrorHandling): void {
  app.set('env', 'production');
  if (handling === 'user handler') {
    app.use((err: { status?: number; message: string }, _req: Request, res: Response, _next: NextFunction) => {
      res.status(err.status ?? 500).json({ error: err.message });
    });
  }
}

// Library errors are logged to stderr in production, as Express's final handler logs: keep the
// test output readable.
t.beforeEach(() => {
  const error = console.error;
  console.error = () => {};
  return () => {
    console.error = error;
  };
});

for (const { name, express } of majors) {
  const route =
    (fn: (req: Request, res: Response) => Promise<unknown>) => (req: Request, res: Response, next: NextFunction) =>
      void fn(req, res).catch(next);

  for (const handling of handlings) {
    t.test(`${name}, ${handling}: a failed COMMIT shows no constraint name in production`, async (t) => {
      const { db } = testDb(t);
      const constraint = uniqueName('secret_constraint');
      const table = await createTable(
        t,
        `key text, CONSTRAINT ${constraint} UNIQUE (key) DEFERRABLE INITIALLY DEFERRED`,
      );
      await admin.query(`INSERT INTO ${table} (key) VALUES ('taken')`);
      const app = express();
      app.use(contextDb({ db }));
      const insert = route(async (_req, res) => {
        await (await dbSession(db)).query(`INSERT INTO ${table} (key) VALUES ('taken')`);
        res.status(201).json({ saved: true });
      });
      app.post('/held', insert);
      // Opted out after the write: the failed commit goes to next(err), so to the error handlers.
      const write = (_req: Request, _res: Response, next: NextFunction) => {
        dbSession(db)
          .then((s) => s.query(`INSERT INTO ${table} (key) VALUES ('taken')`))
          .then(() => next(), next);
      };
      app.post('/opted-out', write, noContextDb(), (_req: Request, res: Response) => res.json({ saved: true }));
      finish(app, handling);
      const url = await listen(t, app);
      for (const path of ['/held', '/opted-out']) {
        const reply = await request(`${url}${path}`);
        t.equal(reply.status, 500, `${path}: 500`);
        t.notMatch(reply.body, constraint, `${path}: no constraint name`);
        t.notMatch(reply.body, /duplicate key|taken/, `${path}: no database message or value`);
      }
      t.ok(await eventually(() => checkedOut(db) === 0));
    });

    t.test(`${name}, ${handling}: a full pool answers 503 without its size or timeout`, async (t) => {
      const { db } = testDb(t, { max: 1, connectionTimeoutMillis: 137 });
      const holding = deferred();
      const release = deferred();
      const app = express();
      app.use(contextDb({ db }));
      app.post(
        '/hold',
        route(async (_req, res) => {
          await (await dbSession(db)).query('SELECT 1');
          holding.resolve();
          await release.promise;
          res.json({ held: true });
        }),
      );
      app.post(
        '/starved',
        route(async (_req, res) => {
          await (await dbSession(db)).query('SELECT 1');
          res.json({ never: true });
        }),
      );
      finish(app, handling);
      const url = await listen(t, app);
      const held = request(`${url}/hold`);
      await holding.promise;
      const reply = await request(`${url}/starved`);
      release.resolve();
      t.equal((await held).status, 200);
      t.equal(reply.status, 503);
      t.notMatch(reply.body, /137|max|size|\b1\b|timeout/i, 'no pool size, no timeout');
      t.ok(await eventually(() => checkedOut(db) === 0));
    });

    t.test(`${name}, ${handling}: an unreachable database answers 503 without its host or port`, async (t) => {
      const db = new DbConnect({ connectionString: 'postgres://postgres@127.0.0.1:1/secret_database' });
      t.teardown(() => db.close());
      const app = express();
      app.use(contextDb({ db }));
      app.post(
        '/',
        route(async (_req, res) => {
          await (await dbSession(db)).query('SELECT 1');
          res.json({ never: true });
        }),
      );
      finish(app, handling);
      const url = await listen(t, app);
      const reply = await request(url);
      t.equal(reply.status, 503);
      t.notMatch(
        reply.body,
        /127\.0\.0\.1|:1\b|secret_database|ECONNREFUSED|connect/i,
        'no host, port or driver message',
      );
    });
  }
}

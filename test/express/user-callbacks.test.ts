// DESIGN.md "Rules": nothing leaks (issue 16 item 3). A user callback of contextDb() that throws
// (skip, commitOn, beforeCommit) ends in a rollback and a release, and the client gets an error.
import { dbSession } from '@context-db/core';
import { type ContextDbExpressOptions, contextDb } from '@context-db/express';
import type { NextFunction, Request, Response } from 'express';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { listen, majors, request } from '../fixtures/express.js';

const throwing = () => {
  throw new Error('user callback failed');
};

for (const { name, express } of majors) {
  for (const callback of ['commitOn', 'beforeCommit'] as const) {
    t.test(`${name}: a ${callback} that throws answers 500, rolls back and releases`, async (t) => {
      const { db, appName } = testDb(t);
      const table = await createTable(t);
      const app = express();
      app.set('env', 'test');
      app.use(contextDb({ db, [callback]: throwing }));
      app.post('/', (_req: Request, res: Response, next: NextFunction) => {
        dbSession(db)
          .then((s) => s.query(`INSERT INTO ${table} (text) VALUES ('a')`))
          .then(() => res.status(201).json({ saved: true }), next);
      });
      const url = await listen(t, app);
      const reply = await request(url);
      t.equal(reply.status, 500);
      t.notMatch(reply.body, 'saved', "none of the handler's body");
      t.same(await texts(table), [], 'the row is absent');
      t.ok(await eventually(() => checkedOut(db) === 0), 'the connection is back in the pool');
      t.equal((await activity(appName)).idleInTransaction, 0, 'no transaction left open');
    });
  }

  t.test(`${name}: a skip(req) that throws answers 500 and leaves nothing open`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const app = express();
    app.set('env', 'test');
    const options: ContextDbExpressOptions = { db, skip: throwing };
    app.use(contextDb(options));
    let reached = false;
    app.post('/', (_req: Request, res: Response) => {
      reached = true;
      res.json({ reached });
    });
    const url = await listen(t, app);
    const reply = await request(url);
    t.equal(reply.status, 500, "the error reaches Express's error handling");
    t.notOk(reached, 'the route does not run without its context');
    t.same(await texts(table), []);
    t.equal(checkedOut(db), 0);
    t.equal((await activity(appName)).total, 0, 'no connection was even opened');
  });
}

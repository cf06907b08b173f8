// DESIGN.md "Rules": a request never sees another request's session. A sub-app's param callbacks
// cannot be reached from the app that installed contextDb(): they are found when a request enters
// the sub-app. In a file of its own because the wrapping is process-wide: once any test has run a
// request, param callbacks registered afterwards are wrapped anyway, and this would prove nothing.
import { dbSession } from '@context-db/core';
import { contextDb } from '@context-db/express';
import type { NextFunction, Request, Response } from 'express';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { listen, majors, request, sleep } from '../fixtures/express.js';

for (const { name, express } of majors) {
  t.test(
    `${name}: a request parked in a sub-app's param callback and released by another commits by its own status`,
    async (t) => {
      const { db, appName } = testDb(t);
      const table = await createTable(t);
      const parked: Array<() => void> = [];
      const sub = express();
      sub.set('env', 'test');
      // A callback-style limiter on the org, then a param callback that uses the request's session.
      sub.param('org', (_req: Request, _res: Response, next: NextFunction, org: string) => {
        if (org === 'slow') parked.push(() => next());
        else next();
      });
      sub.param('user', (_req: Request, _res: Response, next: NextFunction, user: string) => {
        dbSession(db)
          .then((s) => s.query(`INSERT INTO ${table} (text) VALUES ($1)`, [`param-${user}`]))
          .then(() => next(), next);
      });
      sub.post('/:org/:user', (req: Request, res: Response, next: NextFunction) => {
        (async () => {
          const { org, user } = req.params as { org: string; user: string };
          await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [`handler-${user}`]);
          if (org === 'slow') return res.json({ ok: true });
          for (const release of parked.splice(0)) release();
          await sleep(100); // the releaser keeps its transaction open a little
          res.status(409).json({ conflict: true });
        })().catch(next);
      });
      const app = express();
      app.set('env', 'test');
      app.use(contextDb({ db }));
      app.use('/sub', sub);
      const url = await listen(t, app);
      const parkedReply = request(`${url}/sub/slow/parked`);
      t.ok(await eventually(() => parked.length === 1), 'parked');
      t.equal((await request(`${url}/sub/fast/releaser`)).status, 409);
      t.equal((await parkedReply).status, 200);
      t.same(
        (await texts(table)).sort(),
        ['handler-parked', 'param-parked'],
        "the parked request's 200 keeps both its rows, nothing of the 409",
      );
      t.ok(await eventually(() => checkedOut(db) === 0));
      t.equal((await activity(appName)).idleInTransaction, 0);
    },
  );
}

// DESIGN.md "Rules": a request never sees another request's session (issue 10 item 9). A
// middleware that parks `next` (a gate, a queue, a rate limiter, a session store with a callback)
// and is released from another request's code must resume the parked request in its own
// context: its writes commit or roll back with its own status.
import { dbSession } from '@context-db/core';
import { contextDb, contextDbErrors } from '@context-db/express';
import type { NextFunction, Request, Response } from 'express';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { deferred, listen, majors, request, sleep } from '../fixtures/express.js';

for (const { name, express } of majors) {
  for (const gateAt of ['after', 'before'] as const) {
    t.test(
      `${name}: a request released from a gate ${gateAt} contextDb() by another request's handler runs in its own context`,
      async (t) => {
        const { db, appName } = testDb(t);
        const table = await createTable(t);
        const parked: Array<() => void> = [];
        let isParked = deferred();
        let parkedDone = deferred();

        const app = express();
        app.set('env', 'test');
        // The gate holds a request's next() until some other request opens it.
        const gate = (req: Request, _res: Response, next: NextFunction) => {
          if (req.query.park === undefined) return next();
          parked.push(next);
          isParked.resolve();
        };
        // Before contextDb(), the parked request opens its context inside the releaser's.
        if (gateAt === 'before') app.use(gate, contextDb({ db }));
        else app.use(contextDb({ db }), gate);
        // Behind a nested router, as routes usually are.
        const router = express.Router();
        router.post('/:name/:status', (req: Request, res: Response, next: NextFunction) => {
          const { name, status } = req.params as { name: string; status: string };
          (async () => {
            await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [name]);
            if (req.query.park !== undefined) parkedDone.resolve();
            else {
              // Open the gate from this request's handler, then wait until the parked request wrote.
              for (const release of parked.splice(0)) release();
              await parkedDone.promise;
            }
            res.status(Number(status)).json({ name });
          })().catch(next);
        });
        app.use('/r', router);
        const url = await listen(t, app);

        for (const [parkedStatus, releaserStatus] of [
          [200, 500],
          [500, 200],
        ]) {
          isParked = deferred();
          parkedDone = deferred();
          const parkedReply = request(`${url}/r/parked-${parkedStatus}/${parkedStatus}?park`);
          await isParked.promise;
          const releaserReply = request(`${url}/r/releaser-${releaserStatus}/${releaserStatus}`);
          t.equal((await parkedReply).status, parkedStatus);
          t.equal((await releaserReply).status, releaserStatus);
        }
        t.same(
          (await texts(table)).sort(),
          ['parked-200', 'releaser-200'],
          "each request's row committed or rolled back with its own status",
        );
        t.ok(await eventually(() => checkedOut(db) === 0));
        t.equal((await activity(appName)).idleInTransaction, 0);
      },
    );
  }

  t.test(`${name}: an error passed to a parked next() reaches the error handlers in its own request`, async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    const parked: Array<(err: Error) => void> = [];
    const isParked = deferred();
    const app = express();
    app.set('env', 'test');
    app.use(contextDb({ db }));
    app.post('/parked', (_req: Request, _res: Response, next: NextFunction) => {
      parked.push(next);
      isParked.resolve();
    });
    app.post('/releaser', (_req: Request, res: Response, next: NextFunction) => {
      (async () => {
        await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('releaser')`);
        for (const release of parked.splice(0)) release(new Error('rate limited'));
        res.json({ ok: true });
      })().catch(next);
    });
    app.use(contextDbErrors());
    // The error handler of the parked request writes to the database, as an audit log might.
    app.use((_err: Error, _req: Request, res: Response, next: NextFunction) => {
      (async () => {
        await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('error handler')`);
        res.status(200).json({ handled: true });
      })().catch(next);
    });
    const url = await listen(t, app);
    const parkedReply = request(`${url}/parked`);
    await isParked.promise;
    t.equal((await request(`${url}/releaser`)).status, 200);
    t.equal((await parkedReply).status, 200);
    t.same(await texts(table), ['releaser'], "the error handler's row rolled back with its own request's error");
  });

  // Param callbacks are not layers: the routers call them from a private function. A sub-app's
  // are in sub-app-interleaving.test.ts.
  t.test(
    `${name}: a request parked in a param callback and released by another commits by its own status`,
    async (t) => {
      const { db, appName } = testDb(t);
      const table = await createTable(t);
      const parked: Array<() => void> = [];
      const app = express();
      app.set('env', 'test');
      app.use(contextDb({ db }));
      const router = express.Router();
      // A callback-style limiter on the org, then a param callback that uses the request's session.
      router.param('org', (_req: Request, _res: Response, next: NextFunction, org: string) => {
        if (org === 'slow') parked.push(() => next());
        else next();
      });
      router.param('user', (_req: Request, _res: Response, next: NextFunction, user: string) => {
        dbSession(db)
          .then((s) => s.query(`INSERT INTO ${table} (text) VALUES ($1)`, [`param-${user}`]))
          .then(() => next(), next);
      });
      router.post('/:org/:user', (req: Request, res: Response, next: NextFunction) => {
        (async () => {
          const { org, user } = req.params as { org: string; user: string };
          await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [`handler-${user}`]);
          if (org === 'slow') return res.json({ ok: true });
          for (const release of parked.splice(0)) release();
          await sleep(100); // the releaser keeps its transaction open a little
          res.status(409).json({ conflict: true });
        })().catch(next);
      });
      app.use(router);
      const url = await listen(t, app);
      const parkedReply = request(`${url}/slow/parked`);
      t.ok(await eventually(() => parked.length === 1), 'parked');
      t.equal((await request(`${url}/fast/releaser`)).status, 409);
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

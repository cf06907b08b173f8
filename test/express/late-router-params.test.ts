// A router whose param callbacks were registered before the first request but which is mounted
// after it (its app was walked already): a gate parked in one param callback and released by
// another request must run the next param callback in its own request's context. In a file of
// its own: the wrapping is process-wide.
import { dbSession } from '@context-db/core';
import { contextDb } from '@context-db/express';
import type { NextFunction, Request, Response } from 'express';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { listen, majors, request, sleep } from '../fixtures/express.js';

const { express } = majors[0];

t.test(
  'express 5: a router mounted after the first request resumes a parked param callback in its own context',
  async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const parked: Array<() => void> = [];
    // Built (routes and param callbacks) at startup, mounted later (a plugin, a feature flag).
    const router = express.Router();
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
        const { org } = req.params as { org: string };
        if (org === 'slow') return res.json({ ok: true });
        for (const release of parked.splice(0)) release();
        await sleep(100);
        res.status(409).json({ conflict: true });
      })().catch(next);
    });
    const app = express();
    app.set('env', 'test');
    app.use(contextDb({ db }));
    app.get('/health', (_req: Request, res: Response) => res.send('ok'));
    const url = await listen(t, app);
    t.equal((await request(`${url}/health`, { method: 'GET' })).status, 200, 'a first request');
    app.use('/r', router); // mounted after it
    const slow = request(`${url}/r/slow/parked`);
    t.ok(await eventually(() => parked.length === 1), 'parked');
    t.equal((await request(`${url}/r/fast/releaser`)).status, 409);
    t.equal((await slow).status, 200);
    t.same(await texts(table), ['param-parked'], "the parked request's 200 keeps its param row");
    t.ok(await eventually(() => checkedOut(db) === 0));
    t.equal((await activity(appName)).idleInTransaction, 0);
  },
);

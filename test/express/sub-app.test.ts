// A sub-app or router with a contextDb() of its own, mounted under the app's (issue 16 item 7):
// its options decide the rest of the request, as when the sub-app is served on its own; they
// are never silently ignored.
import { dbSession } from '@context-db/core';
import { contextDb } from '@context-db/express';
import type { NextFunction, Request, Response } from 'express';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { listen, majors, request } from '../fixtures/express.js';

for (const { name, express } of majors) {
  t.test(`${name}: a sub-app's or router's own contextDb() options decide its requests`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const audited: string[] = [];
    const redirect = (req: Request, res: Response, next: NextFunction) => {
      dbSession(db)
        .then((s) => s.query(`INSERT INTO ${table} (text) VALUES ($1)`, [req.originalUrl]))
        .then(() => res.redirect('/elsewhere'), next);
    };
    // Both inner installs commit only 2xx, so their redirects roll back; the app's commits them.
    const only2xx = (status: number) => status < 300;
    const sub = express();
    sub.set('env', 'test');
    sub.use(contextDb({ db, commitOn: only2xx, beforeCommit: () => void audited.push('sub') }));
    sub.post('/redirect', redirect);
    const router = express.Router();
    router.use(contextDb({ db, commitOn: only2xx, skip: (req) => req.path === '/skipped' }));
    router.post('/redirect', redirect);
    router.post('/skipped', hasContext(db));

    const app = express();
    app.set('env', 'test');
    app.use(contextDb({ db, beforeCommit: () => void audited.push('app') }));
    app.use('/sub', sub);
    app.use('/router', router);
    app.post('/redirect', redirect);
    const url = await listen(t, app);

    for (const path of ['/redirect', '/sub/redirect', '/router/redirect']) {
      t.equal((await request(`${url}${path}`)).status, 302, path);
    }
    t.equal((await request(`${url}/router/skipped`)).status, 200, "the router's skip(req) opts the route out");
    t.same(await texts(table), ['/redirect'], "the inner commitOn rolled back the inner apps' redirects");
    t.same(audited, ['app'], "the app's beforeCommit ran for its own route only");
    t.ok(await eventually(() => checkedOut(db) === 0));
    t.equal((await activity(appName)).idleInTransaction, 0);
  });
}

// A route that answers 200 only when it runs without a context (dbSession() throws there).
function hasContext(db: Parameters<typeof dbSession>[0]) {
  return (_req: Request, res: Response) => {
    dbSession(db).then(
      () => res.status(500).json({ context: true }),
      () => res.json({ context: false }),
    );
  };
}

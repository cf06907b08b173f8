// DESIGN.md "Adapters" 2: a failed commit turns the response into a 500 error, never a 2xx
// whose data is not in the database. COMMIT fails here on a deferred unique constraint.
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import { dbSession } from '@context-db/core';
import { contextDb } from '@context-db/express';
import type { NextFunction, Request, Response } from 'express';
import t from 'tap';
import { activity, admin, checkedOut, createTable, eventually, testDb, texts, uniqueName } from '../fixtures/db.js';
import { listen, majors, request, sleep } from '../fixtures/express.js';

const thisFile = fileURLToPath(import.meta.url);

// fixtures/db.ts createDeferredTable names its constraint `key_unique`, a name PostgreSQL
// requires to be unique per schema: two test files running at once collide. Same table, own name.
const createDeferredTable = (t: Parameters<typeof createTable>[0]) =>
  createTable(t, `key text, CONSTRAINT ${uniqueName('key')} UNIQUE (key) DEFERRABLE INITIALLY DEFERRED`);

const responses = {
  json: (res: Response) => res.status(201).json({ saved: true }),
  send: (res: Response) => res.send('saved'),
  end: (res: Response) => res.end('saved'),
  redirect: (res: Response) => res.redirect('/saved'),
  sendFile: (res: Response) => res.sendFile(thisFile),
  write: async (res: Response) => {
    res.setHeader('Content-Type', 'text/plain');
    res.write('sa');
    await sleep(5);
    res.end('ved');
  },
};

// What compression (and response-time or etag middleware) does: wrap res.end and store the head
// with _implicitHeader() before passing the body on.
function compressionLike() {
  return (_req: Request, res: Response, next: NextFunction) => {
    const end = res.end as (...args: unknown[]) => Response;
    res.end = function (this: Response, ...args: unknown[]) {
      if (!this.headersSent) (this as unknown as { _implicitHeader(): void })._implicitHeader();
      return end.apply(this, args);
    } as Response['end'];
    next();
  };
}

for (const { name, express } of majors) {
  const route =
    (fn: (req: Request, res: Response) => Promise<void>) => (req: Request, res: Response, next: NextFunction) =>
      void fn(req, res).catch(next);

  t.test(`${name}: a COMMIT that fails answers 500 and the row is absent, for every way to respond`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await createDeferredTable(t);
    await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'k')`);
    const app = express();
    app.set('env', 'test');
    app.use(contextDb({ db }));
    app.post(
      '/:kind/:key',
      route(async (req, res) => {
        const session = await dbSession(db);
        await session.query(`INSERT INTO ${table} (text, key) VALUES ($1, $2)`, [req.params.kind, req.params.key]);
        await responses[req.params.kind as keyof typeof responses](res);
      }),
    );
    const url = await listen(t, app);
    for (const kind of Object.keys(responses)) {
      const reply = await request(`${url}/${kind}/k`);
      t.equal(reply.status, 500, `${kind}: 500 instead of the handler's success`);
      t.equal(reply.body, 'Internal Server Error', `${kind}: none of the handler's body`);
      t.notOk(reply.headers.location, `${kind}: none of the handler's headers`);
    }
    const ok = await request(`${url}/json/other`);
    t.equal(ok.status, 201, 'a commit that works still answers the handler status');
    t.same(await texts(table), ['existing', 'json'], 'no row of the failed commits');
    t.ok(await eventually(() => checkedOut(db) === 0), 'every connection is back in the pool');
    t.equal((await activity(appName)).idleInTransaction, 0);
  });

  t.test(`${name}: a throwing beforeCommit answers 500 and rolls back`, async (t) => {
    const { db } = testDb(t);
    const table = await createDeferredTable(t);
    const app = express();
    app.set('env', 'test');
    app.use(
      contextDb({
        db,
        beforeCommit: () => {
          throw new Error('audit failed');
        },
      }),
    );
    app.post(
      '/',
      route(async (_req, res) => {
        await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('a')`);
        res.json({ saved: true });
      }),
    );
    const url = await listen(t, app);
    t.equal((await request(url)).status, 500);
    t.same(await texts(table), []);
  });

  // Node stores the head at writeHead() but sends it with the first byte, which was held back.
  t.test(`${name}: after an explicit writeHead(200) a failed COMMIT still answers 500`, async (t) => {
    const { db } = testDb(t);
    const table = await createDeferredTable(t);
    await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'k')`);
    const app = express();
    app.set('env', 'test');
    app.use(contextDb({ db }));
    app.post(
      '/',
      route(async (_req, res) => {
        await (await dbSession(db)).query(`INSERT INTO ${table} (text, key) VALUES ('dup', 'k')`);
        res.writeHead(200, { 'Content-Type': 'text/plain' });
        res.end('saved');
      }),
    );
    const url = await listen(t, app);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    t.teardown(() => agent.destroy());
    const reply = await request(url, { agent });
    t.equal(reply.status, 500, 'the client never sees the 200');
    t.equal(reply.body, 'Internal Server Error');
    t.equal((await request(url, { agent })).status, 500, 'the kept-alive connection kept its framing');
    t.same(await texts(table), ['existing']);
  });

  t.test(`${name}: a failed COMMIT under compression-like middleware after contextDb() answers 500`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await createDeferredTable(t);
    await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'k')`);
    const app = express();
    app.set('env', 'test');
    app.use(contextDb({ db }), compressionLike());
    app.post('/notes', (_req: Request, res: Response, next: NextFunction) => {
      dbSession(db)
        .then((s) => s.query(`INSERT INTO ${table} (text, key) VALUES ('duplicate', 'k')`))
        .then(() => res.status(201).json({ saved: true }), next);
    });
    const url = await listen(t, app);
    const reply = await request(`${url}/notes`);
    t.equal(reply.status, 500, 'the stored 201 head was replaced, not cut');
    t.same(await texts(table), ['existing']);
    t.ok(await eventually(() => checkedOut(db) === 0));
    t.equal((await activity(appName)).idleInTransaction, 0);
  });
}

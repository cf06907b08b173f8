// DESIGN.md "Adapters" 1: unless the route opted out (noContextDb(), or skip(req)), the request
// runs in a context. Also: options are checked at setup, req.db holds the helpers.
import { AsyncLocalStorage } from 'node:async_hooks';
import { ContextNotInitiatedError, dbSession, InvalidOptionsError, isContextInitiated } from '@context-db/core';
import { contextDb, noContextDb } from '@context-db/express';
import type { NextFunction, Request, Response } from 'express';
import t from 'tap';
import { checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { deferred, listen, majors, request, sleep } from '../fixtures/express.js';

t.test('contextDb() checks its options when the app is set up', async (t) => {
  const { db } = testDb(t);
  t.throws(() => contextDb({ db: 'postgres://x' } as never), InvalidOptionsError);
  t.throws(() => contextDb({ db, skip: true } as never), { message: /options\.skip must be a function/ });
});

for (const { name, express } of majors) {
  t.test(`${name}: noContextDb() and skip() run the route without a context and without holding it back`, async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    const tracing = new AsyncLocalStorage<string>();
    let waiting = deferred();
    const app = express();
    app.set('env', 'test');
    app.use((_req: Request, _res: Response, next: NextFunction) => tracing.run('trace-1', next));
    app.use(contextDb({ db, skip: (req) => req.path.startsWith('/skipped') }));
    // Middleware before the opt-out that writes on the request session.
    app.use('/opted', (_req: Request, _res: Response, next: NextFunction) => {
      dbSession(db)
        .then((s) => s.query(`INSERT INTO ${table} (text) VALUES ('before opt-out')`))
        .then(() => next(), next);
    });
    const outsideContext = async (req: Request, res: Response) => {
      const seen = {
        context: isContextInitiated(),
        dbSession: await dbSession(db).then(
          () => 'a session',
          (err: unknown) => (err instanceof ContextNotInitiatedError ? 'ContextNotInitiatedError' : String(err)),
        ),
        trace: tracing.getStore(),
        rowsSoFar: await texts(table),
      };
      await req.db.newAtomicSession((s) => s.query(`INSERT INTO ${table} (text) VALUES ($1)`, [req.path]));
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.write(JSON.stringify(seen));
      await waiting.promise; // the client has the head and the first chunk by now
      res.end();
    };
    const route = (req: Request, res: Response, next: NextFunction) => void outsideContext(req, res).catch(next);
    app.post('/opted', noContextDb(), route);
    app.post('/skipped', route);
    const url = await listen(t, app);

    for (const path of ['/opted', '/skipped']) {
      const head = deferred();
      const reply = request(`${url}${path}`, { onHead: () => head.resolve() });
      await head.promise;
      t.pass(`${path}: the head arrived while the handler still runs: nothing is held back`);
      t.equal(checkedOut(db), 0, `${path}: no connection is held while the route waits`);
      waiting.resolve();
      const seen = JSON.parse((await reply).body);
      t.equal(seen.context, false, `${path}: isContextInitiated() is false`);
      t.equal(seen.dbSession, 'ContextNotInitiatedError', `${path}: dbSession() says why`);
      t.equal(seen.trace, 'trace-1', `${path}: other AsyncLocalStorage stores are kept`);
      if (path === '/opted') t.same(seen.rowsSoFar, ['before opt-out'], 'earlier middleware work was committed first');
      waiting = deferred();
    }
    t.same(await texts(table), ['before opt-out', '/opted', '/skipped'], 'req.db.newAtomicSession() committed');
  });

  t.test(`${name}: req.db holds the helpers, bound to the db of contextDb()`, async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    const app = express();
    app.use(contextDb({ db }));
    app.post('/', (req: Request, res: Response, next: NextFunction) => {
      (async () => {
        const session = await req.db.session();
        t.equal(session, await dbSession(db), 'req.db.session() is the context session');
        await session.query(`INSERT INTO ${table} (text) VALUES ('ctx')`);
        await req.db.runInNewCtx(async () => {
          t.not(await dbSession(db), session, 'runInNewCtx: a context of its own');
          await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('new ctx')`);
        });
        await req.db.newSession(async (s) => {
          await s.query(`INSERT INTO ${table} (text) VALUES ('new session')`);
          await s.commit();
        });
        res.status(400).end();
      })().catch(next);
    });
    const url = await listen(t, app);
    t.equal((await request(url)).status, 400);
    t.same((await texts(table)).sort(), ['new ctx', 'new session'], 'the 400 rolled back only the context session');
  });

  for (const how of ['skip', 'noContextDb'] as const) {
    t.test(
      `${name}: a request opted out by ${how}() and resumed by another request stays outside any context`,
      async (t) => {
        const { db } = testDb(t);
        const table = await createTable(t);
        const parked: Array<() => void> = [];
        const app = express();
        app.set('env', 'test');
        const skip = (req: Request) => req.path === '/health';
        app.use(contextDb({ db, ...(how === 'skip' && { skip }) }));
        const gate = (req: Request, _res: Response, next: NextFunction) => {
          if (req.path === '/health') parked.push(() => next());
          else next();
        };
        const seen = deferred<unknown>();
        const health = (_req: Request, res: Response) => {
          dbSession(db)
            .then((s) => s.query(`INSERT INTO ${table} (text) VALUES ('opted out')`))
            .then(
              () => 'dbSession() worked',
              (err: unknown) => err,
            )
            .then((outcome) => {
              seen.resolve(outcome);
              res.send('ok');
            });
        };
        if (how === 'skip') app.get('/health', gate, health);
        else app.get('/health', noContextDb(), gate, health);
        app.post('/work', (_req: Request, res: Response, next: NextFunction) => {
          (async () => {
            await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('work')`);
            for (const release of parked.splice(0)) release();
            await sleep(100); // the releaser keeps its transaction open a little
            res.json({ ok: true });
          })().catch(next);
        });
        const url = await listen(t, app);
        const health200 = request(`${url}/health`, { method: 'GET' });
        t.ok(await eventually(() => parked.length === 1), 'parked');
        t.equal((await request(`${url}/work`)).status, 200);
        t.equal((await health200).status, 200);
        t.type(await seen.promise, ContextNotInitiatedError, 'dbSession() throws in the opted-out route');
        t.same(await texts(table), ['work'], "nothing of the opted-out route in the other request's transaction");
      },
    );
  }
}

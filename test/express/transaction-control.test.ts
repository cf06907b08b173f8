// Transaction control through Express: the transactionOptions() route middleware, nested blocks,
// onCommit / onRollback hooks (a throwing one reported on console.error), checked by the shared
// scenario in fixtures/transaction-routes.ts.
import { ContextNotInitiatedError, InvalidOptionsError } from '@context-db/core';
import { contextDb, transactionOptions } from '@context-db/express';
import type { NextFunction, Request, Response } from 'express';
import t from 'tap';
import { createTable, testDb } from '../fixtures/db.js';
import { listen, majors, request } from '../fixtures/express.js';
import { checkTransactionControl, handlers, ROUTE_OPTIONS } from '../fixtures/transaction-routes.js';

for (const { name, express } of majors) {
  t.test(`${name}: route options, nested blocks and hooks`, async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    const h = handlers(db, table);
    const logged: string[] = [];
    const consoleError = console.error;
    console.error = (...args: unknown[]) => void logged.push(args.map((a) => String(a)).join(' '));
    t.teardown(() => {
      console.error = consoleError;
    });
    const app = express();
    app.set('env', 'test');
    app.use(contextDb({ db }));
    const wrap =
      (fn: (req: Request, res: Response) => Promise<void>) => (req: Request, res: Response, next: NextFunction) =>
        void fn(req, res).catch(next);
    app.get(
      '/configured',
      transactionOptions(ROUTE_OPTIONS),
      wrap(async (_req, res) => void res.json(await h.settings())),
    );
    app.get(
      '/default',
      wrap(async (_req, res) => void res.json(await h.settings())),
    );
    app.post(
      '/read-only-write',
      transactionOptions({ readOnly: true }),
      wrap(async (_req, res) => {
        await h.write('x');
        res.send('written');
      }),
    );
    app.post(
      '/nested',
      wrap(async (_req, res) => {
        await h.nested();
        res.send('ok');
      }),
    );
    app.post(
      '/hooked/:outcome',
      wrap(async (req, res) => {
        const outcome = String(req.params.outcome);
        await h.hooked(outcome);
        if (outcome === 'throw') throw new Error('handler failed');
        res.status(outcome === '404' ? 404 : 200).send('done');
      }),
    );
    app.post(
      '/throwing-hook',
      wrap(async (_req, res) => {
        await h.throwingHook();
        res.send('ok');
      }),
    );
    app.use((err: Error, _req: Request, res: Response, _next: NextFunction) => void res.status(500).send(err.message));
    const url = await listen(t, app);
    await checkTransactionControl(t, {
      db,
      table,
      h,
      call: (method, path) => request(`${url}${path}`, { method }),
      logged: () => logged,
    });
  });
}

t.test('transactionOptions() checks its options at once, and needs contextDb() before it', async (t) => {
  t.throws(() => transactionOptions({ readOnly: 1 as never }), InvalidOptionsError);
  const { default: express } = await import('express');
  const app = express();
  let seen: unknown;
  app.get('/', transactionOptions({ readOnly: true }), (_req: Request, res: Response) => void res.send('x'));
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    seen = err;
    res.status(500).end();
  });
  const url = await listen(t, app);
  t.equal((await request(`${url}/`, { method: 'GET' })).status, 500);
  t.type(seen, ContextNotInitiatedError);
  t.match(String((seen as Error).message), /place it after the contextDb\(\) middleware/);
});

// DESIGN.md "Adapters": the outcome is decided from the final status and error before any byte
// of the response is sent; 2xx/3xx commit, errors, 4xx and 5xx roll back. On both majors.
import { fileURLToPath } from 'node:url';
import { dbSession } from '@context-db/core';
import { contextDb, contextDbErrors } from '@context-db/express';
import type { NextFunction, Request, Response } from 'express';
import t from 'tap';
import { createTable, testDb, texts } from '../fixtures/db.js';
import { deferred, listen, majors, request, sleep } from '../fixtures/express.js';

const kinds = ['json', 'send', 'end', 'redirect', 'write', 'sendFile'] as const;
type Kind = (typeof kinds)[number];
const outcomes = ['ok', 'throw', 'next', '4xx', '5xx'] as const;
const thisFile = fileURLToPath(import.meta.url);

async function respond(res: Response, kind: Kind, status: number): Promise<void> {
  res.status(status);
  if (kind === 'json') res.json({ kind });
  else if (kind === 'send') res.send(kind);
  else if (kind === 'end') res.end(kind);
  else if (kind === 'redirect') res.redirect(status, '/elsewhere');
  else if (kind === 'sendFile') res.sendFile(thisFile);
  else {
    res.setHeader('Content-Type', 'text/plain');
    res.write('wr');
    await sleep(5);
    res.write('i');
    res.end('te');
  }
}

type Handler = (req: Request, res: Response, next: NextFunction) => Promise<void>;

for (const { name, express } of majors) {
  // Express 4 does not catch a rejected handler: the documented way there is .catch(next).
  const route = (fn: Handler) =>
    name === 'express 4'
      ? (req: Request, res: Response, next: NextFunction) => void fn(req, res, next).catch(next)
      : fn;

  t.test(`${name}: 2xx/3xx commit; throw, next(err), 4xx, 5xx roll back, for every way to respond`, async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    const app = express();
    app.set('env', 'test');
    app.use(contextDb({ db }));
    app.post(
      '/:kind/:outcome',
      route(async (req, res, next) => {
        const kind = req.params.kind as Kind;
        const outcome = req.params.outcome as (typeof outcomes)[number];
        res.locals.kind = kind;
        await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [`${kind}-${outcome}`]);
        if (outcome === 'throw') throw new Error('boom');
        if (outcome === 'next') return next(new Error('boom'));
        const status = { ok: kind === 'redirect' ? 302 : 200, '4xx': 422, '5xx': 503 }[outcome] ?? 0;
        await respond(res, kind, status);
      }),
    );
    app.use((_err: unknown, _req: Request, res: Response, next: NextFunction) => {
      respond(res, res.locals.kind as Kind, 500).catch(next);
    });
    const url = await listen(t, app);
    for (const kind of kinds) {
      for (const outcome of outcomes) {
        const reply = await request(`${url}/${kind}/${outcome}`);
        const expected = { ok: kind === 'redirect' ? 302 : 200, throw: 500, next: 500, '4xx': 422, '5xx': 503 }[
          outcome
        ];
        t.equal(reply.status, expected, `${kind}/${outcome}: status`);
        if (kind === 'write') t.equal(reply.body, 'write', `${kind}/${outcome}: the whole streamed body`);
        if (kind === 'sendFile') t.match(reply.body, 'for every way to respond', `${kind}/${outcome}: the file`);
      }
    }
    t.same(
      (await texts(table)).sort(),
      kinds.map((kind) => `${kind}-ok`).sort(),
      'the table holds exactly the successful requests',
    );
  });

  for (const kind of ['json', 'write', 'sendFile'] as const) {
    t.test(`${name}: res.${kind === 'write' ? 'write' : kind}() reaches the client only after COMMIT`, async (t) => {
      const { db } = testDb(t);
      const table = await createTable(t);
      const entered = deferred();
      const gate = deferred();
      const app = express();
      app.use(
        contextDb({
          db,
          beforeCommit: async () => {
            entered.resolve();
            await gate.promise;
          },
        }),
      );
      app.post(
        '/',
        route(async (_req, res) => {
          await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('a')`);
          await respond(res, kind, 200);
        }),
      );
      const url = await listen(t, app);
      let headAt: number | undefined;
      let visibleAtHead: Promise<string[]> | undefined;
      const reply = request(url, {
        onHead: () => {
          headAt = Date.now();
          visibleAtHead = texts(table);
        },
      });
      await entered.promise;
      await sleep(150);
      t.equal(headAt, undefined, 'no byte of the response while the commit is pending');
      t.same(await texts(table), [], 'not committed yet');
      gate.resolve();
      t.equal((await reply).status, 200);
      t.same(await visibleAtHead, ['a'], 'the row is visible from outside when the client sees the 200');
    });
  }

  t.test(
    `${name}: an error rolls back though an error handler answers 200, with or without contextDbErrors()`,
    async (t) => {
      const { db } = testDb(t);
      const table = await createTable(t);
      const app = express();
      app.use(contextDb({ db }));
      app.post(
        '/:capture',
        route(async (req) => {
          await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ($1)`, [req.params.capture]);
          throw new Error('handled');
        }),
      );
      app.use('/captured', contextDbErrors());
      app.use((_err: unknown, _req: Request, res: Response, _next: NextFunction) => {
        res.status(200).json({ handled: true });
      });
      const url = await listen(t, app);
      t.equal((await request(`${url}/captured`)).status, 200);
      t.equal((await request(`${url}/uncaptured`)).status, 200);
      t.same(await texts(table), [], 'both rolled back: contextDbErrors() is optional');
    },
  );

  t.test(`${name}: what goes out is the response as the handler ended it`, async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    const app = express();
    app.set('env', 'test');
    app.use(contextDb({ db }));
    app.post(
      '/',
      route(async (_req, res) => {
        await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('a')`);
        res.status(201).json({ first: true });
        // An error after the response (Express's final handler then tries a 500) and a second
        // response must not change what the client gets for the first.
        res.setHeader('Content-Length', '1');
        throw new Error('after the response');
      }),
    );
    const url = await listen(t, app);
    const reply = await request(url);
    t.equal(reply.status, 201);
    t.same(JSON.parse(reply.body), { first: true });
    t.same(await texts(table), ['a'], 'the outcome was decided when the response ended');
  });
}

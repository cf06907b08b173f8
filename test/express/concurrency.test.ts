// DESIGN.md "Rules": nothing leaks. 500 concurrent requests, half failing in mixed ways: the
// table holds exactly the successful ones, and no connection or transaction is left behind.
import http from 'node:http';
import { dbSession } from '@context-db/core';
import { contextDb } from '@context-db/express';
import express, { type NextFunction, type Request, type Response } from 'express';
import t from 'tap';
import { activity, admin, checkedOut, createTable, eventually, testDb, texts, uniqueName } from '../fixtures/db.js';
import { listen, request, sleep } from '../fixtures/express.js';

const outcomes = ['ok', 'throw', 'ok', 'next', 'ok', '422', 'ok', '503', 'ok', 'commit-fails'] as const;
const expectedStatus = { ok: 200, throw: 500, next: 500, '422': 422, '503': 503, 'commit-fails': 500 };

t.test('500 concurrent requests, half failing: exactly the successful rows, nothing held', async (t) => {
  const { db, appName } = testDb(t, { max: 10 });
  const table = await createTable(
    t,
    `key text, CONSTRAINT ${uniqueName('key')} UNIQUE (key) DEFERRABLE INITIALLY DEFERRED`,
  );
  await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'taken')`);
  const app = express();
  app.set('env', 'test');
  app.use(express.json(), contextDb({ db }));
  app.post('/:i', async (req: Request, res: Response, next: NextFunction) => {
    const outcome = outcomes[Number(req.params.i) % outcomes.length];
    const session = await dbSession(db);
    const key = outcome === 'commit-fails' ? 'taken' : null;
    await session.query(`INSERT INTO ${table} (text, key) VALUES ($1, $2)`, [`r${req.params.i}`, key]);
    await sleep(Number(req.params.i) % 3); // interleave the requests' transactions
    await session.query('SELECT 1');
    if (outcome === 'throw') throw new Error('boom');
    if (outcome === 'next') return next(new Error('boom'));
    res.status(outcome === '422' || outcome === '503' ? Number(outcome) : 200).json({ i: req.params.i });
  });
  const url = await listen(t, app);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
  t.teardown(() => agent.destroy());

  const n = 500;
  const replies = await Promise.all(
    Array.from({ length: n }, (_, i) => request(`${url}/${i}`, { agent }).then((reply) => reply.status)),
  );
  const expected: string[] = [];
  let wrong = 0;
  for (let i = 0; i < n; i++) {
    const outcome = outcomes[i % outcomes.length] ?? 'ok';
    if (replies[i] !== expectedStatus[outcome]) wrong++;
    if (outcome === 'ok') expected.push(`r${i}`);
  }
  t.equal(wrong, 0, 'every request got the status of its outcome');
  t.equal(expected.length, n / 2);
  const rows = await texts(table);
  t.same(rows.filter((text) => text !== 'existing').sort(), expected.sort(), 'exactly the successful rows');
  t.ok(await eventually(() => checkedOut(db) === 0), '0 connections checked out');
  const after = await activity(appName);
  t.equal(after.idleInTransaction, 0, '0 idle in transaction');
  t.ok(after.total <= 10, `at most the pool's 10 server connections (${after.total})`);
});

// DESIGN "Rules": nothing leaks on any path. 500 concurrent requests over keep-alive sockets,
// half of them failing in five different ways, through a pool of 10 connections.
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { dbSession } from '@context-db/core';
import { contextDb } from '@context-db/koa';
import Koa from 'koa';
import t from 'tap';
import { activity, admin, checkedOut, eventually, testDb, texts } from '../fixtures/db.js';
import { collectErrors, createDeferredTable, request, serve } from '../fixtures/koa.js';

const REQUESTS = 500;

// Request i ends by: 0-4 success, 5 throw, 6 ctx.throw(409), 7 ctx.status = 503, 8 a COMMIT
// that fails (duplicate deferred key), 9 no body (Koa's 404).
const outcomes = ['ok', 'ok', 'ok', 'ok', 'ok', 'throw', 'ctx-throw', 'status-503', 'commit-fails', 'no-body'] as const;
const expectedStatus = {
  ok: 200,
  throw: 500,
  'ctx-throw': 409,
  'status-503': 503,
  'commit-fails': 500,
  'no-body': 404,
};

t.test(`${REQUESTS} concurrent requests, half failing: exactly the successes are stored, nothing leaks`, async (t) => {
  const { db, appName } = testDb(t, { max: 10 });
  const table = await createDeferredTable(t);
  await admin.query(`INSERT INTO ${table} (text, key) VALUES ('existing', 'taken')`);
  const app = new Koa();
  const errors = collectErrors(app);
  let peak = 0;
  app.use(contextDb({ db }));
  app.use(async (ctx) => {
    const i = Number(ctx.path.slice(1));
    const outcome = outcomes[i % outcomes.length];
    const session = await dbSession(db);
    await session.query(`INSERT INTO ${table} (text, key) VALUES ($1, $2)`, [
      `r${i}`,
      outcome === 'commit-fails' ? 'taken' : null,
    ]);
    peak = Math.max(peak, checkedOut(db));
    await sleep(i % 3); // interleave: hold the transaction across a turn of the event loop
    await session.query('SELECT 1');
    if (outcome === 'no-body') return;
    // The body first (status 200), so a throw must roll back by itself.
    ctx.body = { i };
    if (outcome === 'throw') throw new Error(`fail ${i}`);
    if (outcome === 'ctx-throw') ctx.throw(409);
    if (outcome === 'status-503') ctx.status = 503;
  });
  const url = await serve(t, app);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 50 });
  t.teardown(() => agent.destroy());

  const replies = await Promise.all(
    Array.from({ length: REQUESTS }, (_, i) => request(`${url}/${i}`, { agent }).then((reply) => reply.status)),
  );

  const expected = replies.map((_, i) => expectedStatus[outcomes[i % outcomes.length] ?? 'ok']);
  t.same(replies, expected, 'every request got the status of its outcome');
  const succeeded = expected.flatMap((status, i) => (status === 200 ? [`r${i}`] : []));
  t.equal(succeeded.length, REQUESTS / 2);
  t.same(
    (await texts(table)).filter((text) => text !== 'existing').sort(),
    succeeded.sort(),
    'the table holds exactly the successful requests',
  );
  t.ok(peak > 1 && peak <= 10, `requests shared the pool (peak ${peak} of 10 checked out)`);
  t.equal(checkedOut(db), 0, 'no connection checked out');
  t.ok(
    await eventually(async () => (await activity(appName)).idleInTransaction === 0),
    'no connection idle in transaction',
  );
  t.ok((await activity(appName)).total <= 10, 'never more server connections than the pool max');
  t.equal(errors.length, (REQUESTS / 10) * 3, 'each throw, ctx.throw and failed commit reached app.on("error")');
});

// A session used after its request ended (background work started without runInNewCtx) fails with
// SessionClosedError and takes no connection; the same work started with runInNewCtx succeeds.
import { setTimeout as sleep } from 'node:timers/promises';
import { dbSession, SessionClosedError } from '@context-db/core';
import t from 'tap';
import { frameworks, get, type Route, startServer } from '../fixtures/chaos.js';
import { activity, admin, checkedOut, createTable, testDb } from '../fixtures/db.js';

for (const framework of frameworks) {
  t.test(`${framework}: background work on the request's session fails with SessionClosedError`, async (t) => {
    const { db, appName } = testDb(t, { max: 4 });
    const table = await createTable(t);
    const background: Array<Promise<unknown>> = [];
    const routes: Record<string, Route> = {
      leaky: async (helpers) => {
        const session = await helpers.session();
        await session.query(`INSERT INTO ${table} (text) VALUES ('request')`);
        // Wrong on purpose: work that outlives the request, on the request's session and context.
        background.push(
          sleep(150).then(() => session.query(`INSERT INTO ${table} (text) VALUES ('late session')`)),
          sleep(150).then(async () => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('late ctx')`)),
          sleep(150).then(() => helpers.session()),
          // Right: a context of its own.
          helpers.runInNewCtx(async () => {
            await sleep(150);
            await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('own ctx')`);
          }),
        );
        return { status: 200, body: { ok: true } };
      },
    };
    const server = await startServer(framework, db, routes);
    t.teardown(() => server.close());

    const res = await get(`${server.url}/r/leaky`);
    t.equal(res.kind === 'response' && res.status, 200);
    t.equal(checkedOut(db), 0, 'the request released its connection');
    const totalBefore = db.pool().totalCount;
    const [late, lateCtx, lateHelper, own] = await Promise.allSettled(background);
    for (const [name, outcome] of [
      ['session.query()', late],
      ['dbSession(db)', lateCtx],
      ['request helper session()', lateHelper],
    ] as const) {
      t.equal(outcome?.status, 'rejected', `${name} after the request rejects`);
      const reason = outcome?.status === 'rejected' ? (outcome.reason as unknown) : undefined;
      t.type(reason, SessionClosedError, `${name}: SessionClosedError`);
      t.match(
        String((reason as Error | undefined)?.message),
        /runInNewCtx/,
        `${name}: the message points to runInNewCtx`,
      );
    }
    t.equal(own?.status, 'fulfilled', 'the runInNewCtx work succeeds');
    t.ok(db.pool().totalCount <= Math.max(totalBefore, 1), 'the closed-session work opened no connection');
    t.equal(checkedOut(db), 0, 'nothing is left checked out');
    t.equal((await activity(appName)).idleInTransaction, 0);
    const { rows } = await admin.query<{ text: string }>(`SELECT text FROM ${table} ORDER BY text`);
    t.same(
      rows.map((row) => row.text),
      ['own ctx', 'request'],
      'only the request and the runInNewCtx work wrote',
    );
  });
}

// Pool exhausted: with both connections held by slow requests, the next request waits at most
// connectionTimeoutMillis and gets a 503 POOL_EXHAUSTED; afterwards nothing is held.
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { type Framework, frameworks, get, type Route, startServer } from '../fixtures/chaos.js';
import { activity, checkedOut, createTable, eventually, testDb } from '../fixtures/db.js';

for (const framework of frameworks) {
  t.test(`${framework}: a request that finds the pool full gets 503 within the acquire timeout`, async (t) => {
    const { db, appName } = testDb(t, { max: 2, connectionTimeoutMillis: 300 });
    const table = await createTable(t);
    let releaseSlow: () => void = () => {};
    const slowGate = new Promise<void>((resolve) => {
      releaseSlow = resolve;
    });
    const routes: Record<string, Route> = {
      slow: async (helpers, params) => {
        const session = await helpers.session();
        await session.query(`INSERT INTO ${table} (text) VALUES ($1)`, [params.get('key')]);
        await slowGate;
        return { status: 200, body: { ok: true } };
      },
      fast: async (helpers, params) => {
        const session = await helpers.session();
        await session.query(`INSERT INTO ${table} (text) VALUES ($1)`, [params.get('key')]);
        return { status: 200, body: { ok: true } };
      },
    };
    const server = await startServer(framework as Framework, db, routes);
    t.teardown(() => server.close());

    const slow = [get(`${server.url}/r/slow?key=slow1`), get(`${server.url}/r/slow?key=slow2`)];
    t.ok(await eventually(() => checkedOut(db) === 2), 'both connections are held by the slow requests');
    const started = Date.now();
    const starved = await get(`${server.url}/r/fast?key=starved`);
    const waited = Date.now() - started;
    t.equal(starved.kind === 'response' && starved.status, 503, 'the starved request gets 503');
    t.match(starved.kind === 'response' ? starved.body : '', /POOL_EXHAUSTED/, 'with the POOL_EXHAUSTED code');
    t.ok(waited >= 250 && waited < 1500, `it waited about the acquire timeout (${waited} ms)`);

    releaseSlow();
    for (const result of await Promise.all(slow)) t.equal(result.kind === 'response' && result.status, 200);
    const after = await get(`${server.url}/r/fast?key=after`);
    t.equal(after.kind === 'response' && after.status, 200, 'the next request is served');
    await sleep(50);
    t.ok(await eventually(() => checkedOut(db) === 0), 'nothing is left checked out');
    t.equal((await activity(appName)).idleInTransaction, 0, 'no session idle in transaction');
    const { rows } = await (await import('../fixtures/db.js')).admin.query<{ text: string }>(
      `SELECT text FROM ${table} ORDER BY text`,
    );
    t.same(
      rows.map((row) => row.text),
      ['after', 'slow1', 'slow2'],
      'the starved request wrote nothing',
    );
  });
}

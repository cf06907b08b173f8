// idle_in_transaction_session_timeout kills a session a request holds: the request fails with a
// clean 500 (no crash, no unhandled 'error' event), the dead connection is discarded, and the
// next requests are served on fresh connections (which do not inherit the setting).
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { frameworks, get, type Route, startServer } from '../fixtures/chaos.js';
import { activity, admin, checkedOut, createTable, eventually, testDb } from '../fixtures/db.js';

for (const framework of frameworks) {
  t.test(
    `${framework}: a session killed by idle_in_transaction_session_timeout fails its request cleanly`,
    async (t) => {
      const poolErrors: Error[] = [];
      const { db, appName } = testDb(t, { max: 2 }, { onPoolError: (err) => poolErrors.push(err) });
      const table = await createTable(t);
      const pids: number[] = [];
      const routes: Record<string, Route> = {
        held: async (helpers) => {
          const session = await helpers.session();
          const { rows } = await session.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
          pids.push(rows[0]?.pid ?? -1);
          await session.query("SET idle_in_transaction_session_timeout = '200ms'");
          await session.query(`INSERT INTO ${table} (text) VALUES ('held')`);
          await sleep(600);
          await session.query(`INSERT INTO ${table} (text) VALUES ('held-late')`);
          return { status: 200, body: { ok: true } };
        },
        ok: async (helpers) => {
          const session = await helpers.session();
          const { rows } = await session.query<{ timeout: string }>(
            "SELECT current_setting('idle_in_transaction_session_timeout') AS timeout",
          );
          await session.query(`INSERT INTO ${table} (text) VALUES ('ok')`);
          return { status: 200, body: { timeout: rows[0]?.timeout } };
        },
      };
      const server = await startServer(framework, db, routes);
      t.teardown(() => server.close());

      const held = await get(`${server.url}/r/held`);
      t.equal(held.kind === 'response' && held.status, 500, 'the request whose session was killed gets 500');
      t.match(held.kind === 'response' ? held.body : '', /terminat|not queryable|Connection/i, 'with a clear message');
      t.ok(
        await eventually(async () => {
          const { rows } = await admin.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [pids[0]]);
          return rows.length === 0;
        }),
        'the killed backend is gone',
      );
      for (let i = 0; i < 4; i++) {
        const ok = await get(`${server.url}/r/ok`);
        t.equal(ok.kind === 'response' && ok.status, 200, `request ${i + 1} after it is served`);
        t.match(
          ok.kind === 'response' ? JSON.parse(ok.body) : {},
          { timeout: '0' },
          'on a connection without the setting',
        );
      }
      t.ok(await eventually(() => checkedOut(db) === 0), 'nothing is left checked out');
      t.equal((await activity(appName)).idleInTransaction, 0, 'no session idle in transaction');
      const { rows } = await admin.query<{ text: string }>(`SELECT text FROM ${table}`);
      t.same(
        rows.map((row) => row.text),
        ['ok', 'ok', 'ok', 'ok'],
        'nothing of the killed request was written',
      );
    },
  );
}

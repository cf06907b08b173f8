// Nothing of one session reaches the next one through a pooled connection: not its settings, role,
// temp tables, held cursors, advisory locks or LISTENs (reset in the flight of its last COMMIT or
// ROLLBACK), not its
// raw client (revoked on release), not its async context (connections open outside any request).
import { currentCtx, DbConnect, type DbSession, DbSessionCtx, dbSession } from '@context-db/core';
import t from 'tap';
import { activity, admin, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';

/** Run `fn` with the session of a fresh context, then finish it by `statusCode`. */
async function inCtx<R>(db: DbConnect, statusCode: number, fn: (session: DbSession) => Promise<R>): Promise<R> {
  const ctx = new DbSessionCtx();
  const result = await ctx.run(async () => fn(await dbSession(db)));
  await ctx.finish({ statusCode }).catch(() => {});
  return result;
}

const pid = async (s: DbSession): Promise<number> =>
  (await s.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]?.pid ?? -1;

const lockKey = 0x5e551;

async function leaveState(session: DbSession, schema: string, role: string): Promise<number> {
  await session.query(`SELECT set_config('app.tenant', 'tenant-a', false)`);
  await session.query(`SET search_path = ${schema}, public`);
  await session.query('CREATE TEMP TABLE leftover (secret text)');
  await session.query(`INSERT INTO leftover VALUES ('tenant-a secret')`);
  await session.query(`SELECT pg_advisory_lock(${lockKey})`);
  await session.query('SET default_transaction_read_only = on');
  await session.query('LISTEN tenant_a_events');
  await session.query('DECLARE leftover_cursor CURSOR WITH HOLD FOR SELECT 1');
  const backend = await pid(session);
  await session.query(`SET ROLE ${role}`);
  return backend;
}

async function stateSeen(session: DbSession) {
  const { rows } = await session.query<{
    tenant: string | null;
    search_path: string;
    temp: string | null;
    read_only: string;
    channels: string[];
    user_name: string;
    cursors: number;
  }>(
    `SELECT current_setting('app.tenant', true) AS tenant, current_setting('search_path') AS search_path,
            to_regclass('pg_temp.leftover')::text AS temp, current_setting('default_transaction_read_only') AS read_only,
            ARRAY(SELECT pg_listening_channels()) AS channels, current_user AS user_name,
            (SELECT count(*)::int FROM pg_cursors) AS cursors`,
  );
  return rows[0];
}

for (const statusCode of [200, 500]) {
  t.test(`a request ended by ${statusCode} leaves no session state for the next one on its connection`, async (t) => {
    const { db, appName } = testDb(t, { max: 1 });
    const schema = `tenant_${Date.now()}_${statusCode}`;
    await admin.query(`CREATE SCHEMA ${schema}`);
    t.teardown(() => admin.query(`DROP SCHEMA ${schema} CASCADE`));
    const role = `${schema}_role`;
    await admin.query(`CREATE ROLE ${role}`);
    t.teardown(() => admin.query(`DROP ROLE ${role}`));
    const { rows: me } = await admin.query<{ user_name: string }>('SELECT current_user AS user_name');
    const firstPid = await inCtx(db, statusCode, (s) => leaveState(s, schema, role));
    const { secondPid, seen } = await inCtx(db, 200, async (s) => ({
      secondPid: await pid(s),
      seen: await stateSeen(s),
    }));
    t.equal(secondPid, firstPid, 'the next request got the same connection');
    t.match(seen, {
      tenant: /^$|^null$/,
      search_path: '"$user", public',
      temp: null,
      read_only: 'off',
      channels: [],
      user_name: me[0]?.user_name,
      cursors: 0,
    });
    const { rows } = await admin.query<{ locked: boolean }>(`SELECT pg_try_advisory_lock(${lockKey}) AS locked`);
    t.equal(rows[0]?.locked, true, 'the advisory lock was let go');
    await admin.query(`SELECT pg_advisory_unlock(${lockKey})`);
    await inCtx(db, 200, (s) => s.query(`CREATE TEMP TABLE can_write (x int)`));
    t.equal(checkedOut(db), 0);
    t.equal((await activity(appName)).idleInTransaction, 0);
  });
}

t.test('a session that committed early and ends without another query still resets its connection', async (t) => {
  const { db } = testDb(t, { max: 1 });
  await inCtx(db, 200, async (s) => {
    await s.query(`SELECT set_config('app.tenant', 'tenant-a', false)`);
    await s.commit();
  });
  const seen = await inCtx(db, 200, stateSeen);
  t.match(seen, { tenant: /^$|^null$/ });
});

t.test('resetSession: false leaves session state on the connection (for apps that never set any)', async (t) => {
  const { db } = testDb(t, { max: 1 }, { resetSession: false });
  await inCtx(db, 200, (s) => s.query(`SELECT set_config('app.tenant', 'tenant-a', false)`));
  t.match(await inCtx(db, 200, stateSeen), { tenant: 'tenant-a' });
  t.throws(() => new DbConnect({ connectionString: 'postgres://x@127.0.0.1/x', resetSession: 'no' as never }), {
    code: 'INVALID_OPTIONS',
  });
});

t.test('a raw client from session.client() stops working once its session let the connection go', async (t) => {
  const { db, appName } = testDb(t, { max: 1 });
  const table = await createTable(t);
  const kept = await inCtx(db, 200, async (s) => {
    const client = await s.client();
    await client.query(`INSERT INTO ${table} (text) VALUES ('own')`);
    client.release(); // the session owns the connection: this must not give it back early
    t.equal(checkedOut(db), 1, 'release() on the handed-out client does nothing');
    return client;
  });
  // The next request holds the same connection, mid-transaction.
  const ctx = new DbSessionCtx();
  await ctx.run(async () => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('next')`));
  await t.rejects(kept.query(`DELETE FROM ${table}`), { code: 'SESSION_CLOSED' }, 'a kept client is refused');
  await new Promise<void>((resolve) => {
    kept.query(`DELETE FROM ${table}`, (err: Error | undefined) => {
      t.match(err, { code: 'SESSION_CLOSED' }, 'callback style too');
      resolve();
    });
  });
  await ctx.finish({ statusCode: 200 });
  const { rows } = await admin.query(`SELECT text FROM ${table} ORDER BY id`);
  t.same(
    rows.map((r) => r.text),
    ['own', 'next'],
    "the kept client never ran inside the next request's transaction",
  );
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test(
  "a pooled connection's callbacks run in the caller's context, never in the request's that opened it",
  async (t) => {
    const { db } = testDb(t, { max: 1 });
    const first = new DbSessionCtx();
    await first.run(async () => (await dbSession(db)).query('SELECT 1')); // opens the connection
    await first.finish();
    const seen: Array<DbSessionCtx | undefined> = [];
    const second = new DbSessionCtx();
    await second.run(async () => {
      const client = await (await dbSession(db)).client();
      const onNotice = (): void => {
        seen.push(currentCtx());
      };
      client.on('notice', onNotice);
      await client.query(`DO $$ BEGIN RAISE NOTICE 'hello'; END $$`);
      await new Promise<void>((resolve) => {
        client.query('SELECT 1', () => {
          seen.push(currentCtx());
          resolve();
        });
      });
      client.off('notice', onNotice);
    });
    await second.finish();
    t.equal(seen.length, 2);
    t.not(seen[0], first, "the socket's callback is not in the first request's context");
    t.same(
      seen.map((ctx) => ctx === second),
      [true, true],
      'a listener and a query callback run in the context that added them',
    );
  },
);

t.test("listeners added through a request's client leave with its session", async (t) => {
  const { db } = testDb(t, { max: 1 });
  const heard: string[] = [];
  const first = new DbSessionCtx();
  await first.run(async () => {
    const client = await (await dbSession(db)).client();
    client.on('notification', (message) => {
      heard.push(message.payload ?? '');
    });
  });
  await first.finish();
  const second = new DbSessionCtx();
  await second.run(async () => {
    const s = await dbSession(db);
    await s.query('LISTEN second_channel');
    await s.commit();
    await s.query(`SELECT pg_notify('second_channel', 'for the second request only')`);
    await s.commit();
    await s.query('SELECT pg_sleep(0.05)');
  });
  await second.finish();
  t.same(heard, [], "the first request's listener never heard the second's notifications");
});

t.test('a long-lived session whose connection died between transactions takes a fresh one', async (t) => {
  const { db } = testDb(t);
  const session = await db.createSession();
  t.teardown(() => session.close());
  const before = await pid(session);
  await session.commit();
  await admin.query('SELECT pg_terminate_backend($1)', [before]);
  t.ok(
    await eventually(
      async () => !(await admin.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [before])).rowCount,
    ),
  );
  await new Promise((resolve) => setTimeout(resolve, 50)); // let the client see its socket end
  await session.rollback();
  await session.commit();
  const after = await pid(session);
  t.not(after, before, 'the next query ran on a new connection');
  await session.commit();
  await session.close();
  t.equal(checkedOut(db), 0);
});

t.test('a raw client never runs a query outside its transaction, where it would commit on its own', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  const client = await ctx.run(async () => {
    const s = await dbSession(db);
    await s.query(`INSERT INTO ${table} (text) VALUES ('req')`);
    return s.client();
  });
  const finishing = ctx.finish({ error: new Error('handler failed') });
  // Late code of the failed request (a query builder holding the client) fires one more write.
  await t.rejects(client.query(`INSERT INTO ${table} (text) VALUES ('late')`), { code: 'SESSION_CLOSED' });
  await finishing;
  const other = new DbSessionCtx();
  await other.run(async () => {
    const s = await dbSession(db);
    const c = await s.client();
    await s.commit();
    await t.rejects(c.query(`INSERT INTO ${table} (text) VALUES ('autocommit')`), {
      code: 'SESSION_CLOSED',
      message: /no transaction open/,
    });
    await (await s.client()).query(`INSERT INTO ${table} (text) VALUES ('begun again')`);
  });
  await other.finish({ statusCode: 500 });
  t.same(await texts(table), [], 'nothing of either rolled-back request is in the table');
});

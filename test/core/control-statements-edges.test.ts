// Edges of the transaction-control statements (ControlStatement in packages/core/src/session.ts),
// first written by a review: a final COMMIT that succeeds while a statement of the reset in the
// same flight fails (DISCARD TEMP waits on a lock past the connection's statement_timeout) is a
// committed request on a closed connection, on a pool in pg's pipeline mode too; a backend
// terminated during the final COMMIT and reset (the outcome unknown, the promise settled, the
// connection closed); notices and notifications sent by a deferred trigger during the COMMIT
// (nothing carried to the next request on the connection); a SAVEPOINT queued behind a leased
// client's query past pg's query_timeout.
import { atomicDbSession, DbSessionCtx, dbSession } from '@context-db/core';
import t from 'tap';
import { activity, admin, checkedOut, createTable, eventually, outcome, testDb, texts } from '../fixtures/db.js';

for (const pipeline of [false, true]) {
  t.test(
    `a COMMIT that succeeds while a reset statement after it fails is a commit (pipeline: ${pipeline})`,
    async (t) => {
      // statement_timeout is a startup parameter: RESET ALL goes back to it, DISCARD TEMP runs under it.
      const { db, appName } = testDb(t, { max: 1, statement_timeout: 300, pipeline });
      const table = await createTable(t);
      const locker = await admin.connect();
      t.teardown(async () => {
        await locker.query('ROLLBACK').catch(() => undefined);
        locker.release();
      });
      const ctx = new DbSessionCtx();
      await ctx.run(async () => {
        const session = await dbSession(db);
        await session.query('CREATE TEMP TABLE review_tmp (x int)');
        const { rows } = await session.query<{ nspname: string }>(
          'SELECT nspname FROM pg_namespace WHERE oid = pg_my_temp_schema()',
        );
        await session.commit();
        // Another session holds a lock on the temp table: the reset's DISCARD TEMP waits, and times out.
        await locker.query('BEGIN');
        await locker.query(`LOCK TABLE ${rows[0]?.nspname}.review_tmp IN ACCESS SHARE MODE`);
        await session.query(`INSERT INTO ${table} (text) VALUES ('committed')`);
      });
      const result = await outcome(ctx.finish({ statusCode: 200 }));
      await locker.query('ROLLBACK');
      const rows = await texts(table);
      t.same(rows, ['committed'], 'PostgreSQL committed the transaction');
      t.equal(result, 'ok', 'so the request is not reported as failed');
      t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
      t.ok(
        await eventually(async () => (await activity(appName)).total === 0),
        'the connection that kept its temporary table was closed, not given to the next request',
      );
    },
  );
}

t.test('a backend terminated during the final COMMIT and reset: outcome unknown, settled, closed', async (t) => {
  const { db, appName } = testDb(t, { max: 1 });
  const table = await createTable(t);
  const fn = `${table}_slow`;
  await admin.query(
    `CREATE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$`,
  );
  t.teardown(() => admin.query(`DROP FUNCTION IF EXISTS ${fn}() CASCADE`));
  await admin.query(
    `CREATE CONSTRAINT TRIGGER ${fn} AFTER INSERT ON ${table} DEFERRABLE INITIALLY DEFERRED ` +
      `FOR EACH ROW EXECUTE FUNCTION ${fn}()`,
  );
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('x')`);
  });
  const finishing = outcome(ctx.finish({ statusCode: 200 }));
  t.ok(
    await eventually(async () => {
      const { rows } = await admin.query(
        "SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'COMMIT%' AND state = 'active'",
        [appName],
      );
      return rows.length > 0;
    }),
    'the COMMIT is running',
  );
  await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [appName]);
  t.equal(await finishing, 'COMMIT_OUTCOME_UNKNOWN');
  t.equal(checkedOut(db), 0);
  t.ok(await eventually(async () => (await activity(appName)).total === 0), 'the connection is closed');
});

t.test('notices and notifications during the COMMIT: nothing carried to the next request', async (t) => {
  const { db, appName } = testDb(t, { max: 1 });
  const table = await createTable(t);
  const channel = `${table}_ch`;
  const fn = `${table}_noisy`;
  await admin.query(
    `CREATE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE NOTICE 'deferred'; ` +
      `PERFORM pg_notify('${channel}', 'from commit'); RETURN NULL; END $$`,
  );
  t.teardown(() => admin.query(`DROP FUNCTION IF EXISTS ${fn}() CASCADE`));
  await admin.query(
    `CREATE CONSTRAINT TRIGGER ${fn} AFTER INSERT ON ${table} DEFERRABLE INITIALLY DEFERRED ` +
      `FOR EACH ROW EXECUTE FUNCTION ${fn}()`,
  );
  const heard: string[] = [];
  const ctx = new DbSessionCtx();
  await ctx.run(async () => {
    const session = await dbSession(db);
    const client = await session.client();
    client.on('notification', (msg) => heard.push(`first: ${msg.payload}`));
    client.on('notice', (msg) => heard.push(`first notice: ${msg.message}`));
    await session.query(`LISTEN ${channel}`);
    await session.query(`INSERT INTO ${table} (text) VALUES ('noisy')`);
  });
  await ctx.finish({ statusCode: 200 });
  const second = new DbSessionCtx();
  let channels: unknown[] = [];
  await second.run(async () => {
    const session = await dbSession(db);
    channels = (await session.query('SELECT pg_listening_channels() AS c')).rows;
    await admin.query(`SELECT pg_notify('${channel}', 'later')`);
    await session.query('SELECT pg_sleep(0.1)');
  });
  await second.finish({ statusCode: 200 });
  t.same(channels, [], 'the LISTEN was reset');
  t.notOk(
    heard.some((h) => h.includes('later')),
    "the first request's listener hears nothing of the second",
  );
  t.same(await texts(table), ['noisy']);
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test("a SAVEPOINT queued behind a leased client's query past pg's query_timeout", async (t) => {
  const { db, appName } = testDb(t, { max: 1, query_timeout: 200 });
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  const ran = ctx.run(async () => {
    const session = await dbSession(db);
    await session.query(`INSERT INTO ${table} (text) VALUES ('outer')`);
    const client = await session.client();
    const slow = client.query('SELECT pg_sleep(0.5)').catch((err: Error) => err);
    await atomicDbSession(db, async (inner) => {
      await inner.query(`INSERT INTO ${table} (text) VALUES ('inner')`);
    });
    await slow;
  });
  const ranOutcome = await outcome(ran);
  t.not(ranOutcome, 'ok', `the block failed (${ranOutcome})`);
  const finished = await outcome(ctx.finish({ statusCode: ranOutcome === 'ok' ? 200 : 500 }));
  t.equal(finished, 'ok', 'a 500 rolls back');
  t.same(await texts(table), [], 'no write kept');
  t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
  t.ok(
    await eventually(async () => (await activity(appName)).idleInTransaction === 0, 3000),
    'nothing idle in transaction',
  );
});

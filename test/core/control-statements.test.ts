// BEGIN, COMMIT, ROLLBACK, savepoints and the session reset go to node-postgres as its custom
// query (the `submit` protocol), which builds no result objects. These tests prove the rules
// that travel with them on the pools users build: a client in pg's pipeline mode (which refuses
// custom queries) still commits, rolls back, resets and reports a COMMIT that PostgreSQL turned
// into ROLLBACK; and pg's query_timeout, which wraps a query's callback, still reports a COMMIT
// that outlived it as of unknown outcome, with the connection closed rather than reused.
import { atomicDbSession, DbSessionCtx, dbSession } from '@context-db/core';
import type pg from 'pg';
import t from 'tap';
import { activity, admin, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';

async function request(
  db: Parameters<typeof dbSession>[0],
  statusCode: number,
  work: (query: (sql: string) => Promise<pg.QueryResult>) => Promise<void>,
): Promise<void> {
  const ctx = new DbSessionCtx();
  await ctx.run(() => work(async (sql) => (await dbSession(db)).query(sql)));
  await ctx.finish({ statusCode });
}

for (const pipeline of [false, true]) {
  t.test(
    `a pool with pipeline: ${pipeline}: commit, rollback, savepoints, reset, a COMMIT turned ROLLBACK`,
    async (t) => {
      const { db, appName } = testDb(t, { max: 1, pipeline });
      const table = await createTable(t);
      await request(db, 200, async (query) => {
        await query(`INSERT INTO ${table} (text) VALUES ('committed')`);
        await query('SET statement_timeout = 4321');
      });
      await request(db, 500, async (query) => {
        await query(`INSERT INTO ${table} (text) VALUES ('rolled back')`);
      });
      await request(db, 200, async (query) => {
        const { rows } = await query('SHOW statement_timeout');
        t.equal(rows[0]?.statement_timeout, '0', "the earlier request's SET was reset on the same connection");
        await atomicDbSession(db, async (session) => {
          await session.query(`INSERT INTO ${table} (text) VALUES ('inner block')`);
        });
        await atomicDbSession(db, async (session) => {
          await session.query(`INSERT INTO ${table} (text) VALUES ('inner block rolled back')`);
          throw new Error('roll this block back');
        }).catch(() => undefined);
      });
      await t.rejects(
        request(db, 200, async (query) => {
          await query(`INSERT INTO ${table} (text) VALUES ('in an aborted transaction')`);
          await query('SELECT 1/0').catch(() => undefined);
        }),
        { code: 'COMMIT_FAILED' },
        'PostgreSQL answered the COMMIT with ROLLBACK: a failed commit, not a success',
      );
      t.same(await texts(table), ['committed', 'inner block']);
      t.equal(checkedOut(db), 0);
      t.equal((await activity(appName)).idleInTransaction, 0);
    },
  );
}

t.test("a COMMIT that outlives pg's query_timeout: outcome unknown, the connection closed", async (t) => {
  const { db, appName } = testDb(t, { max: 1, query_timeout: 150 });
  const table = await createTable(t);
  // A deferred constraint trigger that sleeps makes the COMMIT itself slow.
  const fn = `${table}_slow`;
  await admin.query(
    `CREATE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.6); RETURN NULL; END $$`,
  );
  t.teardown(() => admin.query(`DROP FUNCTION IF EXISTS ${fn}() CASCADE`));
  await admin.query(
    `CREATE CONSTRAINT TRIGGER ${fn} AFTER INSERT ON ${table} DEFERRABLE INITIALLY DEFERRED ` +
      `FOR EACH ROW EXECUTE FUNCTION ${fn}()`,
  );
  await t.rejects(
    request(db, 200, async (query) => {
      await query(`INSERT INTO ${table} (text) VALUES ('slow commit')`);
    }),
    { code: 'COMMIT_OUTCOME_UNKNOWN' },
  );
  t.equal(checkedOut(db), 0, 'the connection went back to the pool as broken');
  t.ok(await eventually(async () => (await activity(appName)).total === 0, 3000), 'and was closed, not reused');
});

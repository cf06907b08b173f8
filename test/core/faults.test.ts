// Faults at awkward moments: a slow beforeCreateSession, an abort while waiting for the pool or
// during an atomic block, a backend killed during COMMIT. Each ends released and agreeing.
import {
  atomicDbSession,
  CommitOutcomeUnknownError,
  DbSessionCtx,
  dbSession,
  SessionClosedError,
} from '@context-db/core';
import t from 'tap';
import { activity, admin, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('a session whose slow beforeCreateSession ends after finish began refuses its first query', async (t) => {
  const { db } = testDb(
    t,
    {},
    {
      beforeCreateSession: async () => {
        await sleep(50);
      },
    },
  );
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  const late = ctx
    .run(async () => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('x')`))
    .catch((e: unknown) => e);
  await sleep(5);
  await ctx.finish();
  t.type(await late, SessionClosedError);
  t.same(await texts(table), []);
  t.equal(checkedOut(db), 0);
});

t.test('abort while waiting for a pool connection: rolled back, released, nothing left', async (t) => {
  const { db, appName } = testDb(t, { max: 1 });
  const table = await createTable(t);
  const holder = new DbSessionCtx();
  await holder.run(async () => (await dbSession(db)).query('SELECT 1'));
  const waiting = new DbSessionCtx();
  const q = waiting
    .run(async () => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('aborted')`))
    .catch((e: unknown) => e);
  await sleep(20);
  const aborted = waiting.finish({ error: new Error('client gone') });
  await sleep(20);
  await holder.finish();
  await aborted;
  await q;
  t.same(await texts(table), []);
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
});

t.test('finish with an error while an atomic block runs: the block fails, nothing is kept', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const ctx = new DbSessionCtx();
  const block = ctx
    .run(() =>
      atomicDbSession(db, async (s) => {
        await s.query(`INSERT INTO ${table} (text) VALUES ('a')`);
        await sleep(50);
        await s.query(`INSERT INTO ${table} (text) VALUES ('b')`);
      }),
    )
    .then(
      () => 'resolved',
      (e: unknown) => e,
    );
  await sleep(10);
  await ctx.finish({ error: new Error('abort') });
  t.not(await block, 'resolved', 'a block cut off by the rollback does not report success');
  t.same(await texts(table), []);
  t.equal(checkedOut(db), 0);
});

t.test('backend killed during a slow COMMIT (deferred trigger): COMMIT_OUTCOME_UNKNOWN, released', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  await admin.query(
    `CREATE OR REPLACE FUNCTION ${table}_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$`,
  );
  await admin.query(
    `CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON ${table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ${table}_slow()`,
  );
  t.teardown(() => admin.query(`DROP FUNCTION IF EXISTS ${table}_slow() CASCADE`));
  const ctx = new DbSessionCtx();
  await ctx.run(async () => (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('x')`));
  const finishing = ctx.finish().catch((e: unknown) => e);
  await sleep(100);
  await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [appName]);
  t.type(await finishing, CommitOutcomeUnknownError);
  t.same(await texts(table), []);
  t.ok(await eventually(() => checkedOut(db) === 0));
});

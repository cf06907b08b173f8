// Review of issue #13: Kysely transactions on ContextDbDialect in the ways a request (or a
// script) really ends: a failed statement before the callback throws or returns, a 4xx after the
// savepoint was released, work of the request running while a transaction is open, and a
// controlled transaction on outsideContext: 'pool' whose COMMIT PostgreSQL answers ROLLBACK.
import { dbSession, onCommit, onRollback, runInNewCtx } from '@context-db/core';
import { contextDbPlugin } from '@context-db/fastify';
import { ContextDbDialect } from '@context-db/kysely';
import Fastify from 'fastify';
import { type Generated, Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import t from 'tap';
import { checkedTests } from '../fixtures/builders.js';
import {
  activity,
  checkedOut,
  createTable,
  DATABASE_URL,
  eventually,
  testDb,
  texts,
  uniqueName,
} from '../fixtures/db.js';
import { deferred } from '../fixtures/express.js';

interface Database {
  [table: string]: { id: Generated<number>; text: string };
}

const { db, appName } = testDb(t);
const kdb = new Kysely<Database>({ dialect: new ContextDbDialect({ db }) });
const scripts = new Kysely<Database>({ dialect: new ContextDbDialect({ db, outsideContext: 'pool' }) });
const test = checkedTests(t, db, appName);

const insert = (table: string, text: string, on: Kysely<Database> = kdb) =>
  on.insertInto(table).values({ text }).execute();

t.test(
  'a write of the request made while a transaction() is open is not rolled back with that transaction',
  {
    todo: 'open defect: a Kysely transaction() does not hold the session, so work of the request beside it joins its savepoint (see the closing note of issue #13)',
  },
  async (t) => {
    const table = await createTable(t);
    await runInNewCtx(async () => {
      const inside = deferred();
      const outsideDone = deferred();
      const failing = kdb.transaction().execute(async (trx) => {
        await insert(table, 'in-transaction', trx);
        inside.resolve();
        await outsideDone.promise;
        throw new Error('the transaction fails');
      });
      // Another part of the request (not the callback) writes while the transaction is open.
      const other = (async () => {
        await inside.promise;
        await insert(table, 'request-write');
        outsideDone.resolve();
      })();
      await other;
      await t.rejects(failing, { message: 'the transaction fails' });
    });
    t.same(await texts(table), ['request-write'], "the request's own write commits; only the transaction's is undone");
  },
);

t.test(
  'an onCommit hook registered by the request while a transaction() is open survives its rollback',
  {
    todo: 'open defect: a Kysely transaction() does not hold the session, so work of the request beside it joins its savepoint (see the closing note of issue #13)',
  },
  async (t) => {
    const table = await createTable(t);
    const ran: string[] = [];
    await runInNewCtx(async () => {
      const inside = deferred();
      const registered = deferred();
      const failing = kdb.transaction().execute(async (trx) => {
        await insert(table, 'in-transaction', trx);
        inside.resolve();
        await registered.promise;
        throw new Error('the transaction fails');
      });
      await inside.promise;
      await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('raw-request-write')`);
      await onCommit(db, () => void ran.push('request hook'));
      registered.resolve();
      await t.rejects(failing);
    });
    t.same(ran, ['request hook'], "the request's hook runs after the request commits");
    t.same(await texts(table), ['raw-request-write']);
  },
);

test('a transaction() whose callback throws after a failed statement rolls back alone; the request commits', async (t) => {
  const table = await createTable(t);
  const rolledBack: string[] = [];
  await runInNewCtx(async () => {
    await insert(table, 'before');
    await t.rejects(
      kdb.transaction().execute(async (trx) => {
        await insert(table, 'in-failed', trx);
        await onRollback(db, () => void rolledBack.push('inner'));
        await sql`SELECT 1 / 0`.execute(trx).catch(() => undefined);
        throw new Error('gave up after the failed statement');
      }),
      { message: 'gave up after the failed statement' },
    );
    // The callback swallowed the failure and returned: its savepoint cannot be kept.
    await t.rejects(
      kdb.transaction().execute(async (trx) => {
        await insert(table, 'in-swallowed', trx);
        await sql`SELECT 1 / 0`.execute(trx).catch(() => undefined);
      }),
    );
    await insert(table, 'after');
  });
  t.same(await texts(table), ['before', 'after']);
  t.same(rolledBack, ['inner']);
});

test('a 4xx after a transaction() released its savepoint rolls it back; its onCommit never runs', async (t) => {
  const table = await createTable(t);
  const ran: string[] = [];
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.post('/x', async (_request, reply) => {
    await kdb.transaction().execute(async (trx) => {
      await insert(table, 'savepoint-released', trx);
      await onCommit(db, () => void ran.push('commit'));
      await onRollback(db, () => void ran.push('rollback'));
    });
    return reply.code(409).send({ conflict: true });
  });
  const res = await app.inject({ method: 'POST', url: '/x' });
  t.equal(res.statusCode, 409);
  t.same(await texts(table), []);
  t.same(ran, ['rollback']);
});

test("outsideContext: 'pool': a controlled transaction whose COMMIT is answered ROLLBACK gives its connection back, as with PostgresDialect", async (t) => {
  const table = await createTable(t);
  // The reference: Kysely's own PostgresDialect on a pool of its own.
  const refApp = uniqueName('ref');
  const refPool = new pg.Pool({ connectionString: DATABASE_URL, max: 2, application_name: refApp });
  const reference = new Kysely<Database>({ dialect: new PostgresDialect({ pool: refPool }) });
  t.teardown(() => reference.destroy());

  const commitAfterFailure = async (on: Kysely<Database>) => {
    const trx = await on.startTransaction().execute();
    await insert(table, 'in-aborted', trx);
    await sql`SELECT 1 / 0`.execute(trx).catch(() => undefined);
    // The failure was handled; the script commits what it believes it has, then moves on.
    const outcome = await trx
      .commit()
      .execute()
      .then(
        () => 'committed',
        (err: Error) => err.constructor.name,
      );
    return { trx, outcome };
  };

  const { outcome: referenceOutcome } = await commitAfterFailure(reference);
  t.equal(refPool.totalCount - refPool.idleCount, 0, 'PostgresDialect: no connection checked out');

  const { trx, outcome } = await commitAfterFailure(scripts);
  t.not(outcome, 'committed', `the commit is refused (PostgresDialect: ${referenceOutcome})`);
  t.equal(checkedOut(db), 0, 'ContextDbDialect: no connection checked out');
  t.equal((await activity(appName)).idleInTransaction, 0, 'none idle in transaction');
  t.same(await texts(table), []);
  // Not what a script does after a failed commit; here only so the leak does not hang db.close().
  await trx.rollback().execute();
  // Kysely releases without awaiting the driver: give the session's close its moment.
  t.ok(await eventually(() => checkedOut(db) === 0), 'released after an explicit rollback');
});

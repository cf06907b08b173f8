// Review of issue #13: Kysely transactions on ContextDbDialect in the ways a request (or a
// script) really ends: a failed statement before the callback throws or returns, a 4xx after the
// savepoint was released, work of the request running while a transaction is open, and a
// controlled transaction on outsideContext: 'pool' whose COMMIT PostgreSQL answers ROLLBACK.
import { atomicDbSession, dbSession, onCommit, onRollback, runInNewCtx } from '@context-db/core';
import { contextDbPlugin } from '@context-db/fastify';
import Fastify from 'fastify';
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import t from 'tap';
import { kyselyOnTestDb, type TextTables } from '../fixtures/builders.js';
import { activity, checkedOut, createTable, DATABASE_URL, eventually, texts, uniqueName } from '../fixtures/db.js';
import { deferred } from '../fixtures/express.js';
import { hookBeside, writeBeside } from './beside.js';

type Database = TextTables;

const { db, appName, kdb, scripts, test } = kyselyOnTestDb(t);

const insert = (table: string, text: string, on: Kysely<Database> = kdb) =>
  on.insertInto(table).values({ text }).execute();

const builder = (table: string) => ({
  insert: (text: string) => insert(table, text),
  transaction: (fn: (insert: (text: string) => Promise<unknown>) => Promise<void>) =>
    kdb.transaction().execute((trx) => fn((text) => insert(table, text, trx))),
});

// Inside the callback waits for nothing: a callback awaiting work started beside it would wait for itself.
const issued = () => new Promise((resolve) => setImmediate(resolve));

test('a write of the request made while a transaction() is open waits for it, and is not rolled back with it', async (t) => {
  const table = await createTable(t);
  await writeBeside(t, db, table, builder(table));
});

test('an onCommit hook and a raw query of the request made while a transaction() is open survive its rollback', async (t) => {
  const table = await createTable(t);
  await hookBeside(t, db, table, builder(table));
});

test('transaction() nested in another, and in atomicDbSession nested: the work beside each waits for it', async (t) => {
  const table = await createTable(t);
  const order: string[] = [];
  await runInNewCtx(async () => {
    await kdb.transaction().execute(async (outer) => {
      await insert(table, 'outer', outer);
      const beside = deferred();
      // Inside the outer transaction but beside the inner one: waits for the inner to end.
      const inner = kdb.transaction().execute(async (trx) => {
        await insert(table, 'inner-rolled-back', trx);
        beside.resolve();
        await issued();
        order.push('inner fails');
        throw new Error('inner');
      });
      const failed = t.rejects(inner, { message: 'inner' });
      await beside.promise;
      await insert(table, 'outer-beside-inner', outer);
      order.push('outer write done');
      await failed;
    });
    await atomicDbSession(
      db,
      async (session) => {
        await session.query(`INSERT INTO ${table} (text) VALUES ('block')`);
        await t.rejects(
          kdb.transaction().execute(async (trx) => {
            await insert(table, 'in-block-rolled-back', trx);
            await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('raw-in-block-rolled-back')`);
            throw new Error('rolled back alone');
          }),
        );
      },
      { currentTransaction: 'nested' },
    );
  });
  t.same(order, ['inner fails', 'outer write done']);
  t.same(await texts(table), ['outer', 'outer-beside-inner', 'block']);
});

test('a controlled transaction in a request: work beside it is refused with a clear error, never left waiting', async (t) => {
  const table = await createTable(t);
  await runInNewCtx(async () => {
    await insert(table, 'before');
    const trx = await kdb.startTransaction().execute();
    await insert(table, 'in-controlled', trx);
    // The code that must end the transaction would be the code waiting: refused, at once.
    await t.rejects(insert(table, 'beside'), {
      name: 'TransactionAlreadyOpenError',
      message: /on the transaction \(trx\)/,
    });
    await t.rejects((await dbSession(db)).query('SELECT 1'), { name: 'TransactionAlreadyOpenError' });
    await t.rejects(
      kdb.transaction().execute(async () => {}),
      { name: 'TransactionAlreadyOpenError' },
    );
    await t.rejects(
      atomicDbSession(db, async () => {}, { currentTransaction: 'nested' }),
      { name: 'TransactionAlreadyOpenError' },
    );
    // A hook registered beside it belongs to the request, not to the controlled transaction.
    await onRollback(db, () => undefined);
    await trx.rollback().execute();
    await insert(table, 'after');
  });
  t.same(await texts(table), ['before', 'after']);
});

test('a controlled transaction left open when the request ends: nothing commits, the answer is an error, the connection goes back', async (t) => {
  const table = await createTable(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.post('/x', async () => {
    await insert(table, 'request');
    const trx = await kdb.startTransaction().execute();
    await insert(table, 'never-ended', trx);
    return { ok: true };
  });
  const res = await app.inject({ method: 'POST', url: '/x' });
  t.equal(res.statusCode, 500);
  t.same(await texts(table), []);
  t.ok(await eventually(() => checkedOut(db) === 0), 'no connection checked out');
  t.equal((await activity(appName)).idleInTransaction, 0);
});

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

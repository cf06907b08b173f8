// Kysely's transaction() and controlled transactions on ContextDbDialect inside a context: a
// savepoint of the context's transaction, rolled back alone, options only where a transaction
// begins, Kysely's savepoint API, nesting with atomicDbSession, hooks, and concurrent
// transactions run one after the other rather than mixed.
import {
  atomicDbSession,
  dbSession,
  InvalidOptionsError,
  onCommit,
  runInNewCtx,
  TransactionAlreadyOpenError,
} from '@context-db/core';
import { ContextDbDialect } from '@context-db/kysely';
import { type Generated, Kysely, sql } from 'kysely';
import t from 'tap';
import { checkedTests } from '../fixtures/builders.js';
import { admin, createTable, testDb, texts } from '../fixtures/db.js';

interface Database {
  [table: string]: { id: Generated<number>; text: string };
}

const { db, appName } = testDb(t);
const kdb = new Kysely<Database>({ dialect: new ContextDbDialect({ db }) });

const insert = async (table: string, text: string, on: Kysely<Database> = kdb) => {
  await on.insertInto(table).values({ text }).execute();
};
const txid = async (on: Kysely<Database> = kdb) =>
  (await sql<{ txid: string }>`SELECT txid_current() AS txid`.execute(on)).rows[0]?.txid;
const setting = async (name: string, on: Kysely<Database> = kdb) =>
  (await sql<{ value: string }>`SELECT current_setting(${name}) AS value`.execute(on)).rows[0]?.value;

const test = checkedTests(t, db, appName);

test("transaction() is a savepoint of the context's transaction, committed with the context", async (t) => {
  const table = await createTable(t);
  await runInNewCtx(async () => {
    await insert(table, 'outer');
    const outer = await txid();
    const inner = await kdb.transaction().execute((trx) => insert(table, 'inner', trx).then(() => txid(trx)));
    t.equal(inner, outer, 'the same transaction inside and outside');
    t.same(await texts(table), [], 'nothing committed when transaction() returns');
  });
  t.same(await texts(table), ['outer', 'inner'], 'committed with the context');
});

test("transaction() with no transaction open begins the context's: it rolls back with the context", async (t) => {
  const table = await createTable(t);
  const failed = runInNewCtx(async () => {
    await kdb.transaction().execute((trx) => insert(table, 'inner', trx));
    throw new Error('the context fails after the transaction returned');
  });
  await t.rejects(failed, { message: 'the context fails after the transaction returned' });
  t.same(await texts(table), [], 'not committed on its own');
});

test('a throwing transaction() rolls back only its work, raw queries in it included', async (t) => {
  const table = await createTable(t);
  await runInNewCtx(async () => {
    await insert(table, 'before');
    const failing = kdb.transaction().execute(async (trx) => {
      await insert(table, 'builder-in-failed', trx);
      // A raw query and the module-level instance inside the callback join the savepoint.
      await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('raw-in-failed')`);
      await insert(table, 'module-level-in-failed');
      throw new Error('inner');
    });
    await t.rejects(failing, { message: 'inner' });
    await insert(table, 'after');
  });
  t.same(await texts(table), ['before', 'after']);
});

test('a transaction() begun inside another one through the module-level instance nests', async (t) => {
  const table = await createTable(t);
  await runInNewCtx(() =>
    kdb.transaction().execute(async (trx) => {
      await insert(table, 'outer', trx);
      await t.rejects(
        kdb.transaction().execute(async (inner) => {
          await insert(table, 'inner-rolled-back', inner);
          throw new Error('inner');
        }),
      );
      await kdb.transaction().execute((inner) => insert(table, 'inner-kept', inner));
      await insert(table, 'outer-after', trx);
    }),
  );
  t.same(await texts(table), ['outer', 'inner-kept', 'outer-after']);
});

test('transaction() and atomicDbSession nest inside each other', async (t) => {
  const table = await createTable(t);
  await runInNewCtx(async () => {
    await kdb.transaction().execute(async (trx) => {
      await insert(table, 'builder', trx);
      await t.rejects(
        atomicDbSession(
          db,
          async () => {
            await insert(table, 'nested-block-rolled-back', trx);
            throw new Error('block');
          },
          { currentTransaction: 'nested' },
        ),
      );
    });
    await atomicDbSession(
      db,
      async () => {
        await insert(table, 'block');
        await t.rejects(
          kdb.transaction().execute(async (trx) => {
            await insert(table, 'builder-in-block-rolled-back', trx);
            throw new Error('builder');
          }),
        );
      },
      { currentTransaction: 'nested' },
    );
  });
  t.same(await texts(table), ['builder', 'block']);
});

test('setIsolationLevel / setAccessMode', async (t) => {
  await t.test('begin the context transaction with them when none is open', async (t) => {
    const table = await createTable(t);
    await runInNewCtx(async () => {
      const seen = await kdb
        .transaction()
        .setIsolationLevel('serializable')
        .execute(async (trx) => [await setting('transaction_isolation', trx), await txid(trx)]);
      t.same(seen, ['serializable', await txid()], 'serializable, and the context transaction');
      t.equal(await setting('transaction_isolation'), 'serializable', 'the context transaction keeps them');
    });
    await runInNewCtx(async () => {
      const write = kdb
        .transaction()
        .setAccessMode('read only')
        .execute((trx) => insert(table, 'refused', trx));
      await t.rejects(write, { code: '25006' }, 'a write in a read-only transaction fails');
    });
    await runInNewCtx(async () => {
      const level = await kdb
        .transaction()
        .setIsolationLevel('read uncommitted')
        .execute((trx) => setting('transaction_isolation', trx));
      t.equal(level, 'read committed', "'read uncommitted' is PostgreSQL's read committed");
    });
    t.same(await texts(table), []);
  });

  await t.test('are refused with a clear error inside an open transaction', async (t) => {
    const table = await createTable(t);
    await runInNewCtx(async () => {
      await insert(table, 'opened');
      const late = kdb
        .transaction()
        .setIsolationLevel('serializable')
        .execute((trx) => insert(table, 'never', trx));
      await t.rejects(late, TransactionAlreadyOpenError);
      await t.rejects(late, { message: /setIsolationLevel\(\) \/ setAccessMode\(\).*BEGIN/ });
      await t.rejects(kdb.startTransaction().setAccessMode('read only').execute(), TransactionAlreadyOpenError);
      await insert(table, 'still-usable');
    });
    t.same(await texts(table), ['opened', 'still-usable']);
  });

  await t.test("'snapshot' is refused: PostgreSQL has no such level", async (t) => {
    await runInNewCtx(async () => {
      await t.rejects(
        kdb
          .transaction()
          .setIsolationLevel('snapshot')
          .execute(async () => {}),
        InvalidOptionsError,
      );
    });
  });
});

test("Kysely's savepoint API on a controlled transaction", async (t) => {
  const table = await createTable(t);
  await runInNewCtx(async () => {
    await insert(table, 'request');
    const trx = await kdb.startTransaction().execute();
    await insert(table, 'kept-1', trx);
    const afterFirst = await trx.savepoint('sp').execute();
    await insert(table, 'rolled-back-1', afterFirst);
    await afterFirst.rollbackToSavepoint('sp').execute();
    // The savepoint stays after a rollback to it: roll back to it again, then release it.
    await insert(table, 'rolled-back-2', afterFirst);
    await afterFirst.rollbackToSavepoint('sp').execute();
    await insert(table, 'kept-2', afterFirst);
    await afterFirst.releaseSavepoint('sp').execute();
    await trx.commit().execute();

    const rolledBack = await kdb.startTransaction().execute();
    await insert(table, 'controlled-rolled-back', rolledBack);
    await rolledBack.savepoint('left-open').execute();
    await rolledBack.rollback().execute();
    await insert(table, 'after');
  });
  t.same(await texts(table), ['request', 'kept-1', 'kept-2', 'after']);
});

test('onCommit inside transaction(): dropped when it rolls back, run after the context commits', async (t) => {
  const table = await createTable(t);
  const ran: string[] = [];
  await runInNewCtx(async () => {
    await t.rejects(
      kdb.transaction().execute(async (trx) => {
        await insert(table, 'x', trx);
        await onCommit(db, () => void ran.push('rolled-back'));
        throw new Error('inner');
      }),
    );
    await kdb.transaction().execute(async (trx) => {
      await insert(table, 'y', trx);
      await onCommit(db, async () => {
        ran.push(`kept, sees ${(await texts(table)).join()}`);
      });
    });
    t.same(ran, [], 'nothing before the commit');
  });
  t.same(ran, ['kept, sees y']);
});

test('concurrent transactions of one request run one after the other and roll back apart', async (t) => {
  const table = await createTable(t);
  const order: string[] = [];
  await runInNewCtx(async () => {
    await insert(table, 'request');
    const failing = kdb.transaction().execute(async (trx) => {
      order.push('first begins');
      await insert(table, 'first', trx);
      await new Promise((resolve) => setTimeout(resolve, 20));
      order.push('first ends');
      throw new Error('the first fails after the second was called');
    });
    const kept = kdb.transaction().execute(async (trx) => {
      order.push('second begins');
      await insert(table, 'second', trx);
    });
    const [a, b] = await Promise.allSettled([failing, kept]);
    t.equal(a.status, 'rejected');
    t.equal(b.status, 'fulfilled');
    await insert(table, 'request-after');
  });
  t.same(order, ['first begins', 'first ends', 'second begins'], 'the second waited for the first to end');
  t.same(await texts(table), ['request', 'second', 'request-after']);
});

test('transactions one after the other in one context, and in concurrent contexts, all work', async (t) => {
  const table = await createTable(t);
  const run = (name: string) =>
    runInNewCtx(async () => {
      for (const n of [1, 2, 3]) await kdb.transaction().execute((trx) => insert(table, `${name}-${n}`, trx));
    });
  await Promise.all([run('a'), run('b'), run('c')]);
  t.equal((await texts(table)).length, 9);
});

test('the dialect checks its options', async (t) => {
  t.throws(() => new ContextDbDialect({} as never), InvalidOptionsError);
  t.throws(() => new ContextDbDialect({ db, outsideContext: 'never' as never }), InvalidOptionsError);
  t.throws(() => new ContextDbDialect({ db, pool: admin } as never), { message: /unknown option "pool"/ });
});

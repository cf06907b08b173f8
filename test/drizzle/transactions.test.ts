// contextDrizzle()'s transactions inside a context: orm.transaction(fn, config?) is a savepoint of
// the context's transaction (a nested atomic block in core), rolled back alone; config only where
// a transaction begins; nesting, hooks, relational queries, and concurrent transactions of one
// request run one after the other.
import {
  atomicDbSession,
  dbSession,
  InvalidOptionsError,
  onCommit,
  runInNewCtx,
  TransactionAlreadyOpenError,
} from '@context-db/core';
import { contextDrizzle } from '@context-db/drizzle';
import { sql, TransactionRollbackError } from 'drizzle-orm';
import { pgTable, serial, text } from 'drizzle-orm/pg-core';
import t from 'tap';
import { checkedTests } from '../fixtures/builders.js';
import { admin, createTable, testDb, texts } from '../fixtures/db.js';

const { db, appName } = testDb(t);
const test = checkedTests(t, db, appName);

/** A module-level-style database on a fresh table of the test's own. */
async function notesOrm(t: Parameters<typeof createTable>[0]) {
  const table = await createTable(t);
  const notes = pgTable(table, { id: serial('id').primaryKey(), text: text('text').notNull() });
  const orm = contextDrizzle(db, { schema: { notes } });
  return { table, notes, orm };
}

type Orm = Awaited<ReturnType<typeof notesOrm>>['orm'];
const txid = async (on: Pick<Orm, 'execute'>) =>
  (await on.execute<{ txid: string }>(sql`SELECT txid_current() AS txid`)).rows[0]?.txid;
const setting = async (on: Pick<Orm, 'execute'>, name: string) =>
  (await on.execute<{ value: string }>(sql`SELECT current_setting(${name}) AS value`)).rows[0]?.value;

test("orm.transaction() is a savepoint of the context's transaction, committed with the context", async (t) => {
  const { table, notes, orm } = await notesOrm(t);
  await runInNewCtx(async () => {
    await orm.insert(notes).values({ text: 'outer' });
    const outer = await txid(orm);
    const inner = await orm.transaction(async (tx) => {
      await tx.insert(notes).values({ text: 'inner' });
      return txid(tx);
    });
    t.equal(inner, outer, 'the same transaction inside and outside');
    t.same(await texts(table), [], 'nothing committed when transaction() returns');
  });
  t.same(await texts(table), ['outer', 'inner']);
});

test("with no transaction open it begins the context's, and rolls back with the context", async (t) => {
  const { table, notes, orm } = await notesOrm(t);
  await t.rejects(
    runInNewCtx(async () => {
      await orm.transaction((tx) => tx.insert(notes).values({ text: 'inner' }));
      throw new Error('the context fails');
    }),
  );
  t.same(await texts(table), []);
});

test('a throwing transaction or tx.rollback() undoes only its own work, raw queries in it included', async (t) => {
  const { table, notes, orm } = await notesOrm(t);
  await runInNewCtx(async () => {
    await orm.insert(notes).values({ text: 'before' });
    await t.rejects(
      orm.transaction(async (tx) => {
        await tx.insert(notes).values({ text: 'tx' });
        await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('raw')`);
        await orm.insert(notes).values({ text: 'module-level' });
        throw new Error('inner');
      }),
      { message: 'inner' },
    );
    const rolledBack = await orm
      .transaction(async (tx) => {
        await tx.insert(notes).values({ text: 'rolled-back-by-tx.rollback' });
        tx.rollback();
      })
      .catch((err: unknown) => err);
    t.ok(rolledBack instanceof TransactionRollbackError, "tx.rollback()'s error reaches the caller, as with drizzle()");
    await orm.insert(notes).values({ text: 'after' });
  });
  t.same(await texts(table), ['before', 'after']);
});

test('tx.transaction() and orm.transaction() inside a transaction nest as savepoints', async (t) => {
  const { table, notes, orm } = await notesOrm(t);
  await runInNewCtx(() =>
    orm.transaction(async (tx) => {
      await tx.insert(notes).values({ text: 'outer' });
      await t.rejects(
        tx.transaction(async (inner) => {
          await inner.insert(notes).values({ text: 'nested-rolled-back' });
          await inner.transaction(async (deeper) => {
            await deeper.insert(notes).values({ text: 'deeper-rolled-back-with-it' });
          });
          throw new Error('nested');
        }),
      );
      await tx.transaction((inner) => inner.insert(notes).values({ text: 'nested-kept' }));
      await orm.transaction((inner) => inner.insert(notes).values({ text: 'module-level-nested-kept' }));
    }),
  );
  t.same(await texts(table), ['outer', 'nested-kept', 'module-level-nested-kept']);
});

test('orm.transaction() and atomicDbSession nest inside each other', async (t) => {
  const { table, notes, orm } = await notesOrm(t);
  await runInNewCtx(async () => {
    await orm.transaction(async (tx) => {
      await tx.insert(notes).values({ text: 'tx' });
      await t.rejects(
        atomicDbSession(
          db,
          async () => {
            await tx.insert(notes).values({ text: 'block-rolled-back' });
            throw new Error('block');
          },
          { currentTransaction: 'nested' },
        ),
      );
    });
    await atomicDbSession(
      db,
      async () => {
        await orm.insert(notes).values({ text: 'block' });
        await t.rejects(
          orm.transaction(async (tx) => {
            await tx.insert(notes).values({ text: 'tx-in-block-rolled-back' });
            throw new Error('tx');
          }),
        );
      },
      { currentTransaction: 'nested' },
    );
  });
  t.same(await texts(table), ['tx', 'block']);
});

test('concurrent transactions of one request run one after the other and roll back apart', async (t) => {
  const { table, notes, orm } = await notesOrm(t);
  await runInNewCtx(async () => {
    const failing = orm.transaction(async (tx) => {
      await tx.insert(notes).values({ text: 'failing' });
      await new Promise((resolve) => setTimeout(resolve, 20));
      throw new Error('the first fails after the second started');
    });
    const kept = orm.transaction((tx) => tx.insert(notes).values({ text: 'kept' }));
    const [a, b] = await Promise.allSettled([failing, kept]);
    t.equal(a.status, 'rejected');
    t.equal(b.status, 'fulfilled');
  });
  t.same(await texts(table), ['kept']);
});

test('transaction config: applied when the transaction begins, refused inside an open one', async (t) => {
  const { table, notes, orm } = await notesOrm(t);
  await runInNewCtx(async () => {
    const seen = await orm.transaction((tx) => setting(tx, 'transaction_isolation'), {
      isolationLevel: 'repeatable read',
    });
    t.equal(seen, 'repeatable read');
  });
  await runInNewCtx(async () => {
    await t.rejects(
      orm.transaction((tx) => tx.insert(notes).values({ text: 'read-only' }), { accessMode: 'read only' }),
      { cause: { code: '25006' } },
    );
  });
  await runInNewCtx(async () => {
    const ro = await orm.transaction((tx) => setting(tx, 'transaction_deferrable'), {
      isolationLevel: 'serializable',
      accessMode: 'read only',
      deferrable: true,
    });
    t.equal(ro, 'on');
  });
  await runInNewCtx(async () => {
    await orm.insert(notes).values({ text: 'opened' });
    const late = orm.transaction((tx) => tx.insert(notes).values({ text: 'never' }), {
      isolationLevel: 'serializable',
    });
    await t.rejects(late, TransactionAlreadyOpenError);
    await t.rejects(late, { message: /transaction config.*BEGIN/ });
    await t.rejects(
      orm.transaction(async () => {}, { isolationLevel: 'read committed', deferrable: true }),
      InvalidOptionsError,
      'contradicting options are refused by core before anything is sent',
    );
  });
  t.same(await texts(table), ['opened']);
});

test('relational queries run on the context session and see its uncommitted writes', async (t) => {
  const { notes, orm } = await notesOrm(t);
  await runInNewCtx(async () => {
    await orm.insert(notes).values([{ text: 'a' }, { text: 'b' }]);
    const all = await orm.query.notes.findMany({ columns: { text: true }, orderBy: (n, { asc }) => [asc(n.id)] });
    t.same(all, [{ text: 'a' }, { text: 'b' }]);
    const inTx = await orm.transaction((tx) => tx.query.notes.findFirst({ where: (n, { eq }) => eq(n.text, 'b') }));
    t.equal(inTx?.text, 'b');
  });
});

test('onCommit inside orm.transaction(): dropped when it rolls back, run after the context commits', async (t) => {
  const { table, notes, orm } = await notesOrm(t);
  const ran: string[] = [];
  await runInNewCtx(async () => {
    await t.rejects(
      orm.transaction(async (tx) => {
        await tx.insert(notes).values({ text: 'x' });
        await onCommit(db, () => void ran.push('rolled-back'));
        tx.rollback();
      }),
    );
    await orm.transaction(async (tx) => {
      await tx.insert(notes).values({ text: 'y' });
      await onCommit(db, async () => void ran.push(`kept, sees ${(await texts(table)).join()}`));
    });
  });
  t.same(ran, ['kept, sees y']);
});

test('logger and casing are those of drizzle()', async (t) => {
  const table = await createTable(t, 'created_by text');
  const logged: string[] = [];
  const notes = pgTable(table, { id: serial().primaryKey(), text: text().notNull(), createdBy: text() });
  const orm = contextDrizzle(db, { casing: 'snake_case', logger: { logQuery: (query) => void logged.push(query) } });
  await runInNewCtx(() => orm.insert(notes).values({ text: 'cased', createdBy: 'ann' }));
  const { rows } = await admin.query(`SELECT text, created_by FROM ${table}`);
  t.same(rows, [{ text: 'cased', created_by: 'ann' }]);
  t.match(logged, [/insert into .*"created_by"/]);
});

test('contextDrizzle checks its arguments', async (t) => {
  t.throws(() => contextDrizzle({} as never), InvalidOptionsError);
  t.throws(() => contextDrizzle(db, { client: admin } as never), { message: /unknown option "client"/ });
  t.throws(() => contextDrizzle(db, { outsideContext: 'never' as never }), InvalidOptionsError);
});

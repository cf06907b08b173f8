// Review of issue #13: contextDrizzle()'s transactions ended by Drizzle's own tx.rollback(),
// inside a request and on outsideContext: 'pool'.
import { runInNewCtx } from '@context-db/core';
import { contextDrizzle } from '@context-db/drizzle';
import { contextDbPlugin } from '@context-db/fastify';
import { TransactionRollbackError } from 'drizzle-orm';
import { pgTable, serial, text } from 'drizzle-orm/pg-core';
import Fastify from 'fastify';
import t from 'tap';
import { checkedTests } from '../fixtures/builders.js';
import { activity, checkedOut, createTable, testDb, texts } from '../fixtures/db.js';
import { hookBeside, writeBeside } from './beside.js';

const { db, appName } = testDb(t);
const test = checkedTests(t, db, appName);

async function notesOrm(t: Parameters<typeof createTable>[0], outsideContext: 'throw' | 'pool' = 'throw') {
  const table = await createTable(t);
  const notes = pgTable(table, { id: serial('id').primaryKey(), text: text('text').notNull() });
  return { table, notes, orm: contextDrizzle(db, { schema: { notes }, outsideContext }) };
}

test("tx.rollback() in a request's orm.transaction, caught, undoes only its work; the request answers 200 and commits", async (t) => {
  const { table, notes, orm } = await notesOrm(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.post('/x', async () => {
    await orm.insert(notes).values({ text: 'request' });
    const outcome = await orm
      .transaction(async (tx) => {
        await tx.insert(notes).values({ text: 'rolled-back' });
        await tx.transaction(async (inner) => {
          await inner.insert(notes).values({ text: 'inner-rolled-back' });
        });
        tx.rollback();
      })
      .then(
        () => 'returned',
        (err: unknown) => (err instanceof TransactionRollbackError ? 'rolled back' : String(err)),
      );
    await orm.transaction(async (tx) => {
      await tx.insert(notes).values({ text: 'kept' });
      await tx
        .transaction(async (inner) => {
          await inner.insert(notes).values({ text: 'inner-rolled-back-2' });
          inner.rollback();
        })
        .catch(() => undefined);
    });
    return { outcome };
  });
  const res = await app.inject({ method: 'POST', url: '/x' });
  t.equal(res.statusCode, 200);
  t.same(res.json(), { outcome: 'rolled back' });
  t.same(await texts(table), ['request', 'kept']);
});

test("outsideContext: 'pool': orm.transaction commits, tx.rollback() rolls back, connections go back", async (t) => {
  const { table, notes, orm } = await notesOrm(t, 'pool');
  await orm.transaction(async (tx) => {
    await tx.insert(notes).values({ text: 'committed' });
    await tx.transaction(async (inner) => {
      await inner.insert(notes).values({ text: 'inner-kept' });
    });
  });
  const rolledBack = await orm
    .transaction(async (tx) => {
      await tx.insert(notes).values({ text: 'rolled-back' });
      tx.rollback();
    })
    .catch((err: unknown) => err);
  t.ok(rolledBack instanceof TransactionRollbackError, "Drizzle's TransactionRollbackError");
  // A runInNewCtx inside a pool transaction has its own connection and commits alone.
  await orm.transaction(async (tx) => {
    await tx.insert(notes).values({ text: 'outer' });
    await runInNewCtx(() => orm.insert(notes).values({ text: 'new-ctx' }));
  });
  t.same((await texts(table)).sort(), ['committed', 'inner-kept', 'new-ctx', 'outer']);
  t.equal(checkedOut(db), 0);
  t.equal((await activity(appName)).idleInTransaction, 0);
});

// The same interleavings as Kysely's transaction(): orm.transaction holds the session, so the
// rest of the request waits for it.
const builder = ({ notes, orm }: Awaited<ReturnType<typeof notesOrm>>) => ({
  insert: (text: string) => orm.insert(notes).values({ text }),
  transaction: (fn: (insert: (text: string) => Promise<unknown>) => Promise<void>) =>
    orm.transaction((tx) => fn((text) => tx.insert(notes).values({ text }))),
});

test('a write of the request made while an orm.transaction is open waits for it, and is not rolled back with it', async (t) => {
  const notes = await notesOrm(t);
  await writeBeside(t, db, notes.table, builder(notes));
});

test('an onCommit hook and a raw query of the request made while an orm.transaction is open survive its rollback', async (t) => {
  const notes = await notesOrm(t);
  await hookBeside(t, db, notes.table, builder(notes));
});

// .stream() on ContextDbDialect: rows in chunks from a SQL cursor on the context session, which
// sees the request's uncommitted writes and lets other queries of the request run between chunks.
import { runInNewCtx } from '@context-db/core';
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

const openCursors = async () =>
  Number((await sql<{ n: string }>`SELECT count(*) AS n FROM pg_cursors`.execute(kdb)).rows[0]?.n);

async function tableOf(t: Parameters<typeof createTable>[0], count: number): Promise<string> {
  const table = await createTable(t);
  await admin.query(`INSERT INTO ${table} (text) SELECT 'row-' || g FROM generate_series(1, ${count}) g`);
  return table;
}

const test = checkedTests(t, db, appName);

test('a stream reads in chunks on the context session and sees its uncommitted writes', async (t) => {
  const table = await tableOf(t, 5);
  const seen = await runInNewCtx(async () => {
    await kdb.insertInto(table).values({ text: 'uncommitted' }).execute();
    const chunks: string[] = [];
    for await (const row of kdb.selectFrom(table).select('text').orderBy('id').stream(2)) chunks.push(row.text);
    return chunks;
  });
  t.same(seen, ['row-1', 'row-2', 'row-3', 'row-4', 'row-5', 'uncommitted']);
});

test('queries of the request run between chunks, on the same connection and transaction', async (t) => {
  const table = await tableOf(t, 4);
  await runInNewCtx(async () => {
    const txid = async () => (await sql<{ x: string }>`SELECT txid_current() AS x`.execute(kdb)).rows[0]?.x;
    const outer = await txid();
    for await (const row of kdb.selectFrom(table).select('text').orderBy('id').stream(1)) {
      await kdb
        .insertInto(table)
        .values({ text: `copy-${row.text}` })
        .execute();
      t.equal(await txid(), outer);
    }
    t.equal(await openCursors(), 0, 'the cursor is closed once read to the end');
  });
  t.same((await texts(table)).filter((text) => text.startsWith('copy-')).length, 4);
});

test('breaking out of a stream closes its cursor, and the transaction goes on', async (t) => {
  const table = await tableOf(t, 10);
  await runInNewCtx(async () => {
    for await (const row of kdb.selectFrom(table).select('text').orderBy('id').stream(3)) {
      if (row.text === 'row-2') break;
    }
    t.equal(await openCursors(), 0);
    await kdb.insertInto(table).values({ text: 'after-break' }).execute();
  });
  t.ok((await texts(table)).includes('after-break'));
});

test('a stream whose cursor a savepoint rollback removed ends without aborting the transaction', async (t) => {
  const table = await tableOf(t, 3);
  await runInNewCtx(async () => {
    const rows = kdb.selectFrom(table).select('text').orderBy('id').stream(1)[Symbol.asyncIterator]();
    // The cursor is declared inside the transaction() savepoint, which then rolls back.
    await t.rejects(
      kdb.transaction().execute(async () => {
        t.same((await rows.next()).value, { text: 'row-1' });
        throw new Error('rolled back with the cursor in it');
      }),
    );
    await rows.return?.();
    await kdb.insertInto(table).values({ text: 'still-committed' }).execute();
  });
  t.ok((await texts(table)).includes('still-committed'), 'a CLOSE of the missing cursor would have aborted it');
});

test('statements a cursor cannot hold stream from one result', async (t) => {
  const table = await createTable(t);
  const streamed = await runInNewCtx(async () => {
    const values = ['a', 'b', 'c'].map((text) => ({ text }));
    const inserted: string[] = [];
    for await (const row of kdb.insertInto(table).values(values).returning('text').stream(2)) inserted.push(row.text);
    const cte = kdb
      .with('moved', (db) => db.updateTable(table).set({ text: sql`upper(text)` }).returning('text'))
      .selectFrom('moved')
      .select('text');
    const updated: string[] = [];
    for await (const row of cte.stream(2)) updated.push(row.text);
    return { inserted, updated: updated.sort() };
  });
  t.same(streamed, { inserted: ['a', 'b', 'c'], updated: ['A', 'B', 'C'] });
  t.same((await texts(table)).sort(), ['A', 'B', 'C']);
});

test('a failing stream rolls the context back like any failing query', async (t) => {
  const table = await tableOf(t, 2);
  const failed = runInNewCtx(async () => {
    await kdb.insertInto(table).values({ text: 'rolled-back' }).execute();
    for await (const _ of kdb.selectFrom(table).select(sql<number>`1 / (id - 2)`.as('boom')).orderBy('id').stream(1)) {
      // the second row divides by zero
    }
  });
  await t.rejects(failed, { code: '22012' });
  t.notOk((await texts(table)).includes('rolled-back'));
});

test('breaking out after a failed statement in the loop body leaves the transaction to fail at its end', async (t) => {
  const table = await tableOf(t, 3);
  const ended = runInNewCtx(async () => {
    for await (const _ of kdb.selectFrom(table).select('text').stream(1)) {
      await t.rejects(sql`SELECT 1 / 0`.execute(kdb), { code: '22012' }, 'the failure is caught by the body');
      break; // closing the cursor of an aborted transaction must not throw a second error here
    }
    return 'broke out';
  });
  await t.rejects(ended, { name: 'CommitFailedError' }, "the context's COMMIT reports the aborted transaction");
});

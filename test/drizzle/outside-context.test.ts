// contextDrizzle() outside any context: ContextNotInitiatedError by default; with
// outsideContext: 'pool', each query and each transaction in a transaction and on a connection
// of its own, as a script expects.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ContextNotInitiatedError, runInNewCtx } from '@context-db/core';
import { contextDrizzle } from '@context-db/drizzle';
import { sql } from 'drizzle-orm';
import { migrate } from 'drizzle-orm/node-postgres/migrator';
import { pgTable, serial, text } from 'drizzle-orm/pg-core';
import t from 'tap';
import { checkedTests } from '../fixtures/builders.js';
import { admin, createTable, testDb, texts, uniqueName } from '../fixtures/db.js';

const { db, appName } = testDb(t);
const test = checkedTests(t, db, appName);

async function notesTable(t: Parameters<typeof createTable>[0]) {
  const table = await createTable(t);
  return { table, notes: pgTable(table, { id: serial('id').primaryKey(), text: text('text').notNull() }) };
}

const orm = contextDrizzle(db);
const scripts = contextDrizzle(db, { outsideContext: 'pool' });
const pid = async (on: typeof orm) =>
  (await on.execute<{ pid: number }>(sql`SELECT pg_backend_pid() AS pid`)).rows[0]?.pid;

test('by default queries and transactions outside a context throw ContextNotInitiatedError', async (t) => {
  const { notes } = await notesTable(t);
  const withSchema = contextDrizzle(db, { schema: { notes } });
  await t.rejects(orm.select().from(notes), { cause: ContextNotInitiatedError });
  await t.rejects(
    orm.transaction(async () => {}),
    ContextNotInitiatedError,
  );
  await t.rejects(withSchema.query.notes.findMany(), { cause: { message: /outsideContext: 'pool'/ } });
});

test("outsideContext: 'pool': each query commits on its own, on a connection of its own", async (t) => {
  const { table, notes } = await notesTable(t);
  await scripts.insert(notes).values({ text: 'one' });
  t.same(await texts(table), ['one'], 'committed as soon as the query returned');
  await t.rejects(scripts.insert(notes).values({ text: sql`(1 / 0)::text` }), { cause: { code: '22012' } });
  await scripts.insert(notes).values({ text: 'two' });
  t.same(await texts(table), ['one', 'two']);
  const [a, b] = await Promise.all([pid(scripts), pid(scripts)]);
  t.not(a, b, 'two queries at once use two connections');
});

test("outsideContext: 'pool': transactions commit on return, roll back on throw, nest, take config", async (t) => {
  const { table, notes } = await notesTable(t);
  await scripts.transaction(async (tx) => {
    await tx.insert(notes).values({ text: 'kept' });
    await t.rejects(
      tx.transaction(async (inner) => {
        await inner.insert(notes).values({ text: 'nested-rolled-back' });
        throw new Error('nested');
      }),
    );
    t.same(await texts(table), [], 'uncommitted inside');
  });
  await t.rejects(
    scripts.transaction(async (tx) => {
      await tx.insert(notes).values({ text: 'rolled-back' });
      throw new Error('fails');
    }),
  );
  const settings = await scripts.transaction(
    async (tx) =>
      (
        await tx.execute<{ level: string; ro: string }>(
          sql`SELECT current_setting('transaction_isolation') AS level, current_setting('transaction_read_only') AS ro`,
        )
      ).rows[0],
    { isolationLevel: 'serializable', accessMode: 'read only' },
  );
  t.same(settings, { level: 'serializable', ro: 'on' });
  t.same(await texts(table), ['kept']);
});

test("inside a context, outsideContext: 'pool' changes nothing: the context's session is used", async (t) => {
  const { table, notes } = await notesTable(t);
  await t.rejects(
    runInNewCtx(async () => {
      await scripts.insert(notes).values({ text: 'rolled-back-with-the-context' });
      throw new Error('the context fails');
    }),
  );
  t.same(await texts(table), []);
});

test("drizzle's migrator runs on outsideContext: 'pool', each migration in its transaction", async (t) => {
  const folder = await mkdtemp(join(tmpdir(), 'context-db-drizzle-'));
  t.teardown(() => rm(folder, { recursive: true, force: true }));
  const table = uniqueName('migrated');
  const migrationsSchema = uniqueName('drizzle_migrations');
  t.teardown(() => admin.query(`DROP TABLE IF EXISTS ${table}; DROP SCHEMA IF EXISTS ${migrationsSchema} CASCADE`));
  await mkdir(join(folder, 'meta'));
  const entries = [{ idx: 0, version: '7', when: 1_700_000_000_000, tag: '0000_init', breakpoints: true }];
  await writeFile(
    join(folder, 'meta', '_journal.json'),
    JSON.stringify({ version: '7', dialect: 'postgresql', entries }),
  );
  await writeFile(join(folder, '0000_init.sql'), `CREATE TABLE ${table} (id serial PRIMARY KEY);`);
  await migrate(scripts, { migrationsFolder: folder, migrationsSchema });
  await migrate(scripts, { migrationsFolder: folder, migrationsSchema });
  const { rows } = await admin.query(`SELECT count(*)::int AS n FROM ${migrationsSchema}.__drizzle_migrations`);
  t.same(rows, [{ n: 1 }], 'applied once');
  await admin.query(`SELECT * FROM ${table}`);
});

// ContextDbDialect outside any context: ContextNotInitiatedError by default; with
// outsideContext: 'pool', each query and each transaction on a session and a connection of its
// own, as a script expects. And kdb.destroy() leaves the DbConnect alone.
import { ContextNotInitiatedError, runInNewCtx } from '@context-db/core';
import { ContextDbDialect } from '@context-db/kysely';
import { Kysely, sql } from 'kysely';
import { type Migration, Migrator } from 'kysely/migration';
import t from 'tap';
import { kyselyOnTestDb, type TextTables } from '../fixtures/builders.js';
import { admin, checkedOut, createTable, eventually, texts, uniqueName } from '../fixtures/db.js';

type Database = TextTables;

const { db, kdb, scripts, test } = kyselyOnTestDb(t);

const pid = async (on: Kysely<Database>) =>
  (await sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`.execute(on)).rows[0]?.pid;

test('by default a query, a transaction and a stream outside a context throw ContextNotInitiatedError', async (t) => {
  const table = await createTable(t);
  await t.rejects(kdb.selectFrom(table).selectAll().execute(), ContextNotInitiatedError);
  await t.rejects(kdb.selectFrom(table).selectAll().execute(), { message: /outsideContext: 'pool'/ });
  await t.rejects(
    kdb.transaction().execute(async () => {}),
    ContextNotInitiatedError,
  );
  await t.rejects(kdb.startTransaction().execute(), ContextNotInitiatedError);
  const stream = kdb.selectFrom(table).selectAll().stream()[Symbol.asyncIterator]();
  await t.rejects(stream.next(), ContextNotInitiatedError);
});

test("outsideContext: 'pool': each query commits on its own, on a connection of its own", async (t) => {
  const table = await createTable(t);
  await scripts.insertInto(table).values({ text: 'one' }).execute();
  t.same(await texts(table), ['one'], 'committed as soon as the query returned');
  await t.rejects(scripts.insertInto(table).values({ text: sql`1 / 0` }).execute(), { code: '22012' });
  await scripts.insertInto(table).values({ text: 'two' }).execute();
  t.same(await texts(table), ['one', 'two'], 'a failed query rolled back alone');
  const [a, b] = await Promise.all([pid(scripts), pid(scripts)]);
  t.not(a, b, 'two queries at once use two connections');
});

test("outsideContext: 'pool': a transaction commits when its callback returns, rolls back when it throws", async (t) => {
  const table = await createTable(t);
  await scripts.transaction().execute(async (trx) => {
    await trx.insertInto(table).values({ text: 'in-transaction' }).execute();
    t.same(await texts(table), [], 'uncommitted inside');
  });
  await t.rejects(
    scripts.transaction().execute(async (trx) => {
      await trx.insertInto(table).values({ text: 'rolled-back' }).execute();
      throw new Error('fails');
    }),
  );
  const level = await scripts
    .transaction()
    .setIsolationLevel('repeatable read')
    .setAccessMode('read only')
    .execute(
      async (trx) =>
        (
          await sql<{ level: string; ro: string }>`SELECT current_setting('transaction_isolation') AS level,
          current_setting('transaction_read_only') AS ro`.execute(trx)
        ).rows[0],
    );
  t.same(level, { level: 'repeatable read', ro: 'on' });
  t.same(await texts(table), ['in-transaction']);
});

test("outsideContext: 'pool': Kysely's savepoint API and streams", async (t) => {
  const table = await createTable(t);
  const trx = await scripts.startTransaction().execute();
  await trx.insertInto(table).values({ text: 'kept' }).execute();
  const saved = await trx.savepoint('sp').execute();
  await saved.insertInto(table).values({ text: 'rolled-back' }).execute();
  await saved.rollbackToSavepoint('sp').execute();
  await saved.savepoint('left-open').execute();
  await saved.insertInto(table).values({ text: 'kept-in-open-savepoint' }).execute();
  await trx.commit().execute();
  t.same(await texts(table), ['kept', 'kept-in-open-savepoint'], 'COMMIT keeps what open savepoints hold');

  const streamed: string[] = [];
  for await (const row of scripts.selectFrom(table).select('text').orderBy('id').stream(1)) streamed.push(row.text);
  t.same(streamed, ['kept', 'kept-in-open-savepoint']);
  // Kysely releases a stream's connection without awaiting it (in any dialect): wait for it.
  t.ok(await eventually(() => checkedOut(db) === 0), "the stream's connection went back to the pool");
});

test("inside a context, outsideContext: 'pool' changes nothing: the context's session is used", async (t) => {
  const table = await createTable(t);
  await t.rejects(
    runInNewCtx(async () => {
      await scripts.insertInto(table).values({ text: 'rolled-back-with-the-context' }).execute();
      throw new Error('the context fails');
    }),
  );
  t.same(await texts(table), []);
});

test('kdb.destroy() does not end the DbConnect', async (t) => {
  const table = await createTable(t);
  const local = new Kysely<Database>({ dialect: new ContextDbDialect({ db }) });
  await runInNewCtx(() => local.insertInto(table).values({ text: 'before' }).execute());
  await local.destroy();
  await runInNewCtx(() => kdb.insertInto(table).values({ text: 'after-destroy' }).execute());
  t.same(await texts(table), ['before', 'after-destroy']);
  t.equal(db.pool().ending, false, "the DbConnect's pool is not ending");
  const { rows } = await admin.query('SELECT 1 AS one');
  t.same(rows, [{ one: 1 }]);
});

test("Kysely's Migrator runs on outsideContext: 'pool', each migration in its transaction", async (t) => {
  const migrationTableSchema = uniqueName('kysely_migrations');
  const created = uniqueName('migrated');
  t.teardown(() =>
    admin.query(`DROP SCHEMA IF EXISTS ${migrationTableSchema} CASCADE; DROP TABLE IF EXISTS ${created}`),
  );
  const migrations: Record<string, Migration> = {
    '0001_init': {
      up: (on) =>
        on.schema
          .createTable(created)
          .addColumn('id', 'serial', (c) => c.primaryKey())
          .execute(),
    },
  };
  const migrator = new Migrator({
    db: scripts,
    provider: { getMigrations: async () => migrations },
    migrationTableSchema,
  });
  const first = await migrator.migrateToLatest();
  t.equal(first.error, undefined);
  t.same(
    first.results?.map((r) => [r.migrationName, r.status]),
    [['0001_init', 'Success']],
  );
  t.same((await migrator.migrateToLatest()).results, [], 'applied once');
  await admin.query(`SELECT * FROM ${created}`);
});

// The consumer smoke test's query-builder probe (scripts/consumer-smoke.ts copies it into the ESM
// app, which installs the packed @context-db/kysely and @context-db/drizzle with kysely and
// drizzle-orm): type-checked under nodenext and bundler, where each `@ts-expect-error` fails the
// build if rows lost their types or a wrong column compiled, then run: one insert and one select
// through each builder on the same context session.
import { DbConnect, dbSession, runInNewCtx } from '@context-db/core';
import { contextDrizzle } from '@context-db/drizzle';
import { ContextDbDialect } from '@context-db/kysely';
import { eq } from 'drizzle-orm';
import { pgTable, serial, text } from 'drizzle-orm/pg-core';
import { type Generated, Kysely } from 'kysely';

interface Database {
  notes: { id: Generated<number>; text: string };
}
const notes = pgTable('notes', { id: serial('id').primaryKey(), text: text('text').notNull() });

const db = new DbConnect({ connectionString: process.env.DATABASE_URL });
const kdb = new Kysely<Database>({ dialect: new ContextDbDialect({ db }) });
const orm = contextDrizzle(db, { schema: { notes } });

async function kyselyProbe(): Promise<string> {
  const { id } = await kdb.insertInto('notes').values({ text: 'kysely' }).returning('id').executeTakeFirstOrThrow();
  const row = await kdb.selectFrom('notes').select(['id', 'text']).where('id', '=', id).executeTakeFirstOrThrow();
  // @ts-expect-error rows are typed: `text` is a string
  const wrong: number = row.text;
  // @ts-expect-error a column the table does not have
  kdb.selectFrom('notes').select('title');
  void wrong;
  return row.text;
}

async function drizzleProbe(): Promise<string> {
  const [inserted] = await orm.insert(notes).values({ text: 'drizzle' }).returning({ id: notes.id });
  const [row] = await orm
    .select()
    .from(notes)
    .where(eq(notes.id, inserted?.id ?? 0));
  // @ts-expect-error rows are typed: `text` is a string
  const wrong: number | undefined = row?.text;
  // @ts-expect-error a column the table does not have
  orm.select({ title: notes.title }).from(notes);
  void wrong;
  return row?.text ?? 'missing';
}

async function main(): Promise<void> {
  try {
    // A temporary table: the session's connection drops it when it goes back to the pool.
    const texts = await runInNewCtx(async () => {
      await (await dbSession(db)).query('CREATE TEMP TABLE notes (id serial PRIMARY KEY, text text NOT NULL)');
      return [await kyselyProbe(), await drizzleProbe()];
    });
    if (texts.join() !== 'kysely,drizzle') throw new Error(`read back ${texts.join()}, not kysely,drizzle`);
    console.log('kysely and drizzle: an insert and a select each, on the context session');
  } finally {
    await db.close();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});

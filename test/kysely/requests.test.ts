// The acceptance for @context-db/kysely through Fastify, Express and Koa: a module-level
// Kysely instance, used from helpers that never see the request (see fixtures/builders.ts).
import { ContextDbDialect } from '@context-db/kysely';
import { type Generated, Kysely, sql } from 'kysely';
import t from 'tap';
import { type BuilderUnderTest, builderAcceptance, type Ids } from '../fixtures/builders.js';
import { createTable, testDb } from '../fixtures/db.js';

interface Database {
  [table: string]: { id: Generated<number>; text: string };
}

const { db, appName } = testDb(t);
const table = await createTable(t);
export const kdb = new Kysely<Database>({ dialect: new ContextDbDialect({ db }) });

const builder: BuilderUnderTest = {
  async insert(text) {
    await kdb.insertInto(table).values({ text }).execute();
  },
  async ids() {
    const { rows } = await sql<Ids>`SELECT pg_backend_pid() AS pid, txid_current() AS txid`.execute(kdb);
    return rows[0] as Ids;
  },
  transaction(fn) {
    return kdb.transaction().execute((trx) =>
      fn(async (text) => {
        await trx.insertInto(table).values({ text }).execute();
      }),
    );
  },
};

builderAcceptance(t, { db, appName, table, builder });

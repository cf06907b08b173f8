// The acceptance for @context-db/drizzle through Fastify, Express and Koa: a module-level
// Drizzle database, used from helpers that never see the request (see fixtures/builders.ts).
import { contextDrizzle } from '@context-db/drizzle';
import { sql } from 'drizzle-orm';
import { pgTable, serial, text } from 'drizzle-orm/pg-core';
import t from 'tap';
import { type BuilderUnderTest, builderAcceptance, type Ids } from '../fixtures/builders.js';
import { createTable, testDb } from '../fixtures/db.js';

const { db, appName } = testDb(t);
const table = await createTable(t);
const notes = pgTable(table, { id: serial('id').primaryKey(), text: text('text').notNull() });
export const orm = contextDrizzle(db, { schema: { notes } });

const builder: BuilderUnderTest = {
  async insert(value) {
    await orm.insert(notes).values({ text: value });
  },
  async ids() {
    const { rows } = await orm.execute<{ pid: number; txid: string }>(
      sql`SELECT pg_backend_pid() AS pid, txid_current() AS txid`,
    );
    return rows[0] as Ids;
  },
  transaction(fn) {
    return orm.transaction((tx) =>
      fn(async (value) => {
        await tx.insert(notes).values({ text: value });
      }),
    );
  },
};

builderAcceptance(t, { db, appName, table, builder });

// Type tests, checked by `pnpm typecheck` (the compiler) and run against PostgreSQL:
// contextDrizzle() is typed like drizzle()'s node-postgres database, so selects, inserts,
// relational queries and transactions infer the same result types, with no cast in the calling
// code, and none of them is `any`.
import { type DbConnect, runInNewCtx } from '@context-db/core';
import { type ContextDrizzleDatabase, contextDrizzle } from '@context-db/drizzle';
import { eq, relations } from 'drizzle-orm';
import { drizzle, type NodePgDatabase } from 'drizzle-orm/node-postgres';
import { integer, pgSchema, serial, text, timestamp } from 'drizzle-orm/pg-core';
import t from 'tap';
import { typesSchema } from '../fixtures/builders.js';
import { admin, testDb } from '../fixtures/db.js';

/** True when A and B are the same type (not merely assignable either way). */
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
/** Compiles only when `actual`'s type is exactly `Expected`. */
function expectType<Expected>() {
  return <Actual>(actual: Actual, ..._exact: Equal<Actual, Expected> extends true ? [] : [never]): Actual => actual;
}

const { db } = testDb(t);
const schemaName = typesSchema(t, 'drizzle_types');
const pg = pgSchema(schemaName);
const person = pg.table('person', {
  id: serial('id').primaryKey(),
  name: text('name').notNull(),
  nickname: text('nickname'),
  created: timestamp('created', { withTimezone: true }).notNull().defaultNow(),
});
const pet = pg.table('pet', {
  id: serial('id').primaryKey(),
  ownerId: integer('owner_id').notNull(),
  species: text('species', { enum: ['cat', 'dog'] }).notNull(),
});
const personRelations = relations(person, ({ many }) => ({ pets: many(pet) }));
const petRelations = relations(pet, ({ one }) => ({
  owner: one(person, { fields: [pet.ownerId], references: [person.id] }),
}));
const schema = { person, pet, personRelations, petRelations };

const orm = contextDrizzle(db, { schema });
// The plain library, for the reference types only: never queried.
const plain = drizzle(admin, { schema });

// The same queries written once for either database; their result types are compared below.
const selectJoined = (on: NodePgDatabase<typeof schema>) =>
  on.select({ name: person.name, species: pet.species }).from(person).leftJoin(pet, eq(pet.ownerId, person.id));
const insertReturning = (on: NodePgDatabase<typeof schema>) =>
  on.insert(person).values({ name: 'ann' }).returning({ id: person.id, created: person.created });
const relational = (on: NodePgDatabase<typeof schema>) =>
  on.query.person.findMany({ with: { pets: { columns: { species: true } } }, columns: { name: true } });
type Of<F extends (on: NodePgDatabase<typeof schema>) => PromiseLike<unknown>> = Awaited<ReturnType<F>>;

t.test("contextDrizzle() is drizzle()'s database type, on a DbConnect", async (t) => {
  expectType<NodePgDatabase<typeof schema> & { readonly $client: DbConnect }>()(orm);
  expectType<ContextDrizzleDatabase<typeof schema>>()(orm);
  // Both are accepted wherever a node-postgres database of this schema is.
  const accepts = (database: NodePgDatabase<typeof schema>) => database;
  t.equal(accepts(orm), orm);
  t.equal(accepts(plain), plain);
  t.equal(orm.$client, db);
});

t.test('result types are those of drizzle(), and hold the values PostgreSQL returns', async (t) => {
  // The reference queries compile to SQL; they are never executed.
  t.equal(selectJoined(plain).toSQL().sql, selectJoined(orm).toSQL().sql);
  t.equal(insertReturning(plain).toSQL().sql, insertReturning(orm).toSQL().sql);
  await runInNewCtx(async () => {
    const [row] = expectType<Of<typeof insertReturning>>()(await insertReturning(orm));
    expectType<{ id: number; created: Date } | undefined>()(row);
    t.type(row?.id, 'number');
    t.ok(row?.created instanceof Date);
    await orm.insert(pet).values({ ownerId: row?.id ?? 0, species: 'cat' });

    const joined = expectType<Of<typeof selectJoined>>()(await selectJoined(orm));
    expectType<Array<{ name: string; species: 'cat' | 'dog' | null }>>()(joined);
    t.same(joined, [{ name: 'ann', species: 'cat' }]);

    const tree = expectType<Of<typeof relational>>()(await relational(orm));
    expectType<Array<{ name: string; pets: Array<{ species: 'cat' | 'dog' }> }>>()(tree);
    t.same(tree, [{ name: 'ann', pets: [{ species: 'cat' }] }]);

    const inTransaction = await orm.transaction(async (tx) => {
      const found = await tx.query.pet.findFirst({ with: { owner: { columns: { nickname: true } } } });
      return found?.owner;
    });
    expectType<{ nickname: string | null } | undefined>()(inTransaction);
    t.same(inTransaction, { nickname: null });
  });
});

// Compile-time only, never called: unknown tables and columns are errors, as with drizzle().
export function refused(on: typeof orm): void {
  // @ts-expect-error no such relational table
  on.query.people.findMany();
  // @ts-expect-error no such column
  on.insert(person).values({ name: 'x', age: 3 });
}

// Type tests, checked by `pnpm typecheck` (the compiler) and run against PostgreSQL: a Kysely
// instance on ContextDbDialect infers every result type exactly as one on Kysely's own
// PostgresDialect does, with no cast in the calling code, and no result type is `any`.
import { runInNewCtx } from '@context-db/core';
import { ContextDbDialect } from '@context-db/kysely';
import { type ColumnType, type Generated, Kysely, PostgresDialect, type Selectable, sql } from 'kysely';
import t from 'tap';
import { typesSchema } from '../fixtures/builders.js';
import { admin, testDb } from '../fixtures/db.js';

/** True when A and B are the same type (not merely assignable either way). */
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
type IsAny<T> = 0 extends 1 & T ? true : false;
/** Compiles only when `actual`'s type is exactly `Expected` and not `any`. */
function expectType<Expected>() {
  return <Actual>(actual: Actual, ..._exact: Equal<Actual, Expected> extends true ? [] : [never]): Actual => actual;
}
function notAny<T>(value: T, ..._notAny: IsAny<T> extends true ? [never] : []): T {
  return value;
}

interface PersonTable {
  id: Generated<number>;
  name: string;
  nickname: string | null;
  created: ColumnType<Date, string | undefined, never>;
}
interface PetTable {
  id: Generated<number>;
  owner_id: number;
  species: 'cat' | 'dog';
}
interface Database {
  person: PersonTable;
  pet: PetTable;
}

const { db } = testDb(t);
const schema = typesSchema(t, 'kysely_types');
const kdb = new Kysely<Database>({ dialect: new ContextDbDialect({ db }) }).withSchema(schema);
// The plain library, for the reference types only: never connected.
const plain = new Kysely<Database>({ dialect: new PostgresDialect({ pool: admin }) }).withSchema(schema);

const people = (on: typeof kdb) =>
  on.selectFrom('person').leftJoin('pet', 'pet.owner_id', 'person.id').select(['person.name', 'pet.species']);
const inserted = (on: typeof kdb) =>
  on.insertInto('person').values({ name: 'ann', nickname: null }).returning(['id', 'created']);
type Joined = Awaited<ReturnType<ReturnType<typeof people>['execute']>>;
type Returned = Awaited<ReturnType<ReturnType<typeof inserted>['executeTakeFirstOrThrow']>>;

t.test('result types are those of the plain library, and hold the values PostgreSQL returns', async (t) => {
  // The reference queries compile to the same SQL; they are never executed.
  t.equal(people(plain).compile().sql, people(kdb).compile().sql);
  t.equal(inserted(plain).compile().sql, inserted(kdb).compile().sql);

  await runInNewCtx(async () => {
    const row = expectType<Returned>()(await inserted(kdb).executeTakeFirstOrThrow());
    expectType<{ id: number; created: Date }>()(row);
    t.type(row.id, 'number');
    t.ok(row.created instanceof Date);
    await kdb.insertInto('pet').values({ owner_id: row.id, species: 'cat' }).execute();

    const joined = expectType<Joined>()(await people(kdb).execute());
    expectType<Array<{ name: string; species: 'cat' | 'dog' | null }>>()(joined);
    t.same(joined, [{ name: 'ann', species: 'cat' }]);

    const person = expectType<Selectable<PersonTable> | undefined>()(
      await kdb.selectFrom('person').selectAll().executeTakeFirst(),
    );
    t.equal(person?.nickname, null);

    const fromTransaction = await kdb.transaction().execute(async (trx) => {
      const count = await trx
        .selectFrom('pet')
        .select((eb) => eb.fn.countAll<number>().as('n'))
        .executeTakeFirstOrThrow();
      return notAny(count);
    });
    expectType<{ n: number }>()(fromTransaction);

    for await (const streamed of kdb.selectFrom('pet').select(['species', 'owner_id']).stream()) {
      expectType<{ species: 'cat' | 'dog'; owner_id: number }>()(streamed);
      t.equal(streamed.species, 'cat');
    }

    const raw = await sql<{ now: Date }>`SELECT now() AS now`.execute(kdb);
    expectType<Array<{ now: Date }>>()(raw.rows);
  });
});

// Compile-time only, never called: unknown tables and columns are errors, as with the plain library.
export function refused(on: typeof kdb): void {
  // @ts-expect-error no such column
  on.selectFrom('person').select('age');
  // @ts-expect-error no such table
  on.selectFrom('people').selectAll();
}

import { atomicDbSession, commitDbSession, runInNewCtx } from '@context-db/core';
import type { ExampleStore } from '@context-db/examples-shared';
import { ContextDbDialect } from '@context-db/kysely';
import type { FastifyInstance } from 'fastify';
import { type Generated, Kysely } from 'kysely';

/** The example table, under whatever name the store gives it. */
interface ExampleDatabase {
  [table: string]: { id: Generated<number>; text: string };
}

/**
 * The seed's routes written with Kysely under /kysely: one Kysely instance whose queries run on
 * the request's session, used by helpers that never see the request. (An app builds it once at
 * module level; here it is built per store, because the tests give each app a table of its own.)
 */
export function kyselyRoutes(app: FastifyInstance, { db, table }: ExampleStore): void {
  const kdb = new Kysely<ExampleDatabase>({ dialect: new ContextDbDialect({ db }) });
  const insert = async (text: string) => {
    await kdb.insertInto(table).values({ text }).execute();
  };

  // Committed before the 200 is sent.
  app.post('/kysely/simple', async () => {
    await insert('kysely-simple');
    return { ok: true };
  });
  // atomicDbSession: a transaction of its own, committed when the block returns.
  app.post('/kysely/atomic', async () => {
    await atomicDbSession(db, () => insert('kysely-atomic'));
    return { ok: true };
  });
  // kdb.transaction(): a savepoint of the request's transaction, rolled back alone when it throws.
  app.post('/kysely/transaction', async () => {
    await insert('kysely-outer');
    const failed = await kdb
      .transaction()
      .execute(async (trx) => {
        await trx.insertInto(table).values({ text: 'kysely-transaction-rolled-back' }).execute();
        throw new Error('the transaction fails');
      })
      .catch(() => true);
    await kdb.transaction().execute((trx) => trx.insertInto(table).values({ text: 'kysely-transaction' }).execute());
    return { ok: true, failed };
  });
  // The request's own insert and two new contexts at once, each on its own connection; a third
  // context fails and rolls back alone.
  app.post('/kysely/concurrent', async () => {
    await Promise.allSettled([
      insert('kysely-concurrent'),
      runInNewCtx(insert, 'kysely-concurrent-new-ctx-1'),
      runInNewCtx(insert, 'kysely-concurrent-new-ctx-2'),
      runInNewCtx(async () => {
        await insert('kysely-concurrent-failing');
        throw new Error('this context rolls back');
      }),
    ]);
    return { ok: true };
  });
  // The first insert is durable at once; the second joins a new transaction.
  app.post('/kysely/early-commit', async () => {
    await insert('kysely-early-commit-1');
    await commitDbSession(db);
    await insert('kysely-early-commit-2');
    return { ok: true };
  });
  app.post('/kysely/rollback-by-status', async (_request, reply) => {
    await insert('kysely-rollback-by-status');
    return reply.code(422).send({ error: 'rolled back because the status is 422' });
  });
  app.post('/kysely/rollback-by-exception', async () => {
    await insert('kysely-rollback-by-exception');
    throw new Error('something went wrong after the insert');
  });
  // .stream() reads through a cursor on the request's session.
  app.get('/kysely/rows', async () => {
    const texts: string[] = [];
    for await (const row of kdb.selectFrom(table).select('text').orderBy('id').stream(50)) texts.push(row.text);
    return texts;
  });
}

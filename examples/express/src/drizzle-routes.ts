import { atomicDbSession, commitDbSession, runInNewCtx } from '@context-db/core';
import { contextDrizzle } from '@context-db/drizzle';
import type { ExampleStore } from '@context-db/examples-shared';
import { asc } from 'drizzle-orm';
import { pgTable, serial, text } from 'drizzle-orm/pg-core';
import express from 'express';

/**
 * The seed's routes written with Drizzle, mounted under /drizzle: one database whose queries run
 * on the request's session, used by helpers that never see the request. (An app creates it once
 * at module level; here it is created per store, because the tests give each app a table of its
 * own.)
 */
export function drizzleRouter({ db, table }: ExampleStore): express.Router {
  const notes = pgTable(table, { id: serial('id').primaryKey(), text: text('text').notNull() });
  const orm = contextDrizzle(db, { schema: { notes } });
  const insert = async (value: string) => {
    await orm.insert(notes).values({ text: value });
  };
  const router = express.Router();
  const ok =
    (operation: () => Promise<unknown>): express.RequestHandler =>
    async (_req, res) => {
      res.json({ ok: true, result: await operation() });
    };

  // Committed before the 200 is sent.
  router.post(
    '/simple',
    ok(() => insert('drizzle-simple')),
  );
  // atomicDbSession: a transaction of its own, committed when the block returns.
  router.post(
    '/atomic',
    ok(() => atomicDbSession(db, () => insert('drizzle-atomic'))),
  );
  // orm.transaction(): a savepoint of the request's transaction, rolled back alone when it throws.
  router.post(
    '/transaction',
    ok(async () => {
      await insert('drizzle-outer');
      const failed = await orm
        .transaction(async (tx) => {
          await tx.insert(notes).values({ text: 'drizzle-transaction-rolled-back' });
          tx.rollback();
        })
        .catch(() => true);
      await orm.transaction((tx) => tx.insert(notes).values({ text: 'drizzle-transaction' }));
      return { failed };
    }),
  );
  // The request's own insert and two new contexts at once, each on its own connection; a third
  // context fails and rolls back alone.
  router.post(
    '/concurrent',
    ok(() =>
      Promise.allSettled([
        insert('drizzle-concurrent'),
        runInNewCtx(insert, 'drizzle-concurrent-new-ctx-1'),
        runInNewCtx(insert, 'drizzle-concurrent-new-ctx-2'),
        runInNewCtx(async () => {
          await insert('drizzle-concurrent-failing');
          throw new Error('this context rolls back');
        }),
      ]),
    ),
  );
  // The first insert is durable at once; the second joins a new transaction.
  router.post(
    '/early-commit',
    ok(async () => {
      await insert('drizzle-early-commit-1');
      await commitDbSession(db);
      await insert('drizzle-early-commit-2');
    }),
  );
  router.post('/rollback-by-status', async (_req, res) => {
    await insert('drizzle-rollback-by-status');
    res.status(422).json({ error: 'rolled back because the status is 422' });
  });
  router.post('/rollback-by-exception', async () => {
    await insert('drizzle-rollback-by-exception');
    throw new Error('something went wrong after the insert');
  });
  // A relational query on the request's session.
  router.get('/rows', async (_req, res) => {
    const rows = await orm.query.notes.findMany({ columns: { text: true }, orderBy: [asc(notes.id)] });
    res.json(rows.map((row) => row.text));
  });
  return router;
}

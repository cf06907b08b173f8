// Work of a request made beside a builder's open transaction (not inside its callback), run the
// same way for Kysely's transaction() and Drizzle's orm.transaction: it waits for the transaction
// to end, as beside a nested atomic block, so it is neither rolled back with it nor in its
// savepoint, and a hook registered beside it belongs to the request.
import { type DbConnect, dbSession, onCommit, runInNewCtx } from '@context-db/core';
import type { Test } from 'tap';
import { texts } from '../fixtures/db.js';
import { deferred } from '../fixtures/express.js';

/** A builder's module-level instance: `transaction(fn)` gives `fn` an insert on the transaction. */
export interface Builder {
  insert(text: string): Promise<unknown>;
  transaction(fn: (insert: (text: string) => Promise<unknown>) => Promise<void>): Promise<void>;
}

// The rest of the request waits while the transaction is open, so a callback awaiting that work
// would wait for itself: it goes on once the work is issued.
const issued = () => new Promise((resolve) => setImmediate(resolve));

export async function writeBeside(t: Test, db: DbConnect, table: string, builder: Builder): Promise<void> {
  const order: string[] = [];
  await runInNewCtx(async () => {
    const inside = deferred();
    const outsideIssued = deferred();
    const failing = builder.transaction(async (insert) => {
      await insert('in-transaction');
      // Raw queries of the callback, through the context's session, are the transaction's.
      await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('raw-in-transaction')`);
      inside.resolve();
      await outsideIssued.promise;
      order.push('transaction fails');
      throw new Error('the transaction fails');
    });
    const failed = t.rejects(failing, { message: 'the transaction fails' });
    // Another part of the request (not the callback) writes while the transaction is open.
    await inside.promise;
    const write = builder.insert('request-write').then(() => void order.push('request write done'));
    await issued();
    outsideIssued.resolve();
    await write;
    await failed;
  });
  t.same(order, ['transaction fails', 'request write done'], 'the write waited for the transaction to end');
  t.same(await texts(table), ['request-write'], "the request's own write commits; only the transaction's is undone");
}

export async function hookBeside(t: Test, db: DbConnect, table: string, builder: Builder): Promise<void> {
  const ran: string[] = [];
  await runInNewCtx(async () => {
    const inside = deferred();
    const registered = deferred();
    const failing = builder.transaction(async (insert) => {
      await insert('in-transaction');
      await onCommit(db, () => void ran.push('transaction hook'));
      inside.resolve();
      await registered.promise;
      throw new Error('the transaction fails');
    });
    const failed = t.rejects(failing);
    await inside.promise;
    const raw = (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('raw-request-write')`);
    await onCommit(db, () => void ran.push('request hook'));
    await issued();
    registered.resolve();
    await failed;
    await raw;
  });
  t.same(ran, ['request hook'], "the request's hook runs after the request commits; the transaction's is dropped");
  t.same(await texts(table), ['raw-request-write']);
}

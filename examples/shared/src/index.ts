// The database side of the example apps, written once: each framework's example maps HTTP routes
// onto these functions. They find their session with dbSession(db), wherever they are called.
import {
  atomicDbSession,
  closeDbSession,
  commitDbSession,
  DbConnect,
  dbSession,
  newNonCtxAtomicSession,
  newNonCtxSession,
  onCommit,
  rollbackDbSession,
  runInNewCtx,
  type TransactionOptions,
} from '@context-db/core';

/** Where the examples write: a database and a table `(id serial, text text)`. */
export interface ExampleStore {
  readonly db: DbConnect;
  readonly table: string;
}

/** The example's store from DATABASE_URL (set by `pnpm example`) and EXAMPLE_TABLE, with its table created. */
export async function storeFromEnv(table = process.env.EXAMPLE_TABLE ?? 'context_db_example'): Promise<ExampleStore> {
  const db = new DbConnect({
    connectionString: process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
  });
  await newNonCtxAtomicSession(db, (s) =>
    s.query(`CREATE TABLE IF NOT EXISTS ${table} (id serial PRIMARY KEY, text text NOT NULL)`),
  );
  return { db, table };
}

/** Insert one row on the context session: joins whatever transaction the request has open. */
export async function insert({ db, table }: ExampleStore, text: string): Promise<void> {
  const session = await dbSession(db);
  await session.query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
}

/** Simple usage: a query on the context session, committed when the request succeeds. */
export async function simpleUsage(store: ExampleStore): Promise<void> {
  await insert(store, 'simple');
}

/** Atomic: this insert is committed on its own, whatever the request does later. */
export async function atomic(store: ExampleStore): Promise<void> {
  await atomicDbSession(store.db, () => insert(store, 'atomic'));
}

/** Atomic with a transaction already open, in each mode but 'raise' (see the seed). */
export async function atomicWithPreviousTransaction(store: ExampleStore): Promise<void> {
  await insert(store, 'prev-committed');
  await atomicDbSession(store.db, () => insert(store, 'atomic-after-commit')); // commits the open one first
  await insert(store, 'prev-rolled-back');
  await atomicDbSession(store.db, () => insert(store, 'atomic-after-rollback'), { currentTransaction: 'rollback' });
  await insert(store, 'prev-appended');
  await atomicDbSession(store.db, () => insert(store, 'atomic-appended'), { currentTransaction: 'append' });
}

/** Auto rollback by exception: the insert is rolled back because the handler throws. */
export async function insertThenThrow(store: ExampleStore): Promise<never> {
  await insert(store, 'rollback-by-exception');
  throw new Error('something went wrong after the insert');
}

/**
 * Concurrent queries, the seed's five ways at once: the context session, two new contexts, a
 * non-context atomic session, a non-context session committed by hand, and a new context that
 * fails (rolled back, the others unaffected). Each gets its own connection.
 */
export async function concurrentQueries(store: ExampleStore): Promise<void> {
  await Promise.allSettled([
    insert(store, 'concurrent-context'),
    runInNewCtx(insert, store, 'concurrent-new-ctx'),
    runInNewCtx(async (text: string) => {
      await insert(store, text);
      await commitDbSession(store.db);
      await closeDbSession(store.db);
    }, 'concurrent-new-ctx-manual'),
    newNonCtxAtomicSession(store.db, (s) =>
      s.query(`INSERT INTO ${store.table} (text) VALUES ('concurrent-non-ctx-atomic')`),
    ),
    newNonCtxSession(store.db, async (s) => {
      await s.query(`INSERT INTO ${store.table} (text) VALUES ('concurrent-non-ctx')`);
      await s.commit();
    }),
    runInNewCtx(insertThenThrow, store),
  ]);
}

/** Early commit: the first insert is durable at once; the second joins a new transaction. */
export async function earlyCommit(store: ExampleStore): Promise<void> {
  await insert(store, 'early-commit-1');
  await commitDbSession(store.db);
  await insert(store, 'early-commit-2');
}

/** Early connection close: give the connection back during slow work that needs no database. */
export async function earlyClose(store: ExampleStore, slowWork: () => Promise<void> = async () => {}): Promise<void> {
  await atomicDbSession(store.db, () => insert(store, 'early-close-1'));
  await closeDbSession(store.db);
  await slowWork();
  await insert(store, 'early-close-2'); // a new session, a new connection
}

/** Early rollback: undo this request's work so far, then carry on. */
export async function earlyRollback(store: ExampleStore): Promise<void> {
  await insert(store, 'early-rollback-undone');
  await rollbackDbSession(store.db);
  await insert(store, 'early-rollback-kept');
}

/** What an opted-out route can do: no context, but a session of its own. */
export async function withoutContext(store: ExampleStore): Promise<void> {
  await newNonCtxAtomicSession(store.db, (s) => s.query(`INSERT INTO ${store.table} (text) VALUES ('opted-out')`));
}

/**
 * A read-modify-write that must not lose updates under concurrency: take the next ticket number.
 * SERIALIZABLE makes two requests that read the same count conflict (40001); `retry` runs the
 * loser again, now seeing the winner's ticket, so every request gets a number of its own.
 */
export async function takeTicket({ db, table }: ExampleStore): Promise<number> {
  return atomicDbSession(
    db,
    async (session) => {
      const { rows } = await session.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM ${table} WHERE text LIKE 'ticket-%'`,
      );
      const ticket = (rows[0]?.n ?? 0) + 1;
      await session.query(`INSERT INTO ${table} (text) VALUES ($1)`, [`ticket-${ticket}`]);
      return ticket;
    },
    { transaction: { isolationLevel: 'serializable' }, retry: { attempts: 10, minDelayMs: 5, maxDelayMs: 200 } },
  );
}

/** The report route's transaction: a stable snapshot, and no write can slip in. */
export const REPORT_OPTIONS: TransactionOptions = { isolationLevel: 'repeatable read', readOnly: true };

/** A report on the request session; its route declares REPORT_OPTIONS. */
export async function report({ db, table }: ExampleStore): Promise<{ rows: number; readOnly: string }> {
  const { rows } = await (await dbSession(db)).query<{ rows: number; readOnly: string }>(
    `SELECT count(*)::int AS rows, current_setting('transaction_read_only') AS "readOnly" FROM ${table}`,
  );
  return rows[0] ?? { rows: 0, readOnly: 'unknown' };
}

/** Events published only once the order that caused them is committed (a stand-in for a queue). */
export const outbox: string[] = [];

/**
 * Place an order and publish its event after COMMIT: the hook does not run if the request rolls
 * back (a thrown error, a status >= 400, a failed COMMIT), so no event announces a missing order.
 */
export async function placeOrder(store: ExampleStore, id: string): Promise<void> {
  await insert(store, `order-${id}`);
  await onCommit(store.db, () => {
    outbox.push(`order-${id} placed`);
  });
}

/** The rows, for the examples' GET /rows. */
export async function listRows({ db, table }: ExampleStore): Promise<string[]> {
  const { rows } = await (await dbSession(db)).query<{ text: string }>(`SELECT text FROM ${table} ORDER BY id`);
  return rows.map((row) => row.text);
}

export { closeOnSignals, type ShutdownOptions } from './shutdown.js';

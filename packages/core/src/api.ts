import type { DbConnect } from './connect.js';
import { type BeforeCommitCallback, DbSessionCtx as Ctx, type DbSessionCtx, storage } from './context.js';
import { ContextNotInitiatedError, InvalidOptionsError, TransactionAlreadyOpenError } from './errors.js';
import type { DbSession } from './session.js';

function requireCtx(what: string): DbSessionCtx {
  const ctx = storage.getStore();
  if (ctx === undefined) throw new ContextNotInitiatedError(what);
  return ctx;
}

function requireFunction(fn: unknown, what: string): void {
  if (typeof fn !== 'function') throw new InvalidOptionsError(`${what} needs a function to run, got ${typeof fn}.`);
}

/**
 * The current context's session for `db`: created on the first call, then the same object for
 * every caller in the context, child async work included. Costs no connection until its first
 * query. Throws `ContextNotInitiatedError` outside a context.
 *
 * @example
 * ```ts
 * async function addNote(text: string) {
 *   const session = await dbSession(db);
 *   await session.query('INSERT INTO notes (text) VALUES ($1)', [text]);
 * }
 * ```
 */
export function dbSession(db: DbConnect): Promise<DbSession> {
  try {
    return requireCtx('dbSession()').getSession(db);
  } catch (err) {
    return Promise.reject(err);
  }
}

/**
 * Commit the context session's open transaction, if there is one; the connection stays with the
 * session and the next query begins a new transaction.
 *
 * @example
 * ```ts
 * await createOrder();
 * await commitDbSession(db); // the order is durable before the slow e-mail call
 * await sendConfirmation();
 * ```
 */
export async function commitDbSession(db: DbConnect): Promise<void> {
  await (await requireCtx('commitDbSession()').peekSession(db))?.commit();
}

/**
 * Roll back the context session's open transaction, if there is one; the connection stays.
 *
 * @example
 * ```ts
 * if (!valid) await rollbackDbSession(db);
 * ```
 */
export async function rollbackDbSession(db: DbConnect): Promise<void> {
  await (await requireCtx('rollbackDbSession()').peekSession(db))?.rollback();
}

/**
 * Roll back what is uncommitted, release the connection and drop the session from the context;
 * the next `dbSession(db)` makes a new one. Use it before slow work that needs no database.
 *
 * @example
 * ```ts
 * const user = await loadUser(id);
 * await closeDbSession(db); // do not hold a connection during the upstream call
 * await callSlowService(user);
 * ```
 */
export async function closeDbSession(db: DbConnect): Promise<void> {
  await requireCtx('closeDbSession()').closeSession(db);
}

/** What `atomicDbSession` does with a transaction already open on the context session. */
export type CurrentTransactionMode = 'commit' | 'rollback' | 'append' | 'raise';

export interface AtomicOptions {
  /**
   * `'commit'` (default): commit it first; `'rollback'`: roll it back first; `'append'`: join it,
   * so it commits (or rolls back) with `fn`'s work; `'raise'`: throw `TransactionAlreadyOpenError`.
   * Blocks started concurrently on one session run one after the other; a block cannot run inside
   * another on the same session (`NestedAtomicBlockError`).
   */
  readonly currentTransaction?: CurrentTransactionMode;
}

const MODES: readonly CurrentTransactionMode[] = ['commit', 'rollback', 'append', 'raise'];

/**
 * Run `fn` in a transaction of its own on the context session: committed when `fn` returns,
 * rolled back when it throws (and the error rethrown). `currentTransaction` says what happens to
 * a transaction already open.
 *
 * @example
 * ```ts
 * await atomicDbSession(db, async (session) => {
 *   await session.query('UPDATE accounts SET balance = balance - 10 WHERE id = $1', [from]);
 *   await session.query('UPDATE accounts SET balance = balance + 10 WHERE id = $1', [to]);
 * });
 * ```
 */
export async function atomicDbSession<R>(
  db: DbConnect,
  fn: (session: DbSession) => Promise<R> | R,
  { currentTransaction = 'commit' }: AtomicOptions = {},
): Promise<R> {
  requireFunction(fn, 'atomicDbSession(db, fn)');
  if (!MODES.includes(currentTransaction)) {
    throw new InvalidOptionsError(
      `atomicDbSession: currentTransaction must be one of ${MODES.join(', ')}, got ${JSON.stringify(currentTransaction)}.`,
    );
  }
  const session = await dbSession(db);
  return session.exclusive(async () => {
    if (session.inTransaction) {
      if (currentTransaction === 'raise') throw new TransactionAlreadyOpenError();
      if (currentTransaction === 'commit') await session.commit();
      if (currentTransaction === 'rollback') await session.rollback();
    }
    return inTransaction(session, fn);
  });
}

async function inTransaction<R>(session: DbSession, fn: (session: DbSession) => Promise<R> | R): Promise<R> {
  let result: R;
  try {
    result = await fn(session);
  } catch (err) {
    await session.rollback();
    throw err;
  }
  await session.commit();
  return result;
}

/**
 * A session outside any context, with its own connection, for `fn` to use and commit itself;
 * whatever is uncommitted when `fn` ends is rolled back, and the connection is always released.
 *
 * @example
 * ```ts
 * await newNonCtxSession(db, async (session) => {
 *   await session.query('INSERT INTO audit (event) VALUES ($1)', ['export started']);
 *   await session.commit();
 * });
 * ```
 */
export async function newNonCtxSession<R>(db: DbConnect, fn: (session: DbSession) => Promise<R> | R): Promise<R> {
  requireFunction(fn, 'newNonCtxSession(db, fn)');
  // Inside a test's context, an independent session is a savepoint in the test's transaction too.
  const ctx = storage.getStore();
  const factory = ctx?.childFactory;
  const session = await (factory === undefined || ctx === undefined ? db.createSession() : factory(db, ctx));
  try {
    return await fn(session);
  } finally {
    await session.close();
  }
}

/**
 * Like `newNonCtxSession`, but committed when `fn` returns and rolled back when it throws.
 *
 * @example
 * ```ts
 * const id = await newNonCtxAtomicSession(db, async (session) =>
 *   (await session.query<{ id: number }>('INSERT INTO jobs DEFAULT VALUES RETURNING id')).rows[0]?.id);
 * ```
 */
export function newNonCtxAtomicSession<R>(db: DbConnect, fn: (session: DbSession) => Promise<R> | R): Promise<R> {
  requireFunction(fn, 'newNonCtxAtomicSession(db, fn)');
  return newNonCtxSession(db, (session) => inTransaction(session, fn));
}

/**
 * Run `fn(...args)` in a fresh context of its own, even inside another one: its sessions get
 * their own connections, are committed when `fn` returns, rolled back when it throws, and always
 * closed. The way to run work concurrently with the request's session, or to outlive it.
 *
 * @example
 * ```ts
 * await Promise.all([insertRow(), runInNewCtx(insertRow), runInNewCtx(insertNamed, 'b')]);
 * ```
 */
export async function runInNewCtx<A extends unknown[], R>(fn: (...args: A) => Promise<R> | R, ...args: A): Promise<R> {
  requireFunction(fn, 'runInNewCtx(fn)');
  const ctx = new Ctx(storage.getStore());
  // storage.run directly: a nested context is the point here, which ctx.run() refuses.
  return storage.run(ctx, async () => {
    let result: R;
    try {
      result = await fn(...args);
    } catch (err) {
      await ctx.finish({ error: err });
      throw err;
    }
    await ctx.finish();
    return result;
  });
}

/**
 * Commit every session of the current context (see `DbSessionCtx.commitAll`).
 *
 * @example
 * ```ts
 * await commitAllSessions(async (session) => { await session.query('SELECT 1'); });
 * ```
 */
export function commitAllSessions(beforeCommit?: BeforeCommitCallback): Promise<void> {
  return requireCtx('commitAllSessions()').commitAll(beforeCommit);
}

/**
 * Roll back every session of the current context (see `DbSessionCtx.rollbackAll`).
 *
 * @example
 * ```ts
 * await rollbackAllSessions();
 * ```
 */
export function rollbackAllSessions(): Promise<void> {
  return requireCtx('rollbackAllSessions()').rollbackAll();
}

/**
 * Close every session of the current context (see `DbSessionCtx.closeAll`).
 *
 * @example
 * ```ts
 * await closeAllSessions();
 * ```
 */
export function closeAllSessions(): Promise<void> {
  return requireCtx('closeAllSessions()').closeAll();
}

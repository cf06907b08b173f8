import { AsyncLocalStorage } from 'node:async_hooks';
import type { DbConnect } from './connect.js';
import { type BeforeCommitCallback, DbSessionCtx as Ctx, type DbSessionCtx, storage } from './context.js';
import { ContextNotInitiatedError, InvalidOptionsError, TransactionAlreadyOpenError } from './errors.js';
import type { DbSession, TransactionHook } from './session.js';
import {
  type RetryOptions,
  type TransactionOptions,
  validateRetry,
  validateTransactionOptions,
  withRetry,
} from './transaction.js';

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
export type CurrentTransactionMode = 'commit' | 'rollback' | 'append' | 'raise' | 'nested';

export interface AtomicOptions {
  /**
   * `'commit'` (default): commit it first; `'rollback'`: roll it back first; `'append'`: join it,
   * so it commits (or rolls back) with `fn`'s work; `'raise'`: throw `TransactionAlreadyOpenError`;
   * `'nested'`: run `fn` in a SAVEPOINT of it, rolled back alone when `fn` throws (and, with none
   * open, as a transaction of its own). Blocks started concurrently on one session run one after
   * the other; only a `'nested'` block may run inside another on the same session
   * (`NestedAtomicBlockError` otherwise).
   */
  readonly currentTransaction?: CurrentTransactionMode;
  /** Options of the transaction the block begins; refused when it joins or nests in an open one. */
  readonly transaction?: TransactionOptions;
  /**
   * Run `fn` again from the start when its transaction fails with a serialization failure or a
   * deadlock (SQLSTATE 40001, 40P01), COMMIT included. Only for a block that owns its
   * transaction: not with `'append'`, nor `'nested'` inside an open transaction.
   */
  readonly retry?: RetryOptions;
}

/** Options of `newNonCtxAtomicSession` and of `runInNewCtx`'s options form. */
export interface NewTransactionOptions {
  /** Options of the transactions the new session (or context) begins. */
  readonly transaction?: TransactionOptions;
  /** Retries on serialization failures and deadlocks, as in `atomicDbSession`. */
  readonly retry?: RetryOptions;
}

const MODES: readonly CurrentTransactionMode[] = ['commit', 'rollback', 'append', 'raise', 'nested'];

function checkNewTransaction(options: unknown, where: string) {
  if (typeof options !== 'object' || options === null) {
    throw new InvalidOptionsError(
      `${where}: options must be an object like { transaction, retry }, got ${JSON.stringify(options)}.`,
    );
  }
  const { transaction, retry, ...rest } = options as NewTransactionOptions & Record<string, unknown>;
  return {
    rest,
    transaction: transaction === undefined ? undefined : validateTransactionOptions(transaction, where),
    retry: validateRetry(retry, where),
  };
}

function refuseUnknown(rest: Record<string, unknown>, where: string, known: string): void {
  const key = Object.keys(rest)[0];
  if (key !== undefined) throw new InvalidOptionsError(`${where}: unknown option "${key}"; the options are ${known}.`);
}

/**
 * Run `fn` in a transaction of its own on the context session: committed when `fn` returns,
 * rolled back when it throws (and the error rethrown). `currentTransaction` says what happens to
 * a transaction already open; `transaction` sets isolation, access mode and timeouts; `retry`
 * re-runs `fn` on serialization failures and deadlocks.
 *
 * @example
 * ```ts
 * await atomicDbSession(db, async (session) => {
 *   await session.query('UPDATE accounts SET balance = balance - 10 WHERE id = $1', [from]);
 *   await session.query('UPDATE accounts SET balance = balance + 10 WHERE id = $1', [to]);
 * }, { transaction: { isolationLevel: 'serializable' }, retry: 3 });
 * ```
 */
export async function atomicDbSession<R>(
  db: DbConnect,
  fn: (session: DbSession) => Promise<R> | R,
  options: AtomicOptions = {},
): Promise<R> {
  const where = 'atomicDbSession(db, fn, options)';
  requireFunction(fn, where);
  const { rest, transaction, retry } = checkNewTransaction(options, where);
  const { currentTransaction = 'commit', ...unknown } = rest as { currentTransaction?: CurrentTransactionMode };
  refuseUnknown(unknown, where, 'currentTransaction, transaction, retry');
  if (!MODES.includes(currentTransaction)) {
    throw new InvalidOptionsError(
      `atomicDbSession: currentTransaction must be one of ${MODES.join(', ')}, got ${JSON.stringify(currentTransaction)}.`,
    );
  }
  if (retry !== undefined && currentTransaction === 'append') {
    throw new InvalidOptionsError(
      "atomicDbSession: retry needs a block that owns its transaction; with currentTransaction: 'append' a retry " +
        'would re-run only part of it. Put the retry on the outermost block (or runInNewCtx).',
    );
  }
  const session = await dbSession(db);
  const nested = currentTransaction === 'nested';
  return session.exclusive(async (enclosed) => {
    // Work queued before the block (a query not awaited) decides whether a transaction is open.
    await session.drain();
    if (session.inTransaction || (nested && enclosed)) {
      if (currentTransaction === 'raise') throw new TransactionAlreadyOpenError();
      if (currentTransaction === 'commit') await session.commit();
      if (currentTransaction === 'rollback') await session.rollback();
      if (nested || currentTransaction === 'append') {
        if (transaction !== undefined || retry !== undefined) {
          throw new TransactionAlreadyOpenError(
            `atomicDbSession: currentTransaction: '${currentTransaction}' joins the transaction already open, so its ` +
              `${transaction === undefined ? 'retry' : 'transaction options'} cannot apply (PostgreSQL fixes them at ` +
              'BEGIN, and a retry would re-run only part of the transaction). Give them to the outer block or route.',
          );
        }
        return nested ? session.savepoint(() => fn(session)) : inTransaction(session, fn);
      }
    }
    return withRetry(retry, () => session.withOptions(transaction, () => inTransaction(session, fn)));
  }, nested);
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
 * Run `fn` after the COMMIT that makes the work done so far in the current context's session for
 * `db` durable: the request's commit before its response, `commitDbSession`, or the end of the
 * enclosing atomic block. Dropped when that work is rolled back (an error, a status >= 400, a
 * failed COMMIT, a nested block that threw, a retried attempt). Hooks run in registration order
 * and are awaited before the response is released; one that throws is logged, never turning a
 * committed request into an error. Throws `ContextNotInitiatedError` outside a context; for a
 * session of your own use `session.onCommit(fn)`.
 *
 * @example
 * ```ts
 * await session.query('INSERT INTO orders (id) VALUES ($1)', [id]);
 * await onCommit(db, () => mailer.send(orderConfirmation(id)));
 * ```
 */
export async function onCommit(db: DbConnect, fn: TransactionHook): Promise<void> {
  requireFunction(fn, 'onCommit(db, fn)');
  (await hookTarget(db, 'onCommit')).onCommit(fn);
}

/**
 * Run `fn` after the work done so far in the current context's session for `db` is rolled back;
 * dropped once it commits. The counterpart of `onCommit`, with the same rules.
 *
 * @example
 * ```ts
 * await onRollback(db, () => uploads.delete(tempFile));
 * ```
 */
export async function onRollback(db: DbConnect, fn: TransactionHook): Promise<void> {
  requireFunction(fn, 'onRollback(db, fn)');
  (await hookTarget(db, 'onRollback')).onRollback(fn);
}

// The newNonCtxSession calls the caller runs inside, innermost first, with the context of each.
interface InsideNonCtx {
  readonly db: DbConnect;
  readonly ctx: DbSessionCtx | undefined;
  readonly outer: InsideNonCtx | undefined;
}
const insideNonCtx = new AsyncLocalStorage<InsideNonCtx>();

/**
 * The context's session for a hook. Inside `newNonCtxSession(db, fn)` (same context), a hook
 * for `db` would land on the context's session, not on the one `fn` works on, and run when the
 * request commits even if `fn`'s work was rolled back: refused, naming `session.onCommit`.
 */
function hookTarget(db: DbConnect, kind: 'onCommit' | 'onRollback'): Promise<DbSession> {
  const ctx = requireCtx(`${kind}()`);
  for (let at = insideNonCtx.getStore(); at !== undefined; at = at.outer) {
    if (at.db === db && at.ctx === ctx) {
      throw new InvalidOptionsError(
        `${kind}(db, fn) was called inside newNonCtxSession(db, …) / newNonCtxAtomicSession(db, …): it would ` +
          "register on the context's session, not on the session those give you. Use session." +
          `${kind}(fn) on that session.`,
      );
    }
  }
  return ctx.getSession(db);
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
    return await insideNonCtx.run({ db, ctx, outer: insideNonCtx.getStore() }, () => fn(session));
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
export async function newNonCtxAtomicSession<R>(
  db: DbConnect,
  fn: (session: DbSession) => Promise<R> | R,
  options: NewTransactionOptions = {},
): Promise<R> {
  const where = 'newNonCtxAtomicSession(db, fn, options)';
  requireFunction(fn, where);
  const { rest, transaction, retry } = checkNewTransaction(options, where);
  refuseUnknown(rest, where, 'transaction, retry');
  return newNonCtxSession(db, (session) =>
    withRetry(retry, () => session.withOptions(transaction, () => inTransaction(session, fn))),
  );
}

/**
 * Run `fn(...args)` in a fresh context of its own, even inside another one: its sessions get
 * their own connections, are committed when `fn` returns, rolled back when it throws, and always
 * closed. The way to run work concurrently with the request's session, or to outlive it. The
 * options form, `runInNewCtx({ transaction, retry }, fn, ...args)`, sets the options of the
 * context's transactions and re-runs `fn` in a new context on serialization failures and
 * deadlocks.
 *
 * @example
 * ```ts
 * await Promise.all([insertRow(), runInNewCtx(insertRow), runInNewCtx(insertNamed, 'b')]);
 * await runInNewCtx({ transaction: { isolationLevel: 'serializable' }, retry: 3 }, transfer, from, to);
 * ```
 */
export function runInNewCtx<A extends unknown[], R>(fn: (...args: A) => Promise<R> | R, ...args: A): Promise<R>;
export function runInNewCtx<A extends unknown[], R>(
  options: NewTransactionOptions,
  fn: (...args: A) => Promise<R> | R,
  ...args: A
): Promise<R>;
export async function runInNewCtx(first: unknown, ...rest: unknown[]): Promise<unknown> {
  if (typeof first === 'function') return newCtx(undefined, first as (...args: unknown[]) => unknown, rest);
  if (typeof first !== 'object' || first === null) requireFunction(first, 'runInNewCtx(fn)');
  const where = 'runInNewCtx(options, fn, ...args)';
  const { rest: unknown, transaction, retry } = checkNewTransaction(first, where);
  refuseUnknown(unknown, where, 'transaction, retry');
  const [fn, ...args] = rest;
  requireFunction(fn, where);
  return withRetry(retry, () => newCtx(transaction, fn as (...args: unknown[]) => unknown, args));
}

function newCtx(transaction: TransactionOptions | undefined, fn: (...args: unknown[]) => unknown, args: unknown[]) {
  const ctx = new Ctx(storage.getStore());
  if (transaction !== undefined) ctx.setTransactionOptions(transaction);
  // storage.run directly: a nested context is the point here, which ctx.run() refuses.
  return storage.run(ctx, async () => {
    let result: unknown;
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

import type { DbConnect } from './connect.js';
import { DbSessionCtx, storage } from './context.js';
import { ContextNotInitiatedError } from './errors.js';
import { DbSession } from './session.js';

/**
 * Run `fn` with a session whose work is always rolled back at the end, for a test that wants
 * to leave nothing behind. Pair it with `putSavepointSessionInCtx` to let the app share it.
 *
 * @example
 * ```ts
 * await rollbackSession(db, async (session) => {
 *   await session.query('INSERT INTO users (name) VALUES ($1)', ['fixture']);
 *   // … the row is gone after this function returns
 * });
 * ```
 */
export async function rollbackSession<R>(db: DbConnect, fn: (session: DbSession) => Promise<R> | R): Promise<R> {
  const session = await db.createSession();
  try {
    return await fn(session);
  } finally {
    await session.close();
  }
}

export interface TestContextOptions {
  /** Close (roll back and release) the sessions left in the context at the end; default true. */
  readonly autoClose?: boolean;
}

/**
 * Run `fn` inside a context, the way a request would. Adapters do not open a context of their
 * own when one is already open, so an app driven from `fn` (`app.inject()`, a request over
 * loopback) uses this one.
 *
 * @example
 * ```ts
 * await setTestContext(async () => {
 *   const res = await app.inject({ method: 'POST', url: '/notes' });
 * });
 * ```
 */
export async function setTestContext<R>(
  fn: () => Promise<R> | R,
  { autoClose = true }: TestContextOptions = {},
): Promise<R> {
  const ctx = new DbSessionCtx();
  try {
    return await ctx.run(fn);
  } finally {
    if (autoClose) await ctx.closeAll();
  }
}

let savepointCounter = 0;

/**
 * Put into the current context, for `db`, a session that runs on `session`'s connection inside
 * its transaction: the app's BEGIN / COMMIT / ROLLBACK become SAVEPOINT / RELEASE / ROLLBACK TO.
 * The app's commits stay inside the test's transaction, which `rollbackSession` rolls back.
 *
 * @example
 * ```ts
 * await setTestContext(() => rollbackSession(db, (session) =>
 *   putSavepointSessionInCtx(db, session, async () => {
 *     await app.inject({ method: 'POST', url: '/notes' });
 *     const { rows } = await session.query('SELECT count(*)::int AS n FROM notes');
 *   })));
 * ```
 */
export async function putSavepointSessionInCtx<R>(
  db: DbConnect,
  session: DbSession,
  fn: () => Promise<R> | R,
): Promise<R> {
  const ctx = storage.getStore();
  if (ctx === undefined) throw new ContextNotInitiatedError('putSavepointSessionInCtx()');
  const name = `context_db_sp_${++savepointCounter}`;
  const savepointSession = new DbSession({
    acquire: () => session.client(),
    release: () => {},
    beginSql: `SAVEPOINT ${name}`,
    commitSql: `RELEASE SAVEPOINT ${name}`,
    rollbackSql: `ROLLBACK TO SAVEPOINT ${name}; RELEASE SAVEPOINT ${name}`,
  });
  const remove = ctx.putSession(db, savepointSession);
  try {
    return await fn();
  } finally {
    remove();
    await savepointSession.close();
  }
}

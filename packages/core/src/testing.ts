import type { DbConnect } from './connect.js';
import { DbSessionCtx, type SessionFactory, storage } from './context.js';
import { ContextNotInitiatedError, SessionClosedError } from './errors.js';
import { DbSession } from './session.js';
import { restoreLocalTimeouts, setLocalTimeouts } from './transaction.js';

// How the helpers make a test behave like production inside one rolled-back transaction:
// - the test's context (setTestContext) holds one session per database, the "base";
// - every context opened inside it (each request, runInNewCtx) and every newNonCtxSession gets
//   sessions of its own that run as savepoints on that base, so a request's commit is a RELEASE
//   (after checking deferred constraints, as a COMMIT would) and its rollback a ROLLBACK TO;
// - savepoints on one connection nest, they cannot interleave, so a base serves one context at a
//   time: a second request waits for the first to end, while work a context starts inside itself
//   (runInNewCtx from a handler) nests in its savepoint instead of waiting for it.

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
  /**
   * Roll back and release the sessions left in the context at the end; default true. With
   * false they are left to the caller to close. Either way the context is finished: code that
   * runs after the test cannot use it.
   */
  readonly autoClose?: boolean;
}

/**
 * Run `fn` inside a context, the way a request would. Requests the app serves from inside `fn`
 * (`app.inject()`, a request over loopback), `runInNewCtx` and `newNonCtxSession` get sessions of
 * their own that are savepoints in this context's transaction: each request commits or rolls back
 * its own savepoint, and whatever this context leaves open is rolled back at the end.
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
  ctx.childFactory = savepointsOn(ctx);
  try {
    return await ctx.run(fn);
  } finally {
    // Finished, not only closed: a request or job still running after the test must fail with
    // SessionClosedError instead of taking a connection nobody will release.
    if (autoClose) await ctx.finish({ error: TEST_ENDED });
    else ctx.seal();
  }
}

const TEST_ENDED = new Error('the test context ended');

/**
 * Put into the current context, for `db`, a session that runs on `session`'s connection inside
 * its transaction: the app's BEGIN / COMMIT / ROLLBACK become SAVEPOINT / RELEASE / ROLLBACK TO.
 * The app's commits stay inside the test's transaction, which `rollbackSession` rolls back.
 * `closeDbSession(db)` inside `fn` closes that savepoint session; the next `dbSession(db)` gets a
 * new one on the same connection, never a connection of its own.
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
  const own = ctx.sessionFactory;
  const child = ctx.childFactory;
  ctx.sessionFactory = (target, owner) => {
    if (target === db) return Promise.resolve(savepointSession(db, session, owner, turnFor(session)));
    return own === undefined ? target.createSession() : own(target, owner);
  };
  ctx.childFactory ??= savepointsOn(ctx);
  try {
    return await fn();
  } finally {
    ctx.sessionFactory = own;
    ctx.childFactory = child;
    await ctx.closeSession(db);
  }
}

/** Sessions for contexts opened inside `ctx`: savepoints on `ctx`'s own session for each database. */
function savepointsOn(ctx: DbSessionCtx): SessionFactory {
  // One turn for all databases: a request that takes its turn on one database holds it on all,
  // so two requests touching two databases in opposite orders cannot wait for each other.
  return async (db, owner) => {
    if (ctx.finished) throw new SessionClosedError('The test context this work was started in has ended.');
    return savepointSession(db, await ctx.getSession(db), owner, turnFor(ctx));
  };
}

let savepointCounter = 0;

function savepointSession(db: DbConnect, base: DbSession, owner: DbSessionCtx, turn: Turn): DbSession {
  const name = `context_db_sp_${++savepointCounter}`;
  const rollbackTo = `ROLLBACK TO SAVEPOINT ${name}; RELEASE SAVEPOINT ${name}`;
  return new DbSession({
    acquire: async () => {
      await turn.enter(owner);
      try {
        return await base.client();
      } catch (err) {
        turn.leave(owner);
        throw err;
      }
    },
    release: () => turn.leave(owner),
    defaults: db.transaction,
    // Inside the test's transaction the isolation level is the test's; read-only and timeouts
    // apply to the savepoint.
    beginSql: (options) =>
      `SAVEPOINT ${name}` +
      (options?.readOnly === true ? '; SET LOCAL transaction_read_only = on' : '') +
      (options === undefined ? '' : setLocalTimeouts(options)),
    commitSql: (options) =>
      // A read-only savepoint wrote nothing to keep, and a released one would leave the rest of
      // the test's transaction read-only.
      // (The SAVEPOINT first fails in an aborted transaction, as a COMMIT would.)
      options?.readOnly === true
        ? `SAVEPOINT ${name}_check; ${rollbackTo}`
        : // A COMMIT checks deferred constraints; so does this, then restores their deferred mode
          // (and the timeouts) for the rest of the test's transaction.
          `SAVEPOINT ${name}_check; SET CONSTRAINTS ALL IMMEDIATE; ROLLBACK TO SAVEPOINT ${name}_check; ` +
          `RELEASE SAVEPOINT ${name}_check; RELEASE SAVEPOINT ${name}` +
          // The enclosing transaction's own values: a SET LOCAL outlives a released savepoint.
          (options === undefined ? '' : restoreLocalTimeouts(options, base.transactionOptions)),
    rollbackSql: () => rollbackTo,
    checkSql: `SAVEPOINT ${name}_check; SET CONSTRAINTS ALL IMMEDIATE; ROLLBACK TO SAVEPOINT ${name}_check; RELEASE SAVEPOINT ${name}_check`,
    resetSql: '',
  });
}

/**
 * Whose turn it is on a base session's connection. A context may enter while the holder is
 * itself or one of its ancestors (its savepoint nests inside theirs); any other waits in order.
 */
class Turn {
  readonly #holders: DbSessionCtx[] = [];
  readonly #waiting: Array<{ owner: DbSessionCtx; enter: () => void }> = [];

  enter(owner: DbSessionCtx): Promise<void> {
    if (this.#mayEnter(owner)) {
      this.#holders.push(owner);
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.#waiting.push({ owner, enter: resolve });
    });
  }

  leave(owner: DbSessionCtx): void {
    const index = this.#holders.lastIndexOf(owner);
    if (index >= 0) this.#holders.splice(index, 1);
    for (let next = this.#waiting[0]; next !== undefined && this.#mayEnter(next.owner); next = this.#waiting[0]) {
      this.#waiting.shift();
      this.#holders.push(next.owner);
      next.enter();
    }
  }

  #mayEnter(owner: DbSessionCtx): boolean {
    return this.#holders.length === 0 || this.#holders.some((holder) => descends(owner, holder));
  }
}

function descends(ctx: DbSessionCtx | undefined, ancestor: DbSessionCtx): boolean {
  for (let at = ctx; at !== undefined; at = at.parent) if (at === ancestor) return true;
  return false;
}

const turns = new WeakMap<object, Turn>();

/** The turn of a test context's children (keyed by the context) or of a put session's (by the session). */
function turnFor(key: DbSessionCtx | DbSession): Turn {
  let turn = turns.get(key);
  if (turn === undefined) {
    turn = new Turn();
    turns.set(key, turn);
  }
  return turn;
}

import { AsyncLocalStorage } from 'node:async_hooks';
import type { DbConnect } from './connect.js';
import {
  ContextAlreadyInitiatedError,
  ContextNotInitiatedError,
  DeadlineExceededError,
  InvalidOptionsError,
  SessionClosedError,
} from './errors.js';
import type { DbSession } from './session.js';
import { type TransactionOptions, validateTransactionOptions } from './transaction.js';

/** Awaited just before each session with an open transaction is committed; not on rollback. */
export type BeforeCommitCallback = (session: DbSession) => void | Promise<void>;

/** What `DbSessionCtx.finish()` decides from. */
export interface FinishOptions {
  /** The response status; defaults to 200. */
  readonly statusCode?: number;
  /** Any error means roll back, whatever the status. */
  readonly error?: unknown;
  readonly beforeCommit?: BeforeCommitCallback;
  /** Which statuses commit; default `statusCode < 400`. */
  readonly commitOn?: (statusCode: number) => boolean;
}

/** The default commit rule: success statuses and redirects commit, 4xx and 5xx roll back. */
export const defaultCommitOn = (statusCode: number): boolean => statusCode < 400;

// One store per process, even when the ESM and CommonJS builds (or two installed versions) of
// core are both loaded: otherwise an adapter and the app could each see a different context.
const STORAGE_KEY = Symbol.for('@context-db/core.storage');
type Storage = AsyncLocalStorage<DbSessionCtx>;
const holder = globalThis as typeof globalThis & { [STORAGE_KEY]?: Storage };
holder[STORAGE_KEY] ??= new AsyncLocalStorage<DbSessionCtx>();
/** @internal */
export const storage: Storage = holder[STORAGE_KEY];

type State = 'open' | 'finishing' | 'finished';

/**
 * @internal Makes the sessions of a context instead of `db.createSession()`: the testing helpers
 * use it to run an app's sessions as savepoints inside a test's transaction.
 */
export type SessionFactory = (db: DbConnect, ctx: DbSessionCtx) => Promise<DbSession>;

/**
 * @internal Who drives a context (an adapter's request, through `RequestCtx`): told when the
 * context is first asked for a session, so that what only matters with a session (watching the
 * client, holding the response) costs nothing on a request that never makes one.
 */
export interface CtxOwner {
  /** Called before the context's first session is made; may abort the context, refusing it. */
  sessionRequested(): void;
  /** Where an `onCommit` / `onRollback` hook that threw is reported, if not `console.error`. */
  readonly hookErrors: ((err: unknown, kind: string) => void) | undefined;
}

// What a finish with nothing to do resolves to: one promise for every such context.
const DONE: Promise<void> = Promise.resolve();

/**
 * The sessions of one unit of work (a request, a job, a test). An adapter creates one per
 * request, runs the request inside it with `run`, and calls `finish` when the outcome is known,
 * which may be from a callback outside the async scope (Express's `res.end`).
 *
 * @example
 * ```ts
 * const ctx = new DbSessionCtx();
 * let statusCode = 200, error: unknown;
 * try { await ctx.run(() => handle(job)); } catch (err) { error = err; }
 * await ctx.finish({ statusCode, error });
 * ```
 */
export class DbSessionCtx {
  // Only public members are used across the module boundary: a context made by another copy of
  // core may be the one in the store, and #private fields do not work across copies.
  // Both made with the first session: most requests of most routes never ask for one.
  #sessions: Map<DbConnect, Promise<DbSession>> | undefined;
  // Finished, sessions still holding a connection for open streams (see releaseStreams).
  #retained: DbSession[] | undefined;
  #responseOver = false;
  // The sessions made so far, for the synchronous close when a context is rolled back.
  #resolved: Set<DbSession> | undefined;
  #state: State = 'open';
  #finishing: Promise<void> | undefined;
  // Why the context was aborted (abort()): its work is gone, so no finish may report a commit.
  #aborted: Error | undefined;
  #deadline: ReturnType<typeof setTimeout> | undefined;
  /** @internal The context this one was opened in (a request's inside a test's, runInNewCtx's). */
  readonly parent: DbSessionCtx | undefined;
  /** @internal Makes this context's sessions; default `db.createSession()`. */
  sessionFactory: SessionFactory | undefined;
  /** @internal Makes the sessions of contexts opened inside this one (and is passed on to them). */
  childFactory: SessionFactory | undefined;
  /** @internal The adapter request driving this context, if any (see `CtxOwner`). */
  owner: CtxOwner | undefined;
  #hookErrors: ((err: unknown, kind: string) => void) | undefined;
  #transaction: TransactionOptions | undefined;

  /**
   * A new, open context. `parent` is the context it is opened in, if any: a context opened inside
   * a test's (`setTestContext`) makes its sessions inside the test's transaction.
   */
  constructor(parent?: DbSessionCtx) {
    this.childFactory = parent?.childFactory;
    // Only a test's descendants need to know their ancestors (see testing.ts); elsewhere a
    // background context must not keep its request's context alive.
    this.parent = this.childFactory === undefined ? undefined : parent;
    this.sessionFactory = this.childFactory;
    this.#hookErrors = parent?.hookErrors;
  }

  /**
   * @internal Where an `onCommit` / `onRollback` hook that threw is reported (an adapter's
   * framework logger); default `console.error`. Asked of the owner only when needed.
   */
  get hookErrors(): ((err: unknown, kind: string) => void) | undefined {
    return this.#hookErrors ?? this.owner?.hookErrors;
  }

  set hookErrors(report: ((err: unknown, kind: string) => void) | undefined) {
    this.#hookErrors = report;
  }

  /**
   * True while no session has been asked for (or all were closed), and the context was not
   * aborted: finishing costs nothing and cannot fail.
   */
  get empty(): boolean {
    return (this.#sessions === undefined || this.#sessions.size === 0) && this.#aborted === undefined;
  }

  /** True once `finish()` has started; no new sessions can be made then. */
  get finished(): boolean {
    return this.#state !== 'open';
  }

  /**
   * Run `fn` inside this context: `dbSession()` anywhere below it, including async work it
   * starts, finds this context. Re-entering the same context is allowed (adapters do it from
   * framework callbacks); opening it inside a different one throws `ContextAlreadyInitiatedError`.
   *
   * @example
   * ```ts
   * await ctx.run(async () => (await dbSession(db)).query('SELECT 1'));
   * ```
   */
  run<R>(fn: () => R): R {
    const current = storage.getStore();
    if (current !== undefined && current !== this) throw new ContextAlreadyInitiatedError();
    return storage.run(this, fn);
  }

  /**
   * Set the transaction options of this context's sessions (over each database's defaults), for
   * the transactions they open from now on. Throws `TransactionAlreadyOpenError` when one of them
   * already has a transaction open: set them before the first query.
   *
   * @example
   * ```ts
   * ctx.setTransactionOptions({ isolationLevel: 'serializable' });
   * ```
   */
  setTransactionOptions(options: TransactionOptions | undefined): void {
    const valid = options === undefined ? undefined : validateTransactionOptions(options, 'setTransactionOptions()');
    if (this.#resolved !== undefined) for (const session of this.#resolved) session.setTransactionOptions(valid);
    this.#transaction = valid;
  }

  /** The transaction options set with `setTransactionOptions`, if any. */
  get transactionOptions(): TransactionOptions | undefined {
    return this.#transaction;
  }

  /**
   * The context's session for `db`, created on first call (no connection is taken yet).
   *
   * @example
   * ```ts
   * const session = await ctx.getSession(db);
   * ```
   */
  getSession(db: DbConnect): Promise<DbSession> {
    const existing = this.#sessions?.get(db);
    if (existing !== undefined) return existing;
    // The owner may find the client gone and abort: then the session is refused below.
    if (this.#sessions === undefined && this.#state === 'open') this.owner?.sessionRequested();
    if (this.#state !== 'open') {
      return Promise.reject(
        this.#aborted ??
          new SessionClosedError('dbSession() was called after its context finished (the request already ended).'),
      );
    }
    const factory = this.sessionFactory;
    const created = factory === undefined ? db.createSession() : factory(db, this);
    if (this.#sessions === undefined || this.#resolved === undefined) {
      this.#sessions = new Map();
      this.#resolved = new Set();
    }
    const sessions = this.#sessions;
    const resolved = this.#resolved;
    sessions.set(db, created);
    created.then(
      (session) => {
        // Runs before the caller's own continuation: the session is configured when they get it.
        if (this.#transaction !== undefined) session.setTransactionOptions(this.#transaction);
        const hookErrors = this.hookErrors;
        if (hookErrors !== undefined) session.hookErrors = hookErrors;
        resolved.add(session);
        // Made while the context was open, ready after its finish began: refuse what comes now.
        if (this.#state !== 'open') session.seal();
      },
      () => {
        if (sessions.get(db) === created) sessions.delete(db);
      },
    );
    return created;
  }

  /**
   * The session for `db` if one was made, without making one.
   *
   * @example
   * ```ts
   * const session = await ctx.peekSession(db); // undefined when nothing asked for it
   * ```
   */
  async peekSession(db: DbConnect): Promise<DbSession | undefined> {
    return settled(this.#sessions?.get(db));
  }

  /**
   * Close the session for `db` and take it out of the context, so the next `dbSession(db)` makes
   * a new one.
   *
   * @example
   * ```ts
   * await ctx.closeSession(db);
   * ```
   */
  async closeSession(db: DbConnect): Promise<void> {
    const entry = this.#sessions?.get(db);
    // While finishing, the outcome is the context's to decide: closing now would roll back work
    // that the finish is about to commit.
    if (entry === undefined || this.#state !== 'open') return;
    this.#sessions?.delete(db);
    const session = await settled(entry);
    if (session === undefined) return;
    this.#resolved?.delete(session);
    // end(), not close(): taken out of the context, it is ours to end even if a finish has
    // sealed it meanwhile (the finish no longer sees it).
    await session.end(false);
    await session.runHooks();
  }

  /**
   * Commit every session with an open transaction, awaiting `beforeCommit(session)` before each.
   * Stops at the first failure and rejects with it; sessions stay open.
   *
   * @example
   * ```ts
   * await ctx.commitAll(async (session) => { await session.query('SELECT audit_flush()'); });
   * ```
   */
  async commitAll(beforeCommit?: BeforeCommitCallback): Promise<void> {
    for (const session of await this.#settledSessions()) {
      if (beforeCommit !== undefined && session.inTransaction) await beforeCommit(session);
      await session.commit();
    }
  }

  /**
   * Roll back every session's open transaction; never rejects, except inside a nested atomic
   * block, where rolling back would end the enclosing transaction (`NestedAtomicBlockError`).
   *
   * @example
   * ```ts
   * await ctx.rollbackAll();
   * ```
   */
  async rollbackAll(): Promise<void> {
    // Finishing: the finish decides and ends every session.
    if (this.#state !== 'open') return;
    for (const session of await this.#settledSessions()) {
      if (!session.closed) await session.rollback();
    }
  }

  /**
   * Roll back what is uncommitted, release every connection and empty the context: the next
   * `dbSession()` in it makes a new session. Never rejects.
   *
   * @example
   * ```ts
   * await ctx.closeAll();
   * ```
   */
  async closeAll(): Promise<void> {
    // Finishing or finished: the finish closes everything. Not awaited: a beforeCommit that
    // calls this would wait for the finish that waits for it.
    if (this.#state !== 'open') return;
    const sessions = await this.#settledSessions();
    this.#sessions?.clear();
    this.#resolved?.clear();
    await Promise.all(sessions.map((session) => session.close()));
  }

  /**
   * End the unit of work: commit when there is no `error` and `commitOn(statusCode)` holds (by
   * default, status < 400), otherwise roll back; then close everything. Rejects only when it
   * meant to commit and could not (a failed COMMIT or a throwing `beforeCommit`): by then every
   * session is rolled back and released, and the caller should report a failure (HTTP 500).
   * A second call, e.g. a client abort racing the normal end, returns the first call's promise.
   *
   * @example
   * ```ts
   * try { await ctx.finish({ statusCode: reply.statusCode }); }
   * catch (err) { reply.code(500); }
   * ```
   */
  finish(options: FinishOptions = {}): Promise<void> {
    if (this.#finishing === undefined) {
      if (this.#deadline !== undefined) clearTimeout(this.#deadline);
      // Most requests that never asked for a session end here, without a chain of awaits.
      if (this.#sessions === undefined || this.#sessions.size === 0) {
        this.#state = 'finished';
        this.#finishing = DONE;
      } else {
        this.#finishing = this.#finish(options);
      }
    }
    const aborted = this.#aborted;
    // Aborted: what would have been committed is gone, so a finish that means to commit fails.
    if (aborted !== undefined && options.error === undefined && wantsCommit(options)) {
      return this.#finishing.then(() => {
        throw aborted;
      });
    }
    return this.#finishing;
  }

  /** @internal True when the finished context keeps connections for open streams (see `releaseStreams`). */
  get retainsStreams(): boolean {
    return this.#retained !== undefined;
  }

  /**
   * @internal For adapters, once the response is over: close the streams (`session.stream()`)
   * that a committed context kept open for its body and nobody read to the end, and give their
   * connections back.
   */
  releaseStreams(): Promise<void> {
    // Over before the finish recorded what it keeps (the client left during the commit phase):
    // the finish releases them itself.
    this.#responseOver = true;
    const retained = this.#retained;
    if (retained === undefined) return DONE;
    this.#retained = undefined;
    return Promise.all(retained.map((session) => session.releaseStreams())).then(noop, noop);
  }

  /**
   * Roll back now, without waiting for the work under way: the statement each session is running
   * is cancelled (PostgreSQL's cancel request) and rejects with `reason`, queued and later work
   * fails with `reason`, a connection still awaited from the pool is given back unused, and every
   * session is rolled back and released (`onRollback` hooks run). A `finish()` that would commit,
   * before or after, rejects with `reason`. Does nothing once the context is finishing: its
   * outcome is being decided already. Adapters call it when the client goes away or a deadline
   * passes. Never rejects.
   *
   * @example
   * ```ts
   * req.once('close', () => void ctx.abort(new Error('the client went away')));
   * ```
   */
  abort(reason: Error): Promise<void> {
    if (this.#finishing !== undefined) return this.#finishing.catch(noop);
    this.#aborted = reason;
    return this.finish({ error: reason }).catch(noop);
  }

  /**
   * Give this context's database work `ms` milliseconds from now. When they pass before
   * `finish()` begins, the context is aborted with `DeadlineExceededError` (see `abort`): the
   * running statement is cancelled, everything is rolled back, and the response becomes an
   * error. A second call replaces the deadline. Contexts opened inside (`runInNewCtx`) keep
   * their own time.
   *
   * @example
   * ```ts
   * ctx.setDeadline(2_000);
   * ```
   */
  setDeadline(ms: number): void {
    if (typeof ms !== 'number' || !Number.isFinite(ms) || ms <= 0) {
      throw new InvalidOptionsError(`A deadline must be a positive number of milliseconds, got ${String(ms)}.`);
    }
    if (this.#state !== 'open') return;
    if (this.#deadline !== undefined) clearTimeout(this.#deadline);
    this.#deadline = setTimeout(() => void this.abort(new DeadlineExceededError(ms)), ms);
    // A request still running keeps the process alive by itself; a deadline alone should not.
    this.#deadline.unref();
  }

  /** @internal The request's own work is done (see `RequestCtx.awaitingBody`): its deadline no longer applies. */
  clearDeadline(): void {
    if (this.#deadline !== undefined) clearTimeout(this.#deadline);
    this.#deadline = undefined;
  }

  /**
   * @internal Finish the context without touching its sessions (they stay with whoever holds
   * them): no new session can be made in it, and no context opened inside it makes savepoints.
   */
  seal(): void {
    if (this.#state !== 'open') return;
    if (this.#deadline !== undefined) clearTimeout(this.#deadline);
    this.#state = 'finished';
    this.#finishing = DONE;
  }

  async #finish(options: FinishOptions): Promise<void> {
    this.#state = 'finishing';
    let commit = false;
    let failure: unknown;
    try {
      commit = commits(options);
    } catch (err) {
      failure = err; // a throwing commitOn: roll back, and report it as the failure
    }
    // From here on, new work on these sessions fails; work already queued runs before the end.
    const resolved = this.#resolved ?? new Set<DbSession>();
    for (const session of resolved) session.seal();
    // Rolling back (an error, a client gone): end now, before any await; aborted, cut off
    // what runs too.
    const aborted = this.#aborted;
    if (!commit) for (const session of resolved) void rollBack(session, aborted);
    let sessions: DbSession[] = [];
    try {
      sessions = await this.#settledSessions();
      for (const session of sessions) session.seal();
      if (commit) await commitSessions(sessions, options.beforeCommit);
    } catch (err) {
      failure = err;
    } finally {
      this.#state = 'finished';
      this.#sessions?.clear();
      this.#resolved?.clear();
      // After a commit every session has ended; otherwise roll back whatever is left. (A session
      // whose COMMIT failed answers with that failure again: it is already in `failure`.)
      if (!commit || failure !== undefined)
        await Promise.all(sessions.map((session) => rollBack(session, aborted).catch(noop)));
    }
    // Sessions that keep their connection for streams still open (a response body read after
    // the commit), until they end or the response is over (releaseStreams).
    const retained = sessions.filter((session) => session.retained);
    if (retained.length > 0) {
      this.#retained = retained;
      if (this.#responseOver) void this.releaseStreams();
    }
    // After every session ended: an onCommit hook runs only once the outcome of all is known.
    for (const session of sessions) await session.runHooks();
    if (failure !== undefined) throw failure;
  }

  async #settledSessions(): Promise<DbSession[]> {
    const all = this.#sessions;
    if (all === undefined) return [];
    // Usually every session is made by now: nothing to wait for, no promise per session.
    if (this.#resolved !== undefined && this.#resolved.size === all.size) return [...this.#resolved];
    const sessions = await Promise.all([...all.values()].map(settled));
    return sessions.filter((session): session is DbSession => session !== undefined);
  }
}

/**
 * Commit the sessions of a finishing context. With one session and no `beforeCommit` this is
 * one COMMIT. With several, every `beforeCommit` runs first, then deferred constraints are
 * checked on each, so the usual COMMIT failure (a deferred constraint) surfaces while all of them
 * can still roll back; only a failure between two COMMITs (a crash, a lost connection) can leave
 * one database committed and another not.
 */
async function commitSessions(sessions: DbSession[], beforeCommit: BeforeCommitCallback | undefined): Promise<void> {
  if (beforeCommit !== undefined || sessions.length > 1) {
    let open = 0;
    for (const session of sessions) {
      // Work queued before the finish decides whether a transaction is open.
      await session.drain();
      if (!session.inTransaction) continue;
      open++;
      if (beforeCommit !== undefined) await session.runBeforeCommit(() => beforeCommit(session));
    }
    if (open > 1) for (const session of sessions) await session.checkDeferred();
  }
  for (const session of sessions) await session.end(true);
}

const noop = (): void => {};

function rollBack(session: DbSession, aborted: Error | undefined): Promise<void> {
  return aborted === undefined ? session.end(false) : session.cancel(aborted);
}

/** Whether `options` ask for a commit; a `commitOn` that throws does not. */
function wantsCommit(options: FinishOptions): boolean {
  try {
    return commits(options);
  } catch {
    return false;
  }
}

function commits({ statusCode = 200, error, commitOn = defaultCommitOn }: FinishOptions): boolean {
  return error === undefined && commitOn(statusCode);
}

/** A session promise's value, or undefined when creating it failed (its caller saw that error). */
function settled(entry: Promise<DbSession> | undefined): Promise<DbSession | undefined> {
  return entry === undefined ? Promise.resolve(undefined) : entry.catch(() => undefined);
}

/**
 * The context the calling code runs in, if any.
 *
 * @example
 * ```ts
 * const ctx = currentCtx() ?? new DbSessionCtx();
 * ```
 */
export function currentCtx(): DbSessionCtx | undefined {
  return storage.getStore();
}

/**
 * Run `fn` outside any context-db context (other AsyncLocalStorage stores are kept): there
 * `dbSession()` throws and `isContextInitiated()` is false. Adapters use it for opted-out routes.
 *
 * @example
 * ```ts
 * await runOutsideCtx(() => newNonCtxSession(db, (s) => s.query('SELECT 1')));
 * ```
 */
export function runOutsideCtx<R>(fn: () => R): R {
  // run(undefined), not exit(): on Node 20, exit() toggles the storage's async hook on every call
  // (about 50 times slower), and the store is undefined inside either way.
  if (storage.getStore() === undefined) return fn();
  return storage.run(undefined as unknown as DbSessionCtx, fn);
}

/**
 * Give the current context's database work (the request's, in an adapter) `ms` milliseconds from
 * now. When they pass first, the statement running is cancelled (PostgreSQL's cancel request),
 * the transaction is rolled back, and the work fails with `DeadlineExceededError` (status 503),
 * as does the response, whatever the handler answers. A second call replaces the deadline.
 * Throws `ContextNotInitiatedError` outside a context.
 *
 * @example
 * ```ts
 * app.get('/report', async (req, res) => {
 *   setDbDeadline(2_000); // this route's queries get two seconds
 *   res.json(await buildReport());
 * });
 * ```
 */
export function setDbDeadline(ms: number): void {
  const ctx = storage.getStore();
  if (ctx === undefined) throw new ContextNotInitiatedError('setDbDeadline()');
  ctx.setDeadline(ms);
}

/**
 * True when the calling code runs inside a context-db context.
 *
 * @example
 * ```ts
 * if (!isContextInitiated()) return runInNewCtx(job);
 * ```
 */
export function isContextInitiated(): boolean {
  return storage.getStore() !== undefined;
}

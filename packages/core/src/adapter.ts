import { dbSession, type NewTransactionOptions, newNonCtxAtomicSession, newNonCtxSession, runInNewCtx } from './api.js';
import { DbConnect } from './connect.js';
import { type BeforeCommitCallback, type CtxOwner, DbSessionCtx, type FinishOptions, storage } from './context.js';
import { ContextNotInitiatedError, InvalidOptionsError, SessionClosedError } from './errors.js';
import type { DbSession } from './session.js';
import { mergeTransactionOptions, type TransactionOptions, validateTransactionOptions } from './transaction.js';

// What the Fastify, Express and Koa adapters share: option checks, the request helpers, and the
// request lifecycle (open or join a context, decide commit/rollback, abort). Each adapter only
// maps its framework's hooks onto RequestCtx.

/** Options every adapter takes. */
export interface ContextDbOptions {
  /**
   * The default database of the request helpers (`request.db.session()`, …). Optional: every
   * session a request makes is committed or rolled back, whatever `DbConnect` it came from, and
   * the helpers also take a database explicitly (`request.db.session(otherDb)`).
   */
  readonly db?: DbConnect | undefined;
  /** Awaited before each session with an open transaction is committed. */
  readonly beforeCommit?: BeforeCommitCallback;
  /** Which final status codes commit; default `statusCode < 400`. */
  readonly commitOn?: (statusCode: number) => boolean;
  /**
   * Milliseconds each request's database work may take, counted from the request's start: when
   * they pass, the running statement is cancelled, the transaction rolled back, and the response
   * is an error (`DeadlineExceededError`, 503). A route can set its own with `setDbDeadline(ms)`.
   */
  readonly deadline?: number;
}

/**
 * Throw a clear `InvalidOptionsError` when an adapter's options are wrong, at registration time
 * rather than on the first request.
 *
 * @example
 * ```ts
 * validateContextDbOptions(options, 'contextDb()', ['skip']);
 * ```
 */
export function validateContextDbOptions(
  options: unknown,
  where: string,
  extraFunctions: readonly string[] = [],
): asserts options is ContextDbOptions {
  if (options === undefined) return;
  if (typeof options !== 'object' || options === null) {
    throw new InvalidOptionsError(
      `${where} takes an options object (all optional), e.g. { db: new DbConnect({ connectionString }) }, got ${describe(options)}.`,
    );
  }
  const record = options as Record<string, unknown>;
  if (record.db !== undefined && !(record.db instanceof DbConnect) && !isDbConnectLike(record.db)) {
    throw new InvalidOptionsError(
      `${where}: options.db must be a DbConnect (new DbConnect({ connectionString: process.env.DATABASE_URL })), got ${describe(record.db)}.`,
    );
  }
  for (const name of ['beforeCommit', 'commitOn', ...extraFunctions]) {
    if (record[name] !== undefined && typeof record[name] !== 'function') {
      throw new InvalidOptionsError(`${where}: options.${name} must be a function, got ${describe(record[name])}.`);
    }
  }
  const { deadline } = record;
  if (deadline !== undefined && (typeof deadline !== 'number' || !Number.isFinite(deadline) || deadline <= 0)) {
    throw new InvalidOptionsError(
      `${where}: options.deadline must be a positive number of milliseconds, got ${JSON.stringify(deadline)}.`,
    );
  }
}

// A DbConnect from another loaded copy of core fails instanceof but works all the same.
function isDbConnectLike(value: unknown): boolean {
  return typeof value === 'object' && value !== null && typeof (value as DbConnect).createSession === 'function';
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'object') return value.constructor?.name ?? 'an object';
  return typeof value;
}

/**
 * The route helpers an adapter puts on each request. Each works on the adapter's `db`, or on the
 * database given as its first argument.
 */
export interface DbHelpers {
  /** The request context's session for `db` (default: the adapter's): `dbSession(db)`. */
  session(db?: DbConnect): Promise<DbSession>;
  /** `runInNewCtx(fn, ...args)`: concurrent work in an independent context and connection. */
  runInNewCtx: typeof runInNewCtx;
  /** `newNonCtxSession(db, fn)`: a session of its own that `fn` commits itself. */
  newSession<R>(fn: (session: DbSession) => Promise<R> | R): Promise<R>;
  newSession<R>(db: DbConnect, fn: (session: DbSession) => Promise<R> | R): Promise<R>;
  /** `newNonCtxAtomicSession(db, fn, options)`: a session of its own, committed when `fn` returns. */
  newAtomicSession<R>(fn: (session: DbSession) => Promise<R> | R, options?: NewTransactionOptions): Promise<R>;
  newAtomicSession<R>(
    db: DbConnect,
    fn: (session: DbSession) => Promise<R> | R,
    options?: NewTransactionOptions,
  ): Promise<R>;
}

type Work<R> = (session: DbSession) => Promise<R> | R;

/**
 * The route helpers for `db`. They hold no per-request state (the context comes from
 * AsyncLocalStorage), so one object serves every request.
 *
 * @example
 * ```ts
 * const helpers = createDbHelpers(db);
 * await helpers.newAtomicSession((s) => s.query('INSERT INTO audit DEFAULT VALUES'));
 * ```
 */
export function createDbHelpers(db?: DbConnect): DbHelpers {
  const which = (given: DbConnect | undefined, helper: string): DbConnect => {
    const target = given ?? db;
    if (target === undefined) {
      throw new InvalidOptionsError(
        `db.${helper}() needs a database: pass one (db.${helper}(myDb${helper === 'session' ? '' : ', fn'})), or install ` +
          'the adapter with a default, e.g. contextDb({ db }) / app.register(contextDbPlugin, { db }).',
      );
    }
    return target;
  };
  // The database first, or only the function: (fn, options?) or (db, fn, options?).
  const split = <R>(args: unknown[]): [DbConnect | undefined, Work<R>, NewTransactionOptions | undefined] =>
    typeof args[0] === 'function'
      ? [undefined, args[0] as Work<R>, args[1] as NewTransactionOptions | undefined]
      : [args[0] as DbConnect, args[1] as Work<R>, args[2] as NewTransactionOptions | undefined];
  return {
    session: (given) => {
      try {
        return dbSession(which(given, 'session'));
      } catch (err) {
        return Promise.reject(err);
      }
    },
    runInNewCtx,
    newSession: async <R>(...args: unknown[]) => {
      const [given, fn] = split<R>(args);
      return newNonCtxSession(which(given, 'newSession'), fn);
    },
    newAtomicSession: async <R>(...args: unknown[]) => {
      const [given, fn, options] = split<R>(args);
      return newNonCtxAtomicSession(which(given, 'newAtomicSession'), fn, options);
    },
  } as DbHelpers;
}

/**
 * The body of the Express and Koa `transactionOptions()` route middleware: set the current
 * request's transaction options, checked once when the route is declared.
 *
 * @example
 * ```ts
 * const apply = routeTransactionOptions({ readOnly: true }, 'transactionOptions()');
 * app.get('/report', (req, res, next) => { apply(); next(); }, handler);
 * ```
 */
export function routeTransactionOptions(options: TransactionOptions, where: string): () => void {
  const valid = validateTransactionOptions(options, where);
  return () => {
    const ctx = storage.getStore();
    if (ctx === undefined) {
      throw new ContextNotInitiatedError(`${where} (place it after the contextDb() middleware)`);
    }
    // Layered (a router's, then a route's): each adds its fields over what is set already.
    ctx.setTransactionOptions(mergeTransactionOptions(ctx.transactionOptions, valid));
  };
}

/**
 * Why a request's context was aborted when its client went away before the response was sent: the
 * statement running was cancelled, the transaction rolled back, and the handler's later database
 * work fails with this error (a `SessionClosedError`).
 */
export class ClientAbortedError extends SessionClosedError {
  constructor() {
    super('The client closed the connection before the response was sent; the transaction was rolled back.');
  }
}

// What RequestCtx.end() resolves to when there was nothing to commit.
const NOTHING: Promise<unknown> = Promise.resolve(undefined);

/**
 * What an adapter's request object tells `RequestCtx.open`: methods, not closures, so that a
 * request that never asks for a session allocates nothing for them.
 */
export interface RequestWatcher {
  /**
   * Called once, when the request first asks for a session and before it is made: start what
   * only matters with a session (watch for the client leaving, hold the response). Calling
   * `rc.abort()` here (the client already left) refuses the session.
   */
  sessionRequested?(rc: RequestCtx): void;
  /** An `onCommit` / `onRollback` hook threw (the framework's logger); default `console.error`. */
  hookError?(err: unknown, kind: string): void;
}

/**
 * One request's context as an adapter drives it. A request always gets a context of its own,
 * even when one is current: an `app.inject()` or loopback call made inside another request (a
 * batch endpoint) must not commit or roll back that request's transaction by its own status.
 * Inside a test's context (`setTestContext`) the request's sessions are savepoints in the test's
 * transaction.
 *
 * @example
 * ```ts
 * const rc = RequestCtx.open(options);
 * await rc.run(() => handler(req));
 * const failure = await rc.end(res.statusCode); // an error means: answer 500 instead
 * ```
 */
export class RequestCtx implements CtxOwner {
  readonly #ctx: DbSessionCtx;
  #options: ContextDbOptions;
  readonly #watcher: RequestWatcher | undefined;
  #report: ((err: unknown, kind: string) => void) | undefined;

  private constructor(ctx: DbSessionCtx, options: ContextDbOptions, watcher: RequestWatcher | undefined) {
    this.#ctx = ctx;
    this.#options = options;
    this.#watcher = watcher;
    if (watcher !== undefined) ctx.owner = this;
    if (options.deadline !== undefined) ctx.setDeadline(options.deadline);
  }

  /**
   * Open a request's context. `watcher` (usually the adapter's per-request state) learns when
   * the request first asks for a session and receives an `onCommit` / `onRollback` hook that
   * threw; without `hookError` such errors go to `console.error`.
   *
   * @example
   * ```ts
   * const rc = RequestCtx.open(options, { hookError: (err) => logger.error(err) });
   * ```
   */
  static open(options: ContextDbOptions, watcher?: RequestWatcher): RequestCtx {
    return new RequestCtx(new DbSessionCtx(storage.getStore()), options, watcher);
  }

  /** @internal See `CtxOwner`: called by the context, once, before its first session. */
  sessionRequested(): void {
    this.#watcher?.sessionRequested?.(this);
  }

  /** @internal See `CtxOwner`: the watcher's `hookError`, made a function on first need. */
  get hookErrors(): ((err: unknown, kind: string) => void) | undefined {
    const watcher = this.#watcher;
    if (this.#report === undefined && watcher?.hookError !== undefined) {
      this.#report = (err, kind) => watcher.hookError?.(err, kind);
    }
    return this.#report;
  }

  /** The route's transaction options (see `DbSessionCtx.setTransactionOptions`). */
  setTransactionOptions(options: TransactionOptions): void {
    this.#ctx.setTransactionOptions(options);
  }

  /**
   * Run, or resume from a framework callback, the request's context, even where another
   * request's context is current (a callback parked by one request and run by another).
   */
  run<R>(fn: () => R): R {
    return storage.run(this.#ctx, fn);
  }

  /**
   * Commit or roll back from the final status and error, then release everything. Resolves to
   * `undefined` when the outcome stands, or to the error that stopped a wanted commit: the
   * adapter must then answer 500 instead of the handler's response.
   */
  end(statusCode: number, error?: unknown): Promise<unknown> {
    // Nothing was asked of the database: finish synchronously, no promise chain per request.
    if (this.#ctx.empty) {
      void this.#ctx.finish();
      return NOTHING;
    }
    return this.#end(statusCode, error);
  }

  /**
   * A second adapter install reached the same request (an Express sub-app or a Fastify child
   * scope with its own options): the inner, more specific options decide this request's outcome,
   * rather than being ignored.
   */
  useOptions(options: ContextDbOptions): void {
    this.#options = options;
    // Counted from where the request reached the inner install.
    if (options.deadline !== undefined) this.#ctx.setDeadline(options.deadline);
  }

  /** True when the request made no session, so that `end()` has nothing to commit or release. */
  get idle(): boolean {
    return this.#ctx.empty;
  }

  /** True when the calling code already runs in this request's context. */
  get current(): boolean {
    return storage.getStore() === this.#ctx;
  }

  async #end(statusCode: number, error?: unknown): Promise<unknown> {
    const { beforeCommit, commitOn } = this.#options;
    const options: FinishOptions = {
      statusCode,
      error,
      ...(beforeCommit && { beforeCommit }),
      ...(commitOn && { commitOn }),
    };
    try {
      await this.#ctx.finish(options);
      return undefined;
    } catch (err) {
      // The client went away: there is nobody to answer, and nothing to report.
      return err instanceof ClientAbortedError ? undefined : err;
    }
  }

  /**
   * The client went away (or, with `reason`, a deadline passed): cancel the statement running,
   * roll back and release at once (`DbSessionCtx.abort`). A later `end()` that would commit
   * answers `reason` (nothing for a client that is gone).
   */
  abort(reason?: Error): void {
    // 'close' fires after every response: build the error only for a context still open.
    if (!this.#ctx.finished) void this.#ctx.abort(reason ?? new ClientAbortedError());
  }

  /**
   * The handler is done and the adapter waits for its streamed body's first chunk. A request that
   * made no session has no database work running: its deadline (meant for that work) stops
   * here, so a slow body of a route without database work is not answered 503.
   */
  awaitingBody(): void {
    if (this.idle) this.#ctx.clearDeadline();
  }

  /**
   * The response is over (its 'close'): streams the committed context kept open for the body
   * (`session.stream()`) and nobody read to the end are closed, and their connections given
   * back, now rather than when the streams are collected.
   */
  responseOver(): void {
    void this.#ctx.releaseStreams();
  }

  /** True when the finished context still holds connections for open streams (see `responseOver`). */
  get retainsStreams(): boolean {
    return this.#ctx.retainsStreams;
  }
}

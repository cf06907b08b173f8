// Symbol.for() gives every copy of this module in the process the same symbol, so an error
// thrown by one copy is recognised by the other's `instanceof`.
const brand = Symbol.for('@context-db/core:ContextDbError');

/**
 * Base class of every error context-db throws. `code` is stable across versions, so callers can
 * branch on it without matching message text.
 *
 * @example
 * ```ts
 * try { await dbSession(db); } catch (err) {
 *   if (err instanceof ContextDbError && err.code === 'CONTEXT_NOT_INITIATED') { … }
 * }
 * ```
 *
 * `instanceof` works across copies of `@context-db/core` (npm can nest a second copy under an
 * adapter): an error from either copy is an instance of both copies' classes of the same name.
 */
export class ContextDbError extends Error {
  static {
    Object.defineProperty(ContextDbError.prototype, brand, { value: true });
  }

  /** The ordinary `instanceof`, which also recognises the errors of another copy of this package. */
  static override [Symbol.hasInstance](value: unknown): boolean {
    // biome-ignore lint/complexity/noThisInStatic: `this` is the class right of `instanceof`, a subclass too.
    return isInstance(this, value);
  }

  readonly code: string;
  /**
   * What went wrong in the database's or the driver's words (constraint names, hosts, sizes):
   * for logs, never for a client. The message itself is safe to show.
   */
  readonly detail: string | undefined;

  constructor(code: string, message: string, options: ContextDbErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.detail = options.detail;
  }
}

/**
 * `value instanceof cls`, or, for an error of another copy of this package (the process-wide
 * `brand` on its prototype chain), a class of the same name in its chain.
 */
function isInstance(cls: typeof ContextDbError, value: unknown): boolean {
  if (Function.prototype[Symbol.hasInstance].call(cls, value)) return true;
  if (typeof value !== 'object' || value === null || !(brand in value)) return false;
  if (cls === ContextDbError) return true;
  for (let proto: object | null = Object.getPrototypeOf(value); proto !== null; proto = Object.getPrototypeOf(proto)) {
    if (
      Object.hasOwn(proto, 'constructor') &&
      (proto as { constructor: { name?: unknown } }).constructor.name === cls.name
    ) {
      return true;
    }
  }
  return false;
}

/** The cause and the log-only detail of a ContextDbError. */
export interface ContextDbErrorOptions {
  readonly cause?: unknown;
  readonly detail?: string | undefined;
}

/** `dbSession()` and friends were called outside any context. */
export class ContextNotInitiatedError extends ContextDbError {
  constructor(what = 'dbSession()') {
    super(
      'CONTEXT_NOT_INITIATED',
      `${what} was called outside a context-db context. Call it inside a request handled by ` +
        'contextDbPlugin (Fastify) or the contextDb() middleware (Express, Koa), or wrap the code ' +
        'in runInNewCtx(fn), or use newNonCtxSession(db, fn) for a session of its own.',
    );
  }
}

/** A second context was opened where one is already running. */
export class ContextAlreadyInitiatedError extends ContextDbError {
  constructor() {
    super(
      'CONTEXT_ALREADY_INITIATED',
      'A context-db context is already open here. Check isContextInitiated() before opening one, ' +
        'or use runInNewCtx(fn) to run work in an independent context of its own.',
    );
  }
}

/** A session, or the context that owned it, was used after it was closed or finished. */
export class SessionClosedError extends ContextDbError {
  constructor(detail: string) {
    super(
      'SESSION_CLOSED',
      `${detail} A session cannot be used after its context finished or after close(). ` +
        'For work that outlives a request, start it with runInNewCtx(fn) (or ' +
        'newNonCtxSession(db, fn)) so it gets a session and a connection of its own.',
    );
  }
}

/** `atomicDbSession(db, fn, { currentTransaction: 'raise' })` found a transaction already open. */
export class TransactionAlreadyOpenError extends ContextDbError {
  constructor(
    message = 'atomicDbSession() with currentTransaction: "raise" found a transaction already open on the ' +
      'context session. Commit or roll it back first (commitDbSession / rollbackDbSession), or ' +
      'pass currentTransaction: "commit" | "rollback" | "append" | "nested".',
  ) {
    super('TRANSACTION_ALREADY_OPEN', message);
  }
}

/** What a failed COMMIT knows: why, in words, and the driver error, if any. */
export interface CommitFailureOptions {
  readonly reason?: string;
  readonly cause?: unknown;
}

function detailOf({ reason, cause }: CommitFailureOptions): string | undefined {
  return reason ?? (cause instanceof Error ? cause.message : cause === undefined ? undefined : String(cause));
}

/** `atomicDbSession()` was called inside another atomic block on the same session. */
export class NestedAtomicBlockError extends ContextDbError {
  constructor(
    message = 'atomicDbSession() was called inside another atomicDbSession() block on the same session: ' +
      "committing or rolling back here would end the outer block's transaction half-way. Pass " +
      "currentTransaction: 'nested' to run the inner block in a savepoint, call the inner code " +
      'directly to make it part of the outer block, or use runInNewCtx(fn) for a transaction of its own.',
  ) {
    super('NESTED_ATOMIC_BLOCK', message);
  }
}

/**
 * COMMIT did not make the transaction durable: PostgreSQL rejected it (a deferred constraint,
 * a serialization failure) or answered ROLLBACK because an earlier statement had already aborted
 * the transaction. The data is not in the database. The message is safe to show a client; the
 * database's own error (constraint names, values) is in `cause` and `detail`, for the logs.
 */
export class CommitFailedError extends ContextDbError {
  constructor(options: CommitFailureOptions = {}) {
    super('COMMIT_FAILED', 'COMMIT failed: the transaction was rolled back and none of its changes were saved.', {
      cause: options.cause,
      detail: detailOf(options),
    });
  }
}

/**
 * The connection was lost while COMMIT was on its way: PostgreSQL may have committed the
 * transaction or not, and nobody can tell from here. Treat it as a failure (adapters answer 500)
 * but do not assume the data is absent: make retried work idempotent, or check.
 */
export class CommitOutcomeUnknownError extends ContextDbError {
  constructor(options: CommitFailureOptions = {}) {
    super(
      'COMMIT_OUTCOME_UNKNOWN',
      'The connection to the database was lost during COMMIT: the transaction may or may not have been committed.',
      { cause: options.cause, detail: detailOf(options) },
    );
  }
}

/**
 * A `DbConnect` was used after `close()`, or a session was still waiting for one of its pool's
 * connections when it closed. Carries `statusCode` 503, which Fastify, Express and Koa use for
 * the response: the server is shutting down, and a retry will reach another instance.
 */
export class DbConnectClosedError extends ContextDbError {
  readonly statusCode = 503;
  readonly status = 503;

  constructor() {
    super(
      'DB_CONNECT_CLOSED',
      'This DbConnect was closed with close(); create a new DbConnect to talk to the database again.',
    );
  }
}

/** Options passed to a context-db function or constructor are wrong. */
export class InvalidOptionsError extends ContextDbError {
  constructor(message: string) {
    super('INVALID_OPTIONS', message);
  }
}

/**
 * No connection could be had for a session: the pool stayed full for its whole
 * `connectionTimeoutMillis`, or the server could not be reached. Carries `statusCode` 503, which
 * Fastify, Express and Koa use for the response: the request may be retried later. The message
 * is safe to show a client; pool sizes, hosts and ports are in `detail` and `cause`.
 */
export class DatabaseUnavailableError extends ContextDbError {
  readonly statusCode = 503;
  readonly status = 503;

  constructor(code: 'POOL_EXHAUSTED' | 'DATABASE_UNREACHABLE', options: ContextDbErrorOptions = {}) {
    super(
      code,
      code === 'POOL_EXHAUSTED'
        ? 'The database is busy: no connection became free in time. Try again later.'
        : 'The database cannot be reached right now. Try again later.',
      options,
    );
  }
}

/**
 * A context's deadline passed before its work was done (`setDbDeadline(ms)`, an adapter's
 * `deadline` option, Fastify's `handlerTimeout`): the statement it was running was cancelled
 * (PostgreSQL reports that as SQLSTATE 57014, kept in `sqlState`), its transaction was rolled
 * back, and nothing of it was saved. Every later use of the context's sessions fails with it, and
 * a response that would have committed becomes an error. Carries `statusCode` 503.
 */
export class DeadlineExceededError extends ContextDbError {
  readonly statusCode = 503;
  readonly status = 503;
  /** The SQLSTATE of a statement cancelled by the deadline: `query_canceled`. */
  readonly sqlState = '57014';
  /** The deadline that passed, in milliseconds. */
  readonly deadlineMs: number;

  constructor(deadlineMs: number) {
    super(
      'DEADLINE_EXCEEDED',
      `The database work did not finish within its deadline of ${deadlineMs} ms: the running statement was ` +
        'cancelled (SQLSTATE 57014) and the transaction rolled back; nothing of it was saved.',
    );
    this.deadlineMs = deadlineMs;
  }
}

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
 */
export class ContextDbError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
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
  constructor() {
    super(
      'TRANSACTION_ALREADY_OPEN',
      'atomicDbSession() with currentTransaction: "raise" found a transaction already open on the ' +
        'context session. Commit or roll it back first (commitDbSession / rollbackDbSession), or ' +
        'pass currentTransaction: "commit" | "rollback" | "append".',
    );
  }
}

/**
 * COMMIT did not make the transaction durable: PostgreSQL rejected it (a deferred constraint,
 * a serialization failure, a lost connection) or answered ROLLBACK because an earlier statement
 * had already aborted the transaction. The data is not in the database.
 */
export class CommitFailedError extends ContextDbError {
  constructor(reason: string, options?: ErrorOptions) {
    super('COMMIT_FAILED', `COMMIT failed, the transaction was rolled back: ${reason}`, options);
  }
}

/** A `DbConnect` was used after `close()`. */
export class DbConnectClosedError extends ContextDbError {
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
 * Fastify, Express and Koa use for the response: the request may be retried later.
 */
export class DatabaseUnavailableError extends ContextDbError {
  readonly statusCode = 503;
  readonly status = 503;

  constructor(code: 'POOL_EXHAUSTED' | 'DATABASE_UNREACHABLE', message: string, options?: ErrorOptions) {
    super(code, message, options);
  }
}

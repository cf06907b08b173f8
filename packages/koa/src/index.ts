import {
  type ContextDbOptions,
  createDbHelpers,
  type DbHelpers,
  RequestCtx,
  runOutsideCtx,
  validateContextDbOptions,
} from '@context-db/core';
import type { DefaultContext, DefaultState, Middleware, ParameterizedContext } from 'koa';

export type { DbHelpers } from '@context-db/core';

declare module 'koa' {
  // ExtendableContext is under every Koa context type (Context, ParameterizedContext, routers'),
  // so `ctx.db` is typed whatever state and context types the app uses.
  interface ExtendableContext {
    /** context-db helpers bound to the `db` given to `contextDb()`: `session()`, `runInNewCtx()`, … */
    db: DbHelpers;
  }
}

/** Options of `contextDb()`: the core options plus `skip`. */
export interface KoaContextDbOptions<StateT = DefaultState, ContextT = DefaultContext> extends ContextDbOptions {
  /** Requests for which it returns true run without a context (decided before routing). */
  readonly skip?: (ctx: ParameterizedContext<StateT, ContextT>) => boolean;
}

/**
 * Koa middleware that runs the rest of the request in a context-db context and ends it after
 * `await next()`, before Koa writes the response: committed when nothing threw and
 * `commitOn(ctx.status)` holds (default `< 400`), otherwise rolled back, then released. A COMMIT
 * that fails reaches Koa's error path as a 500 (not exposed); a thrown error is rethrown after the
 * rollback; a client that goes away rolls back at once. Install it before the router.
 *
 * @example
 * ```ts
 * const app = new Koa();
 * app.use(contextDb({ db: new DbConnect({ connectionString: process.env.DATABASE_URL }) }));
 * app.use(async (ctx) => {
 *   await (await ctx.db.session()).query('INSERT INTO visits DEFAULT VALUES');
 *   ctx.body = { ok: true }; // committed before this is sent
 * });
 * ```
 */
export function contextDb<StateT = DefaultState, ContextT = DefaultContext>(
  options: KoaContextDbOptions<StateT, ContextT>,
): Middleware<StateT, ContextT> {
  validateContextDbOptions(options, 'contextDb()', ['skip']);
  const helpers = createDbHelpers(options.db);
  const { skip } = options;
  return async function contextDbMiddleware(ctx, next) {
    // Set on skipped requests too: the helpers need no context, and newSession() still works.
    ctx.db = helpers;
    if (skip?.(ctx)) return next();
    const rc = RequestCtx.open(options);
    const { res } = ctx;
    // 'close' before the response finished means the client went away: release its connection
    // now rather than when the handler notices. After end() below, abort() is a no-op.
    const onClose = (): void => {
      if (!res.writableFinished) rc.abort();
    };
    res.once('close', onClose);
    try {
      try {
        await rc.run(next);
      } catch (error) {
        await rc.end(ctx.status, error);
        throw error;
      }
      // Koa sends the body (a stream included) only after the middleware chain returns, so the
      // outcome is settled before the first byte.
      const failure = await rc.end(ctx.status);
      if (failure !== undefined) throw asServerError(failure);
    } finally {
      res.off('close', onClose);
    }
  };
}

/**
 * Route middleware for `@koa/router` that runs the route outside any context-db context, although
 * `contextDb()` ran first: `dbSession()` throws `ContextNotInitiatedError` there, and
 * `ctx.db.newSession()` / `newNonCtxSession()` work. For routes that must never join the
 * request's transaction (long polls, streams, webhooks that commit on their own).
 *
 * @example
 * ```ts
 * router.post('/webhook', noContextDb(), async (ctx) => {
 *   await ctx.db.newAtomicSession((s) => s.query('INSERT INTO events DEFAULT VALUES'));
 *   ctx.status = 204;
 * });
 * ```
 */
export function noContextDb<StateT = DefaultState, ContextT = DefaultContext>(): Middleware<StateT, ContextT> {
  return function noContextDbMiddleware(_ctx, next) {
    return runOutsideCtx(next);
  };
}

// Koa's error path answers `status` and hides the message when `expose` is false; the error itself
// (CommitFailedError, or what beforeCommit threw) still reaches app.on('error') for logging.
function asServerError(failure: unknown): Error {
  const error = failure instanceof Error ? failure : new Error(String(failure));
  return Object.assign(error, { status: 500, statusCode: 500, expose: false });
}

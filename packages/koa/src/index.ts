import { type ServerResponse, validateHeaderValue } from 'node:http';
import type { Readable } from 'node:stream';
import {
  type ContextDbOptions,
  createDbHelpers,
  type DbHelpers,
  firstChunk,
  InvalidOptionsError,
  isContextInitiated,
  isStreamBody,
  RequestCtx,
  routeTransactionOptions,
  runOutsideCtx,
  type TransactionOptions,
  toReadable,
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

/** Where the rest of a request runs: its own context, or, once it opted out, outside any. */
interface Scope {
  readonly current: boolean;
  run<R>(fn: () => R): R;
}

const OUTSIDE: Scope = {
  get current() {
    return !isContextInitiated();
  },
  run: runOutsideCtx,
};

/**
 * One request's context. Its methods are what `RequestCtx` calls back (no closure per request):
 * only once the request asks for a session does it watch for the client leaving.
 */
class KoaRequest {
  readonly rc: RequestCtx;
  // Becomes OUTSIDE when noContextDb() or an inner skip opts the rest of the request out, so
  // that the dispatch below contextDb() stops re-entering the request's context.
  scope: Scope;
  /** The 'close' listener is on the response (from the first session on). */
  watching = false;

  constructor(
    readonly ctx: { readonly app: { emit(event: string, ...args: unknown[]): boolean }; readonly res: ServerResponse },
    options: ContextDbOptions,
  ) {
    this.rc = RequestCtx.open(options, this);
    this.scope = this.rc;
  }

  // A throwing onCommit / onRollback hook goes where Koa reports errors (app.on('error')), as
  // an Error of its own: Koa's default handler skips non-Errors, 404s and exposed errors.
  hookError(err: unknown, kind: string): void {
    this.ctx.app.emit('error', hookFailure(err, kind), this.ctx);
  }

  // 'close' before the response finished means the client went away: release its connection
  // now rather than when the handler notices. A client already gone refuses the session.
  sessionRequested(): void {
    const res = this.ctx.res as WatchedResponse;
    if (res.closed) {
      if (!res.writableFinished) this.rc.abort();
      return;
    }
    res[kRequest] = this;
    res.on('close', onResponseClose);
    this.watching = true;
  }

  /** The outcome is decided: a later 'close' has nothing to release. */
  unwatch(): void {
    // Streams kept open for the body are closed when the response is over, read or not.
    if (this.rc.retainsStreams) return;
    if (this.watching) this.ctx.res.off('close', onResponseClose);
    this.watching = false;
  }
}

type WatchedResponse = ServerResponse & { [kRequest]?: KoaRequest };

function onResponseClose(this: WatchedResponse): void {
  // After end() abort() is a no-op; before, the client went away.
  if (!this.writableFinished) this[kRequest]?.rc.abort();
  this[kRequest]?.rc.responseOver();
}

// The request each Koa context belongs to, so that a second contextDb() on the same request (a
// mounted app, a router) finds it instead of opening a second transaction; and whether a
// contextDb() dispatches the app's chain itself (see runBelow). Fields of the Koa context rather
// than WeakMap entries: an entry per request costs the garbage collector more than the field.
const kRequest = Symbol('context-db request');
const kDispatched = Symbol('context-db dispatched');
type TrackedCtx = { [kRequest]?: KoaRequest; [kDispatched]?: true };
// Helpers made by contextDb(): any other ctx.db is the app's own, and is not overwritten.
const ownHelpers = new WeakSet<DbHelpers>();

/**
 * Koa middleware that runs the rest of the request in a context-db context and ends it after
 * `await next()`, before Koa writes the response: committed when nothing threw and
 * `commitOn(ctx.status)` holds (default `< 400`), otherwise rolled back, then released. What Koa
 * would fail at while responding is tried first (a streamed body's first chunk, a JSON body, the
 * status message), so that such a failure rolls back. A COMMIT that fails reaches Koa's error path
 * as a 500 (not exposed); a thrown error is rethrown after the rollback; a client that goes away
 * rolls back at once. Install it before the router.
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
  options: KoaContextDbOptions<StateT, ContextT> = {},
): Middleware<StateT, ContextT> {
  validateContextDbOptions(options, 'contextDb()', ['skip']);
  const helpers = createDbHelpers(options.db);
  ownHelpers.add(helpers);
  const { skip } = options;
  const below = chainBelow();
  const contextDbMiddleware: Middleware<StateT, ContextT> = async (ctx, next) => {
    const tracked = ctx as TrackedCtx;
    const outer = tracked[kRequest];
    if (outer !== undefined) return joinRequest(ctx, next, outer, helpers, skip?.(ctx) === true, options);
    claimDb(ctx);
    // Set on skipped requests too: the helpers need no context, and newSession() still works.
    ctx.db = helpers;
    // Once the app's chain is dispatched for this request, a contextDb() reached again (this
    // same instance used on a route, below a skipping app-level install) must go on with the
    // `next` it was given: dispatching the app's chain again would recurse without end.
    const chain = tracked[kDispatched] === true ? undefined : below(ctx, contextDbMiddleware);
    if (chain !== undefined) tracked[kDispatched] = true;
    // Not registered: a skipped request has no transaction for an inner install to join.
    if (skip?.(ctx)) return runBelow(ctx, chain, next, { scope: OUTSIDE });
    const request = new KoaRequest(ctx, options);
    const { rc } = request;
    tracked[kRequest] = request;
    let held = false;
    try {
      try {
        await runBelow(ctx, chain, next, request);
      } catch (error) {
        await rc.end(ctx.status, error);
        cutIfHeadSent(ctx);
        throw error;
      }
      // A request that made no session has nothing to decide: its response is left to Koa. A
      // streamed body may still make one as it is read (a query builder's stream): decided below.
      if (rc.idle && !isStreamed(ctx.body)) {
        void rc.end(ctx.status);
        return;
      }
      if (ctx.respond !== false && !ctx.headerSent && !isStreamed(ctx.body)) {
        holdResponse(ctx, request);
        held = true;
        return;
      }
      // Reading the first chunk may start the body's query (a query builder's stream): in the
      // request's context, like the handler that made it.
      rc.awaitingBody();
      const streamError = await request.scope.run(() => streamFailure(ctx));
      if (streamError !== undefined) {
        await rc.end(ctx.status, streamError);
        // A client that went away needs no answer; its rollback is all there is to do.
        if (!ctx.writable) return;
        cutIfHeadSent(ctx);
        throw asServerError(streamError);
      }
      const failure = await rc.end(ctx.status);
      if (failure !== undefined) {
        cutIfHeadSent(ctx);
        throw asServerError(failure);
      }
    } finally {
      if (!held) request.unwatch();
    }
  };
  return contextDbMiddleware;
}

type AnyMiddleware = (ctx: unknown, next: () => Promise<unknown>) => unknown;

/**
 * Run the rest of the request in its scope. Koa has no hook between middleware, and a middleware
 * below that parks `next` as a callback (a queue, a rate limiter) and is resumed from another
 * request's code would run everything after it in that other request's context. So when
 * contextDb() is installed on the app itself, it dispatches the app's middleware below it as
 * koa-compose does, re-entering the request's scope at every middleware and every `next()`.
 * Elsewhere (a router, a mounted app, an app with its own `compose` option) only the `next` given
 * to it can be wrapped; a second contextDb() below a gate is another re-entry point.
 */
function runBelow(
  ctx: object,
  chain: readonly AnyMiddleware[] | undefined,
  next: () => Promise<unknown>,
  request: { readonly scope: Scope },
): Promise<unknown> {
  if (chain === undefined) return request.scope.run(next);
  let last = -1;
  const dispatch = (i: number): Promise<unknown> => {
    if (i <= last) return Promise.reject(new Error('next() called multiple times'));
    last = i;
    const fn = chain[i];
    // The end of the app's chain: Koa's own final next() does nothing either.
    if (fn === undefined) return Promise.resolve();
    const resume = (): Promise<unknown> => dispatch(i + 1);
    // Read at every step: noContextDb() may have opted the request out since the last one.
    const { scope } = request;
    try {
      return Promise.resolve(scope.current ? fn(ctx, resume) : scope.run(() => fn(ctx, resume)));
    } catch (error) {
      return Promise.reject(error);
    }
  };
  return dispatch(0);
}

/**
 * For one contextDb() middleware: the app's middleware below it, or undefined where it cannot
 * dispatch them itself. Remembered per app chain and length, since apps only append to it.
 */
function chainBelow(): (ctx: object, self: unknown) => readonly AnyMiddleware[] | undefined {
  let seen: readonly AnyMiddleware[] | undefined;
  let seenLength = -1;
  let below: readonly AnyMiddleware[] | undefined;
  return (ctx, self) => {
    const chain = appChain((ctx as { app?: object }).app);
    if (chain === undefined) return undefined;
    if (chain !== seen || chain.length !== seenLength) {
      seen = chain;
      seenLength = chain.length;
      const start = chain.indexOf(self as AnyMiddleware) + 1;
      // Not found, or installed twice on the app: which copy this is cannot be told.
      below = start === 0 || chain.indexOf(self as AnyMiddleware, start) !== -1 ? undefined : chain.slice(start);
    }
    return below;
  };
}

// Koa composes `app.middleware` with koa-compose unless the app was given its own `compose`
// (Koa 3), whose wrapping contextDb() must not bypass.
function appChain(app: object | undefined): readonly AnyMiddleware[] | undefined {
  const { middleware, compose } = (app ?? {}) as { middleware?: unknown; compose?: { name?: string } };
  if (!Array.isArray(middleware)) return undefined;
  return compose === undefined || compose.name === 'compose' ? (middleware as AnyMiddleware[]) : undefined;
}

/**
 * A second contextDb() on a request that already has one (a mounted Koa app, a router-level
 * install). One request keeps one transaction, and the nearer install's options decide its
 * outcome: the inner app or router was given them for its own routes, and ignoring them would
 * silently commit what it meant to roll back. Its `db` is the default of `ctx.db` below it.
 */
async function joinRequest<StateT, ContextT>(
  ctx: ParameterizedContext<StateT, ContextT>,
  next: () => Promise<unknown>,
  request: KoaRequest,
  helpers: DbHelpers,
  skipped: boolean,
  options: ContextDbOptions,
): Promise<void> {
  const previous = ctx.db;
  ctx.db = helpers;
  try {
    if (skipped) {
      await optOut(ctx, next);
      return;
    }
    request.rc.useOptions(options);
    // A middleware between the two installs may have parked the request and been resumed from
    // another request's callback: re-enter this request's scope for everything below.
    const { scope } = request;
    await (scope.current ? next() : scope.run(next));
  } finally {
    ctx.db = previous;
  }
}

// `ctx.db` may already be the app's own (`app.context.db`, or set by an earlier middleware).
// Koa middleware cannot see the app when it is made, so this is checked on the request, before
// anything runs, and every request fails loudly until the clash is fixed.
function claimDb(ctx: object): void {
  const existing = (ctx as { db?: unknown }).db;
  if (existing !== undefined && !ownHelpers.has(existing as DbHelpers)) {
    throw new InvalidOptionsError(
      'contextDb(): ctx.db is already taken (by app.context.db or an earlier middleware), and ' +
        'contextDb() will not overwrite it. Rename the app’s own property, or remove it and use ' +
        'the ctx.db helpers of contextDb().',
    );
  }
}

// Koa answers these without a body, and a HEAD without reading it.
const EMPTY_STATUSES = new Set([204, 205, 304]);

// A Response body is a stream to Koa too: it sends the Response's body.
function isStreamed(body: unknown): boolean {
  return body instanceof Response || isStreamBody(body);
}

/**
 * A streamed body that fails before its first chunk (a missing file, a generator that throws):
 * Koa pipes it only after the chain returns, so without this wait it would error with nobody
 * listening while COMMIT runs. Nothing is consumed.
 */
async function streamFailure<StateT, ContextT>(ctx: ParameterizedContext<StateT, ContextT>): Promise<unknown> {
  const { body } = ctx;
  if (ctx.respond === false || ctx.method === 'HEAD' || EMPTY_STATUSES.has(ctx.status)) return undefined;
  try {
    const stream = toReadable(body instanceof Response ? body.body : body);
    if (stream !== undefined) await firstChunk(stream === body ? stream : replaceBody(ctx, stream));
    return undefined;
  } catch (error) {
    return error;
  }
}

type Method = (...args: unknown[]) => unknown;

/**
 * Decide when Koa actually responds rather than when the chain below returns: the middleware
 * above contextDb() still runs (a serialiser, an envelope) and Koa serialises the body it leaves
 * (JSON.stringify, the length of a HEAD) only in respond(). Whatever fails there goes to Koa's
 * ctx.onerror, whose 500 reaches this hold as the status that rolls back; a body Koa sends
 * commits first. The response's first write, end or head is held until the outcome is known, and
 * a failed COMMIT becomes Koa's own 500 instead.
 */
function holdResponse<StateT, ContextT>(ctx: ParameterizedContext<StateT, ContextT>, request: KoaRequest): void {
  const { res } = ctx;
  (res as HeldResponse)[kHold] = new ResponseHold(ctx, request);
  res.writeHead = heldWriteHead as unknown as ServerResponse['writeHead'];
  res.write = heldWrite as unknown as ServerResponse['write'];
  res.end = heldEnd as unknown as ServerResponse['end'];
  res.flushHeaders = heldFlushHeaders as unknown as ServerResponse['flushHeaders'];
}

type HoldCtx = Pick<ParameterizedContext, 'req' | 'res' | 'onerror' | 'headerSent'>;

/** A held response's state; the methods installed on the response are shared by all (below). */
class ResponseHold {
  readonly original: { readonly [M in 'writeHead' | 'write' | 'end' | 'flushHeaders']: Method };
  // 'holding': nothing written yet; 'deciding': RequestCtx.end() runs and calls are queued;
  // 'through': the outcome stands; 'replaced': a 500 was sent instead, the app's calls dropped.
  phase: 'holding' | 'deciding' | 'through' | 'replaced' = 'holding';
  #queue: Array<{ method: Method; args: unknown[] }> = [];

  constructor(
    readonly ctx: HoldCtx,
    readonly request: KoaRequest,
  ) {
    const { res } = ctx;
    this.original = {
      writeHead: res.writeHead as Method,
      write: res.write as Method,
      end: res.end as Method,
      flushHeaders: res.flushHeaders as Method,
    };
  }

  hold(method: Method, args: unknown[]): boolean {
    const { res } = this.ctx;
    if (this.phase === 'through') return method.apply(res, args) !== false;
    if (this.phase === 'replaced') return true;
    if (this.phase === 'holding') {
      // Node would refuse the status line in this call; it must fail here, before any COMMIT,
      // so that Koa's error path answers 500 and this hold sees it.
      if (!res.headersSent && this.ctx.req.httpVersionMajor < 2 && res.statusMessage) {
        validateHeaderValue('statusMessage', res.statusMessage);
      }
      this.phase = 'deciding';
      // A replayed call Node refuses after the commit can only be reported, as Koa would.
      this.#decide().catch((error: unknown) => this.ctx.onerror(asServerError(error)));
    }
    this.#queue.push({ method, args });
    // Buffered here until the decision; a body Koa sends is already whole in memory.
    return true;
  }

  async #decide(): Promise<void> {
    const { ctx } = this;
    const failure = await this.request.rc.end(ctx.res.statusCode);
    this.request.unwatch();
    const queue = this.#queue;
    this.#queue = [];
    this.phase = 'through';
    if (failure === undefined) {
      for (const { method, args } of queue) method.apply(ctx.res, args);
      return;
    }
    // Koa's own error answer: app.emit('error'), the handler's headers dropped, a bare 500; with
    // a head the app fixed already it can only report, so the response is cut.
    ctx.onerror(asServerError(failure));
    this.phase = 'replaced';
    cutIfHeadSent(ctx);
  }
}

const kHold = Symbol('context-db response hold');
type HeldResponse = ServerResponse & { [kHold]: ResponseHold };

// The held response's methods, the same functions for every request: each finds its request's
// hold on the response it is called on.
function heldWriteHead(this: HeldResponse, ...args: unknown[]): ServerResponse {
  const hold = this[kHold];
  // Stores the head without sending a byte (and throws on a bad status line, before a COMMIT).
  if (hold.phase === 'replaced') return this;
  return hold.original.writeHead.apply(this, args) as ServerResponse;
}

function heldWrite(this: HeldResponse, ...args: unknown[]): boolean {
  const hold = this[kHold];
  return hold.hold(hold.original.write, args);
}

function heldEnd(this: HeldResponse, ...args: unknown[]): ServerResponse {
  const hold = this[kHold];
  hold.hold(hold.original.end, args);
  return this;
}

function heldFlushHeaders(this: HeldResponse, ...args: unknown[]): void {
  const hold = this[kHold];
  hold.hold(hold.original.flushHeaders, args);
}

// Reading a wrapped stream's first chunk consumes the original (a web stream, a minipass), so
// Koa is given the Node stream that read it.
function replaceBody<StateT, ContextT>(ctx: ParameterizedContext<StateT, ContextT>, stream: Readable): Readable {
  // Koa's body setter drops Content-Length when it replaces a body; the length still holds.
  const length = ctx.res.getHeader('Content-Length');
  ctx.body = stream;
  if (length !== undefined) ctx.res.setHeader('Content-Length', length);
  return stream;
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
  return function noContextDbMiddleware(ctx, next) {
    return optOut(ctx, next);
  };
}

/**
 * Route middleware that sets the transaction options of the request's sessions (over the
 * `DbConnect`'s defaults): isolation level, read-only, timeouts. Place it after `contextDb()` and
 * before the handler, ahead of any query; the options are checked when the route is declared.
 *
 * @example
 * ```ts
 * router.get('/report', transactionOptions({ isolationLevel: 'repeatable read', readOnly: true }), async (ctx) => {
 *   ctx.body = (await (await ctx.db.session()).query('SELECT count(*) FROM orders')).rows;
 * });
 * ```
 */
export function transactionOptions<StateT = DefaultState, ContextT = DefaultContext>(
  options: TransactionOptions,
): Middleware<StateT, ContextT> {
  const apply = routeTransactionOptions(options, 'transactionOptions()');
  return function transactionOptionsMiddleware(ctx, next) {
    // A request skip() or noContextDb() keeps outside has no transaction to set options for.
    const { [kRequest]: request, [kDispatched]: dispatched } = ctx as TrackedCtx;
    const outside = request === undefined ? dispatched === true : request.scope === OUTSIDE;
    if (!outside) apply();
    return next();
  };
}

function hookFailure(err: unknown, kind: string): Error {
  const message = err instanceof Error ? err.message : String(err);
  return new Error(`context-db: an ${kind} hook threw (the transaction's outcome stands): ${message}`, { cause: err });
}

// Marks the request too: contextDb()'s dispatch of the app's chain would otherwise re-enter the
// request's context at the next middleware.
function optOut(ctx: object, next: () => Promise<unknown>): Promise<unknown> {
  const request = (ctx as TrackedCtx)[kRequest];
  if (request !== undefined) request.scope = OUTSIDE;
  return runOutsideCtx(next);
}

// Koa's error path cannot change a status the handler already wrote (ctx.res.writeHead), and
// leaves such a response open, so the client would wait for a body that never comes: cut it, so
// that rolled-back work never completes as the 2xx in its head.
function cutIfHeadSent(ctx: { readonly headerSent: boolean; readonly res: ServerResponse }): void {
  if (ctx.headerSent && !ctx.res.writableEnded) ctx.res.destroy();
}

// Koa's error path answers `status` and hides the message when `expose` is false; the error itself
// (CommitFailedError, or what beforeCommit threw) still reaches app.on('error') for logging.
function asServerError(failure: unknown): Error {
  const error = failure instanceof Error ? failure : new Error(String(failure));
  return Object.assign(error, { status: 500, statusCode: 500, expose: false });
}

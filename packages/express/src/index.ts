import { AsyncResource } from 'node:async_hooks';
import { IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import {
  type ContextDbOptions,
  createDbHelpers,
  type DbHelpers,
  isContextInitiated,
  RequestCtx,
  routeTransactionOptions,
  runOutsideCtx,
  type TransactionOptions,
  validateContextDbOptions,
} from '@context-db/core';
import type { ErrorRequestHandler, NextFunction, Request, RequestHandler, Response } from 'express';

declare global {
  namespace Express {
    interface Request {
      /** context-db helpers bound to the `db` given to `contextDb()`: `req.db.session()` and friends. */
      db: DbHelpers;
    }
  }
}

/** Options of `contextDb()`: core's adapter options plus `skip`. */
export interface ContextDbExpressOptions extends ContextDbOptions {
  /** Return true to run a request without a context: nothing is held back, no session is made. */
  readonly skip?: (req: Request) => boolean;
}

type Method = (...args: unknown[]) => unknown;

// Where a request's response stands. 'open': the app has not started it. 'deciding': the app
// wrote or ended it and RequestCtx.end() runs; the app's calls are queued. 'through': the
// outcome stands (or the route opted out), calls go straight to Node. 'replaced': a commit
// failed (or an error rolled back under a success head the app had fixed) and a 500 was sent or
// the connection cut instead; the app's calls are dropped.
type Phase = 'open' | 'deciding' | 'through' | 'replaced';

// Where the rest of a request runs, found on the request itself (a property load, where a
// WeakMap would cost every Express app in the process a hash lookup per layer).
const kScope = Symbol('contextDb.scope');
type ScopedRequest = Request & { [kScope]?: Scope };

interface Scope {
  /** The request's layers run as they are called: its context (or, outside, none) is current. */
  isCurrent(): boolean;
  /** Run one layer or param callback of the request, with a `next` that resumes the request there. */
  around<R>(next: NextFunction, call: (next: NextFunction) => R): R;
  /** An error reached the request's error-handling layers: it rolls the request back. */
  fail(err: unknown): void;
}

/**
 * An opted-out request runs its layers outside any context, even when another request's code
 * calls its parked `next`: it must not find that request's sessions.
 */
function outside(): Scope {
  const exit = (next: NextFunction) => ((err?: unknown) => leaveCtx(() => next(err))) as NextFunction;
  return {
    isCurrent: () => !isContextInitiated(),
    around: (next, call) => leaveCtx(() => call(exit(next))),
    fail() {},
  };
}

// Usually no context is current (the request was not resumed by another one): on Node 20,
// leaving one costs about a microsecond (AsyncLocalStorage.exit toggles its async hook).
function leaveCtx<R>(fn: () => R): R {
  return isContextInitiated() ? runOutsideCtx(fn) : fn();
}
// skip(req): a contextDb() nested below may still open a context with its own options.
const SKIPPED = outside();
// noContextDb(): the rest of the request stays outside.
const OPTED_OUT = outside();

// The request's link, for the methods shared by every held response and request: a field of the
// response or request rather than a closure per request.
const kLink = Symbol('contextDb.link');
type Linked<T> = T & { [kLink]?: RequestLink };

/**
 * One request's context and the hold on its response until the commit-or-rollback decision.
 * The hold and the watch for a client leaving start with the request's first session
 * (`sessionRequested`): a request that never makes one has nothing to hold back or release.
 */
class RequestLink implements Scope {
  #error: unknown; // the first error that reached the error-handling layers
  readonly #req: Request;
  readonly #res: Response;
  readonly #rc: RequestCtx;
  readonly #emit: Method;
  readonly #inside: AsyncResource;
  // Node's (or earlier wrappers') methods, as they were when the hold started.
  #write: Method = noMethod;
  #end: Method = noMethod;
  #flushHeaders: Method = noMethod;
  #writeHead: Method = noMethod;
  #phase: Phase = 'open';
  #appEnded = false;
  #optedOut = false;
  #fixedStatus: number | undefined; // the status of a head the app fixed with res.writeHead()
  #beforeHead: HeadState | undefined; // Node's state of the response before a head was stored
  #starved = false; // a held write returned false: the writer waits for 'drain'
  #queue: Array<{ method: Method; args: unknown[] }> = [];

  constructor(req: Request, res: Response, options: ContextDbOptions) {
    this.#req = req;
    this.#res = res;
    this.#rc = RequestCtx.open(options, this);
    // Stream events of req (body parsers, multipart parsers, any req.on('end', next)) are
    // emitted from the socket's callbacks, whose async context is the connection's, not this
    // request's: emit them inside the request's context so a next() called there still finds it
    // (and can make the request's first session there).
    this.#inside = new AsyncResource('contextDb.request');
    this.#emit = req.emit as Method;
    (req as Linked<Request>)[kLink] = this;
    req.emit = emitInRequestScope as Request['emit'];
  }

  /** Run the request's context (see `RequestCtx.run`). */
  run<R>(fn: () => R): R {
    return this.#rc.run(fn);
  }

  emit(req: Request, args: unknown[]): unknown {
    return this.#optedOut ? this.#emit.apply(req, args) : this.#inside.runInAsyncScope(this.#emit, req, ...args);
  }

  /**
   * Called by the request's context before its first session is made: hold the response from
   * now on, and roll back at once when the client goes away. What the response did before is
   * read from it as it is.
   */
  sessionRequested(): void {
    const res = this.#res as Linked<Response>;
    const sent = res as unknown as { _headerSent: boolean };
    if (sent._headerSent || res.writableEnded) {
      // The response is under way: as for a write while nothing was held, the outcome stands and
      // the context ends here, so the session is refused.
      this.#phase = 'through';
      void this.#rc.end(this.#status(), this.#error);
      return;
    }
    if (res.closed) {
      // The client went away before anything asked for a session: refuse it.
      this.#rc.abort();
      return;
    }
    // A head stored by writeHead() with no byte sent: its status decides the outcome.
    if (res.headersSent) this.#fixedStatus = res.statusCode;
    // The methods as they are now, so middleware that wrapped them (compression) still runs.
    this.#write = res.write as Method;
    this.#end = res.end as Method;
    this.#flushHeaders = res.flushHeaders as Method;
    this.#writeHead = res.writeHead as Method;
    res[kLink] = this;
    res.write = heldWrite as Response['write'];
    res.end = heldEnd as Response['end'];
    res.flushHeaders = heldFlushHeaders;
    res.writeHead = heldWriteHead as Response['writeHead'];
    // After a normal end the abort is a no-op (the context is finished already).
    res.on('close', abortOnClose);
  }

  write(args: unknown[]): boolean {
    return this.#hold(this.#write, args, true);
  }

  end(args: unknown[]): void {
    this.#hold(this.#end, args, false);
    this.#appEnded = true;
  }

  flushHeaders(args: unknown[]): void {
    this.#hold(this.#flushHeaders, args, false);
  }

  // Node stores the head at writeHead() (res.headersSent turns true) though no byte is sent
  // before the first write, which the hold keeps back: from then on a res.status() no longer
  // reaches the client, so the status of that head is what decides the outcome.
  writeHead(args: unknown[]): void {
    const res = this.#res;
    // The app wrote or ended its response already, so unheld Node would have sent its head: a
    // later head (an error handler's) must not replace the one the outcome was decided on.
    if (this.#phase === 'deciding') return;
    if (!res.headersSent) this.#beforeHead = headState(res);
    this.#writeHead.apply(res, args);
    if (this.#phase === 'open' && res.headersSent) this.#fixedStatus = res.statusCode;
  }

  /** The client went away (or the response was destroyed). */
  abort(): void {
    this.#rc.abort();
  }

  responseOver(): void {
    this.#rc.responseOver();
  }

  /** Options of a contextDb() nested under the one that opened the context (a sub-app's). */
  useOptions(options: ContextDbOptions): void {
    this.#rc.useOptions(options);
  }

  isCurrent(): boolean {
    return this.#rc.current;
  }

  // Called only when the context is not current (another request's code resumed this one): a
  // layer that runs in it needs no new next, as the next layer re-enters by itself.
  around<R>(next: NextFunction, call: (next: NextFunction) => R): R {
    const resume = ((err?: unknown) => (this.#optedOut ? next(err) : this.#enter(() => next(err)))) as NextFunction;
    return this.#rc.run(() => call(resume));
  }

  fail(err: unknown): void {
    this.#error ??= err;
  }

  #enter<R>(fn: () => R): R {
    return this.#rc.current ? fn() : this.#rc.run(fn);
  }

  /** noContextDb(): finish the context now and run the rest of the request outside it. */
  optOut(next: NextFunction): void {
    if (this.#phase !== 'open') {
      next(); // the response has started: too late to leave the context
      return;
    }
    this.#phase = 'through';
    this.#optedOut = true;
    (this.#req as ScopedRequest)[kScope] = OPTED_OUT;
    void this.#rc.end(this.#status(), this.#error).then((failure: unknown) => {
      if (failure === undefined) runOutsideCtx(next);
      else runOutsideCtx(() => next(failure));
    });
  }

  #hold(method: Method, args: unknown[], isWrite: boolean): boolean {
    if (this.#phase === 'through') return method.apply(this.#res, args) !== false;
    if (this.#phase === 'replaced' || this.#appEnded) return drop(args);
    if (this.#phase === 'open' && this.#rc.idle) {
      // No session was made: nothing to commit, so nothing to hold back.
      this.#phase = 'through';
      void this.#rc.end(this.#status(), this.#error);
      return method.apply(this.#res, args) !== false;
    }
    this.#queue.push({ method, args });
    if (this.#phase === 'open') {
      this.#phase = 'deciding';
      void this.#decide();
    }
    // Backpressure: the writer waits for 'drain', emitted once the held writes are released.
    if (isWrite) this.#starved = true;
    return !isWrite;
  }

  /** The status the client gets: that of a head fixed by writeHead(), else the current one. */
  #status(): number {
    return this.#fixedStatus ?? this.#res.statusCode;
  }

  async #decide(): Promise<void> {
    const res = this.#res;
    const head = { statusCode: this.#status(), statusMessage: res.statusMessage, headers: res.getHeaders() };
    const failure = await this.#rc.end(head.statusCode, this.#error);
    const queue = this.#queue;
    this.#queue = [];
    const replaced = failure !== undefined || this.#errorUnderSuccessHead();
    this.#phase = replaced ? 'replaced' : 'through';
    try {
      if (replaced) this.#replace(queue, failure);
      else this.#release(queue, head);
    } catch (err) {
      // Node threw on one of the app's own calls (a bad argument to res.end, say). Had the
      // response not been held, the handler would have seen it; now nobody can answer it.
      report(this.#req, err);
      res.destroy();
    }
  }

  // An error rolled the request back, but the head the app fixed before the error says
  // success: the error handler's own status cannot reach the client.
  #errorUnderSuccessHead(): boolean {
    return this.#error !== undefined && this.#fixedStatus !== undefined && this.#fixedStatus < 400;
  }

  /** The outcome stands: send the response as the app made it. */
  #release(queue: Array<{ method: Method; args: unknown[] }>, head: Head): void {
    const res = this.#res;
    if (res.destroyed) return;
    // What goes out is the response as it was when the app ended it: a later header change (a
    // second res.json(), Express's error handler after a res.json()) would not match its body.
    if (!res.headersSent && headChanged(res, head)) restoreHead(res, head);
    for (const { method, args } of queue) method.apply(res, args);
    if (this.#starved && !res.writableEnded && !res.writableNeedDrain) res.emit('drain');
  }

  /**
   * A wanted commit failed (or an error rolled back under a success head): a 500 instead of the
   * app's response, whose calls are dropped.
   */
  #replace(queue: Array<{ method: Method; args: unknown[] }>, failure: unknown): void {
    const res = this.#res;
    for (const { args } of queue) drop(args);
    if (failure !== undefined) report(this.#req, failure);
    if (res.destroyed) return;
    if (res.headersSent && !forgetStoredHead(res, this.#beforeHead)) {
      // The head is on the wire: cut the connection rather than let a success whose data is
      // not in the database reach the client.
      res.destroy();
      return;
    }
    for (const name of res.getHeaderNames()) res.removeHeader(name);
    const body = 'Internal Server Error';
    res.statusCode = 500;
    res.statusMessage = body;
    res.setHeader('Content-Type', 'text/plain; charset=utf-8');
    res.setHeader('Content-Length', Buffer.byteLength(body));
    this.#end.call(res, body);
    if (this.#starved) res.emit('drain'); // wake a waiting writer; its writes are dropped
  }
}

const noMethod: Method = () => undefined;

// The held response's methods, the same functions for every request: each finds its request's
// link on the response it is called on.
function heldWrite(this: Linked<Response>, ...args: unknown[]): boolean {
  const link = this[kLink];
  return link === undefined
    ? (Object.getPrototypeOf(this).write as Method).apply(this, args) !== false
    : link.write(args);
}

function heldEnd(this: Linked<Response>, ...args: unknown[]): Response {
  const link = this[kLink];
  if (link === undefined) (Object.getPrototypeOf(this).end as Method).apply(this, args);
  else link.end(args);
  return this;
}

function heldFlushHeaders(this: Linked<Response>, ...args: unknown[]): void {
  const link = this[kLink];
  if (link === undefined) (Object.getPrototypeOf(this).flushHeaders as Method).apply(this, args);
  else link.flushHeaders(args);
}

function heldWriteHead(this: Linked<Response>, ...args: unknown[]): Response {
  const link = this[kLink];
  if (link === undefined) (Object.getPrototypeOf(this).writeHead as Method).apply(this, args);
  else link.writeHead(args);
  return this;
}

function abortOnClose(this: Linked<Response>): void {
  this[kLink]?.abort();
  this[kLink]?.responseOver();
}

function emitInRequestScope(this: Linked<Request>, ...args: unknown[]): unknown {
  const link = this[kLink];
  return link === undefined ? (Object.getPrototypeOf(this).emit as Method).apply(this, args) : link.emit(this, args);
}

interface Head {
  readonly statusCode: number;
  readonly statusMessage: string;
  readonly headers: OutgoingHttpHeaders;
}

function headChanged(res: Response, head: Head): boolean {
  if (res.statusCode !== head.statusCode || res.statusMessage !== head.statusMessage) return true;
  const names = res.getHeaderNames();
  if (names.length !== Object.keys(head.headers).length) return true;
  return names.some((name) => res.getHeader(name) !== head.headers[name]);
}

// What Node's writeHead() changes on the response besides the head itself: a 204, 304 or 1xx
// head clears _hasBody (a 500 stored after it would promise a body Node never writes, and a
// keep-alive client would wait for it), the head's Connection, Content-Length and
// Transfer-Encoding set the framing fields.
const HEAD_STATE = [
  '_hasBody',
  '_last',
  'shouldKeepAlive',
  'chunkedEncoding',
  '_contentLength',
  '_removedConnection',
  '_removedContLen',
  '_removedTE',
] as const;
type HeadState = Partial<Record<(typeof HEAD_STATE)[number], unknown>>;

function headState(res: Response): HeadState {
  const out = res as unknown as HeadState;
  const state: HeadState = {};
  for (const key of HEAD_STATE) state[key] = out[key];
  return state;
}

// res.writeHead() (an explicit one, or _implicitHeader() called by compression-like middleware
// before passing the body on) only stores the head: Node sends it with the first write, which
// the hold kept back. Forgetting the stored head, and what storing it changed, lets the 500
// take its place.
function forgetStoredHead(res: Response, before: HeadState | undefined): boolean {
  const out = res as unknown as HeadState & { _header: string | null; _headerSent: boolean };
  if (out._headerSent) return false;
  if (before !== undefined) Object.assign(out, before);
  else {
    // The head was stored past the writeHead() seen by contextDb(): undo what matters most.
    out.chunkedEncoding = false;
    out._hasBody = res.req.method !== 'HEAD';
  }
  out._header = null;
  return true;
}

function restoreHead(res: Response, head: Head): void {
  for (const name of res.getHeaderNames()) if (!(name in head.headers)) res.removeHeader(name);
  for (const [name, value] of Object.entries(head.headers)) if (value !== undefined) res.setHeader(name, value);
  res.statusCode = head.statusCode;
  res.statusMessage = head.statusMessage;
}

// A write or end after the response was ended or replaced: like Node, tell its callback.
function drop(args: unknown[]): boolean {
  const callback = args.findLast((arg) => typeof arg === 'function') as ((err: Error) => void) | undefined;
  if (callback)
    process.nextTick(callback, new Error('context-db: the response was already ended; this call was ignored.'));
  return true;
}

function report(req: Request, err: unknown): void {
  // As Express's own final handler does: log to stderr unless the app runs in the test env.
  if (req.app?.get('env') !== 'test') console.error(err instanceof Error ? (err.stack ?? err.message) : err);
}

// Express has no hook between layers, and a next() parked by one request's middleware or param
// callback (a gate, a queue, a rate limiter, a session store's callback) may be called from
// another request's code: every later layer of the parked request would then run in the other
// request's context and use its session. The router calls each layer through the methods of its
// Layer class (handleRequest/handleError in Express 5's router package, handle_request/
// handle_error in Express 4), and each param callback from its router's `params` lists, so
// wrapping those puts every layer and param callback of a request back in its scope (its context,
// or outside any for an opted-out request), with a next() that resumes it there. A request
// without contextDb() pays one property load per layer.
type HandleRequest = (this: unknown, req: Request, res: Response, next: NextFunction) => unknown;
type HandleError = (this: unknown, err: unknown, req: Request, res: Response, next: NextFunction) => unknown;
type HandleParam = (
  this: unknown,
  req: Request,
  res: Response,
  next: NextFunction,
  value: unknown,
  name: string,
) => unknown;
const wrappedLayerClasses = new WeakSet<object>();
const wrappedParamMethods = new WeakSet<object>();
const wrappedParams = new WeakSet<HandleParam>();
const wrappedRouterClasses = new WeakSet<object>();
const visitedApps = new WeakSet<object>();
const kParamsWrapped = Symbol('contextDb.paramsWrapped');
type ParamsRouter = Router & { [kParamsWrapped]?: boolean };

/** Wrap the Layer class and the param callbacks of every router reachable from `app`, once. */
function resumeLayersInContext(app: unknown): void {
  if (typeof app !== 'function' || visitedApps.has(app)) return;
  visitedApps.add(app);
  // Express 4 keeps its router in app._router (its app.router getter throws), Express 5 in app.router.
  const router = '_router' in app ? (app as { _router?: Router })._router : (app as { router?: Router }).router;
  wrapRouter(router, new Set());
}

// A sub-app's layers may come from another copy of Express (an Express 4 app mounted in an
// Express 5 one): its Layer class is out of reach until a request enters it, and its first
// layers do not pass through a wrapped one. Every router of either major assigns req.params
// before it calls a layer (after the sub-app has switched req.app): for a request with a
// scope, that assignment looks at the app the request is in, and wraps it before its layer runs.
const kParams = Symbol('contextDb.params');
const kApp = Symbol('contextDb.app');
type WatchedRequest = Request & { [kParams]?: unknown; [kApp]?: unknown };
const paramsProperty: PropertyDescriptor = {
  configurable: true,
  enumerable: true,
  get(this: WatchedRequest) {
    return this[kParams];
  },
  set(this: WatchedRequest, value: unknown) {
    this[kParams] = value;
    // A request contextDb() has not reached (yet): nothing to watch.
    if ((this as ScopedRequest)[kScope] === undefined) return;
    const app = this.app;
    if (app !== this[kApp]) {
      this[kApp] = app;
      resumeLayersInContext(app);
    }
  },
};

// The accessor goes once on the topmost Express prototype of the request (that of its Express
// copy, which every app of that copy, mounted ones included, inherits) rather than on each
// request: defining a property on an object per request is slow, and makes later property
// accesses on it slower too.
const watchedPrototypes = new WeakSet<object>();

function watchApps(req: Request): void {
  const watched = req as WatchedRequest;
  watched[kApp] = req.app;
  // Assigned through the accessor already: nothing more to do.
  if (!Object.hasOwn(req, 'params')) return;
  // The first request of an Express copy (its params were assigned before the accessor existed),
  // or a request whose prototype chain has no room for it: watch this request by itself.
  watched[kParams] = req.params;
  Object.defineProperty(req, 'params', paramsProperty);
  const base = expressBase(req);
  if (base !== undefined && !watchedPrototypes.has(base)) {
    watchedPrototypes.add(base);
    Object.defineProperty(base, 'params', paramsProperty);
  }
}

/** The prototype just above Node's IncomingMessage in the request's chain, if it has one. */
function expressBase(req: Request): object | undefined {
  let at: object | null = Object.getPrototypeOf(req) as object | null;
  while (at !== null) {
    const above = Object.getPrototypeOf(at) as object | null;
    if (above === IncomingMessage.prototype) return Object.hasOwn(at, 'params') ? undefined : at;
    at = above;
  }
  return undefined;
}

interface Router {
  readonly stack?: unknown;
  readonly params?: unknown;
}

function wrapRouter(router: Router | undefined, seen: Set<unknown>): void {
  if (router === undefined || !Array.isArray(router.stack) || seen.has(router)) return;
  seen.add(router);
  wrapParams(router);
  wrapRouterClass(router);
  for (const layer of router.stack as Array<{ route?: Router; handle?: Router }>) {
    wrapLayerClass(Object.getPrototypeOf(layer) as Record<string, unknown>);
    wrapRouter(layer.route, seen); // a route's handlers
    wrapRouter(layer.handle, seen); // a nested Router, possibly from another copy of the router
  }
}

function wrapLayerClass(proto: Record<string, unknown>): void {
  if (wrappedLayerClasses.has(proto)) return;
  wrappedLayerClasses.add(proto);
  for (const name of ['handleRequest', 'handle_request']) {
    const handle = proto[name] as HandleRequest | undefined;
    if (typeof handle !== 'function') continue;
    proto[name] = function handleInRequestScope(this: unknown, req: Request, res: Response, next: NextFunction) {
      const scope = (req as ScopedRequest)[kScope];
      if (scope === undefined || scope.isCurrent()) return handle.call(this, req, res, next);
      return scope.around(next, (resume) => handle.call(this, req, res, resume));
    };
  }
  for (const name of ['handleError', 'handle_error']) {
    const handle = proto[name] as HandleError | undefined;
    if (typeof handle !== 'function') continue;
    proto[name] = function handleErrorInRequestScope(
      this: unknown,
      err: unknown,
      req: Request,
      res: Response,
      next: NextFunction,
    ) {
      const scope = (req as ScopedRequest)[kScope];
      if (scope === undefined) return handle.call(this, err, req, res, next);
      // Every error on its way through the layers passes here, whether or not an error handler
      // then answers with a success status: it rolls the request back.
      scope.fail(err);
      if (scope.isCurrent()) return handle.call(this, err, req, res, next);
      return scope.around(next, (resume) => handle.call(this, err, req, res, resume));
    };
  }
}

// A router can be mounted after the first request walked its app (a plugin, a feature flag),
// with param callbacks registered before: its class's handle() wraps them when a request with
// a scope first enters it.
function wrapRouterClass(router: Router): void {
  if (typeof router.params !== 'object') return; // a Route: its layers are walked, it has no params
  let owner: object | null = router;
  while (owner !== null && !Object.hasOwn(owner, 'handle')) owner = Object.getPrototypeOf(owner) as object | null;
  if (owner === null || wrappedRouterClasses.has(owner)) return;
  wrappedRouterClasses.add(owner);
  const handle = (owner as { handle: Method }).handle;
  if (typeof handle !== 'function') return;
  (owner as { handle: Method }).handle = function handleWithParamsInScope(
    this: Router,
    req: unknown,
    ...rest: unknown[]
  ) {
    if ((req as ScopedRequest)[kScope] !== undefined && !(this as ParamsRouter)[kParamsWrapped]) wrapParams(this);
    return handle.call(this, req, ...rest);
  };
}

/**
 * Wrap the router's param callbacks in place, and its class's param() so that callbacks
 * registered later are wrapped too. The routers call them from a private function, not a method.
 */
function wrapParams(router: Router): void {
  const params = router.params;
  if (typeof params !== 'object' || params === null) return;
  (router as ParamsRouter)[kParamsWrapped] = true;
  for (const list of Object.values(params)) {
    if (!Array.isArray(list)) continue;
    for (let i = 0; i < list.length; i++) if (typeof list[i] === 'function') list[i] = paramInRequestScope(list[i]);
  }
  let owner: object | null = router;
  while (owner !== null && !Object.hasOwn(owner, 'param')) owner = Object.getPrototypeOf(owner) as object | null;
  if (owner === null || wrappedParamMethods.has(owner)) return;
  wrappedParamMethods.add(owner);
  const param = (owner as { param: Method }).param;
  if (typeof param !== 'function') return;
  (owner as { param: Method }).param = function paramInScope(this: Router, ...args: unknown[]) {
    const result = param.apply(this, args);
    wrapParams(this);
    return result;
  };
}

function paramInRequestScope(fn: HandleParam): HandleParam {
  if (wrappedParams.has(fn)) return fn;
  const wrapped: HandleParam = function (this, req, res, next, value, name) {
    const scope = (req as ScopedRequest)[kScope];
    if (scope === undefined || scope.isCurrent()) return fn.call(this, req, res, next, value, name);
    return scope.around(next, (resume) => fn.call(this, req, res, resume, value, name));
  };
  wrappedParams.add(wrapped);
  return wrapped;
}

/**
 * Express middleware that runs each request in a context-db context: `dbSession(db)` anywhere
 * below it finds the request's session, and `req.db` holds the helpers. When the handler ends
 * its response (`res.json`, `res.send`, `res.end`, `res.redirect`) or writes its first chunk,
 * the response is held back until the sessions are committed (status below 400 by default) or
 * rolled back, so no byte reaches the client before the outcome is durable; a failed COMMIT
 * turns the response into a 500. A client that goes away rolls back at once. An error passed
 * to Express's error handling rolls back whatever status an error handler answers with. Every
 * middleware, handler and param callback of the request runs in its context (or, once opted
 * out, outside any), even when a `next` parked by a gate is called from another request's code. A `contextDb()` in a
 * sub-app or router under another one applies its own options to the rest of the request.
 *
 * @example
 * ```ts
 * const db = new DbConnect({ connectionString: process.env.DATABASE_URL });
 * const app = express();
 * app.use(express.json(), contextDb({ db }));
 * app.post('/notes', async (req, res) => {
 *   const session = await req.db.session();
 *   await session.query('INSERT INTO notes (text) VALUES ($1)', [req.body.text]);
 *   res.status(201).json({ ok: true }); // sent after COMMIT
 * });
 * ```
 */
export function contextDb(options: ContextDbExpressOptions = {}): RequestHandler {
  validateContextDbOptions(options, 'contextDb()', ['skip']);
  const helpers = createDbHelpers(options.db);
  return function contextDbMiddleware(req, res, next) {
    resumeLayersInContext(req.app);
    req.db = helpers;
    const scoped = req as ScopedRequest;
    const outer = scoped[kScope];
    if (outer === OPTED_OUT) return next();
    if (outer instanceof RequestLink) {
      // A second install on one request: a sub-app or router with a contextDb() of its own,
      // mounted under the app's. Its options are the specific ones, so they decide the rest of
      // the request, as they would with the sub-app served on its own; ignoring them would
      // commit what the inner commitOn means to roll back.
      if (options.skip?.(req) === true) outer.optOut(next);
      else {
        outer.useOptions(options);
        next();
      }
      return;
    }
    watchApps(req);
    if (options.skip?.(req) === true) {
      scoped[kScope] = SKIPPED;
      return leaveCtx(next);
    }
    const link = new RequestLink(req, res, options);
    scoped[kScope] = link;
    link.run(next);
  };
}

/**
 * Route middleware that runs the rest of the route without a context, for routes that stream
 * for long or need no database transaction. Placed after the global `contextDb()`, it finishes
 * the request's context (committing what earlier middleware did, by the usual rule), stops
 * holding back the response, and calls `next()` outside any context-db context (other
 * AsyncLocalStorage stores are kept): `dbSession()` throws there, `req.db.newSession()` works.
 *
 * @example
 * ```ts
 * app.get('/events', noContextDb(), (req, res) => {
 *   res.writeHead(200, { 'Content-Type': 'text/event-stream' });
 *   setInterval(() => res.write('data: tick\n\n'), 1000);
 * });
 * ```
 */
export function noContextDb(): RequestHandler {
  return function noContextDbMiddleware(req, _res, next) {
    const scope = (req as ScopedRequest)[kScope];
    if (scope instanceof RequestLink) scope.optOut(next);
    else next();
  };
}

/**
 * Route middleware that sets the transaction options of the request's sessions (over the
 * `DbConnect`'s defaults): isolation level, read-only, timeouts. Place it after `contextDb()` and
 * before the handler, ahead of any query; the options are checked when the route is declared.
 *
 * @example
 * ```ts
 * app.get('/report', transactionOptions({ isolationLevel: 'repeatable read', readOnly: true }), async (req, res) => {
 *   res.json((await (await req.db.session()).query('SELECT count(*) FROM orders')).rows);
 * });
 * ```
 */
export function transactionOptions(options: TransactionOptions): RequestHandler {
  const apply = routeTransactionOptions(options, 'transactionOptions()');
  return function transactionOptionsMiddleware(req, _res, next) {
    const scope = (req as ScopedRequest)[kScope];
    // A request skip() or noContextDb() keeps outside has no transaction to set options for.
    if (scope === SKIPPED || scope === OPTED_OUT) return next();
    try {
      apply();
    } catch (err) {
      return next(err);
    }
    next();
  };
}

/**
 * Error middleware that records an error passed to `next(err)` so that the request rolls back,
 * and passes it on. `contextDb()` now records every error that reaches Express's error
 * handling by itself, so this is optional, kept for apps that mount it. Express 4 does not
 * catch async handlers' rejections: call `next(err)` there.
 *
 * @example
 * ```ts
 * app.use(contextDb({ db }));
 * app.use('/api', routes);
 * app.use(contextDbErrors());
 * app.use((err, req, res, next) => res.status(200).json({ error: String(err) })); // rolled back
 * ```
 */
export function contextDbErrors(): ErrorRequestHandler {
  return function contextDbErrorCapture(err: unknown, req, _res, next) {
    (req as ScopedRequest)[kScope]?.fail(err);
    next(err);
  };
}

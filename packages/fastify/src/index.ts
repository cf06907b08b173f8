import { type ServerResponse, validateHeaderName, validateHeaderValue } from 'node:http';
import { createRequire } from 'node:module';
import type { Readable } from 'node:stream';
import {
  type ContextDbOptions,
  createDbHelpers,
  type DbHelpers,
  DeadlineExceededError,
  firstChunk,
  InvalidOptionsError,
  isContextInitiated,
  isStreamBody,
  isWebStream,
  RequestCtx,
  runOutsideCtx,
  type TransactionOptions,
  toReadable,
  validateContextDbOptions,
  validateTransactionOptions,
} from '@context-db/core';
import {
  errorCodes,
  type FastifyContextConfig,
  type FastifyPluginAsync,
  type FastifyReply,
  type FastifyRequest,
  type HookHandlerDoneFunction,
  type onSendHookHandler,
} from 'fastify';
import fp from 'fastify-plugin';

export type { ContextDbOptions, DbHelpers } from '@context-db/core';

declare module 'fastify' {
  interface FastifyRequest {
    /** context-db helpers bound to the plugin's `db`: `session()`, `runInNewCtx()`, `newSession()`, `newAtomicSession()`. */
    db: DbHelpers;
  }
  interface FastifyContextConfig {
    /**
     * `false` runs the route without a context-db context (no `dbSession()`, no commit/rollback);
     * `{ transaction }` sets the options of the request's transactions (isolation level,
     * read-only, timeouts) over the `DbConnect`'s.
     */
    contextDb?: boolean | ContextDbRouteOptions;
  }
}

/** A route's `config.contextDb` object. */
export interface ContextDbRouteOptions {
  readonly transaction?: TransactionOptions;
}

/** A route's `config.contextDb`, checked when the route is declared (or at its first request). */
function routeOptions(config: unknown, route: string): TransactionOptions | undefined {
  if (config === undefined || typeof config === 'boolean') return undefined;
  const where = `route ${route}: config.contextDb`;
  if (typeof config !== 'object' || config === null) {
    throw new InvalidOptionsError(`${where} must be false or { transaction: {...} }, got ${JSON.stringify(config)}.`);
  }
  const { transaction, ...rest } = config as ContextDbRouteOptions & Record<string, unknown>;
  const unknown = Object.keys(rest)[0];
  if (unknown !== undefined) {
    throw new InvalidOptionsError(`${where}: unknown option "${unknown}"; the option is transaction.`);
  }
  return transaction === undefined ? undefined : validateTransactionOptions(transaction, `${where}.transaction`);
}

/** Options of `contextDbPlugin`: `{ db, beforeCommit?, commitOn? }`. */
export type ContextDbPluginOptions = ContextDbOptions;

// 'open': the reply is not sent yet. 'deciding': onSend holds the first send until the outcome
// is known; any other send meanwhile is dropped. 'decided': the outcome stands; what follows
// (the error response of a failed commit) goes out as Fastify makes it.
type Phase = 'open' | 'deciding' | 'decided';

/**
 * One request's context and where its reply stands. Its methods are what `RequestCtx` calls
 * back (no closure per request): only once the request asks for a session does it watch the
 * client and the head that goes out, so a request that never does pays for neither.
 */
class RequestState {
  readonly rc: RequestCtx;
  error: unknown = undefined;
  phase: Phase = 'open';
  /** The status in the head that went out: a hijacked reply's outcome. */
  sentStatus: number | undefined = undefined;
  /** A stream body held until its first chunk; destroyed if the client goes away meanwhile. */
  held: Readable | undefined = undefined;
  /** A second send was dropped while deciding (it may have changed the status or headers). */
  dropped = false;

  constructor(
    readonly request: FastifyRequest,
    readonly reply: FastifyReply,
    options: ContextDbOptions,
    /** The route's own last onSend hook decides (see onRoute); the global one only re-enters. */
    readonly routeDecides: boolean,
    /** A HEAD twin: Fastify's hook after the deciding one drops the body. */
    readonly dropsBody: boolean,
  ) {
    this.rc = RequestCtx.open(options, this);
  }

  hookError(err: unknown, kind: string): void {
    this.request.log.error({ err }, `context-db: an ${kind} hook threw; the transaction's outcome stands`);
  }

  /**
   * The request asks for its first session. From now on a client that leaves rolls back at once
   * ('close' before the end), and a hijacked reply (which onSend never sees) is decided by the
   * head it sent when it finishes. What happened before is read from the response as it is.
   */
  sessionRequested(): void {
    const res = this.reply.raw;
    if (res.headersSent) this.sentStatus ??= res.statusCode;
    else recordSentStatus(res, this);
    // Closed already (the client left, or a hijacked reply ended): what 'close' would have done
    // happens now, and it ends the context, so that the session is refused.
    if (res.closed) {
      onClose(this, this.reply);
      return;
    }
    (res as WatchedResponse)[kState] = this;
    res.on('close', onResponseClose);
  }
}

// The response's request state, for the one 'close' listener all responses share.
const kState = Symbol('context-db state');
type WatchedResponse = ServerResponse & { [kState]?: RequestState };

function onResponseClose(this: WatchedResponse): void {
  const state = this[kState];
  if (state !== undefined) onClose(state, state.reply);
}

// An opted-out request (config.contextDb false): its hooks and handler run outside any context,
// even when another request's code resumes them.
const OUTSIDE = 'outside';
type Entry = RequestState | typeof OUTSIDE;

// Set on the config of the routes onRoute saw: their deciding hook is their last onSend (or the
// last before Fastify's HEAD hook, which drops the body: `headTwin`).
const routeDecides = Symbol('context-db route decides');
const headTwin = Symbol('context-db HEAD twin');
type MarkedConfig = { readonly [routeDecides]?: true; readonly [headTwin]?: true };

// The onSend hook Fastify gives the HEAD twin of a GET route, found by identity: other onRoute
// hooks may add theirs after it. Fastify exports only the function that appends it.
const headRouteOnSend: unknown = (() => {
  try {
    const { parseHeadOnSendHandlers } = createRequire(import.meta.url)('fastify/lib/head-route.js') as {
      parseHeadOnSendHandlers(hooks: undefined): unknown;
    };
    return parseHeadOnSendHandlers(undefined);
  } catch {
    return undefined;
  }
})();

function isHeadRouteOnSend(hook: unknown): boolean {
  // The name is the fallback for a Fastify copy other than the one this package resolves.
  return hook === headRouteOnSend || (typeof hook === 'function' && hook.name === 'headRouteOnSendHandler');
}

type Headers = ReturnType<FastifyReply['getHeaders']>;

interface Head {
  readonly statusCode: number;
  readonly headers: Headers;
}

// Module-level rather than per plugin instance: a second registration in a child scope finds the
// request's state and joins it, so one request keeps one context and one transaction. A field of
// the request rather than a WeakMap entry: every hook reads it, and a WeakMap entry per request
// costs the garbage collector more than the request's own objects.
const kEntry = Symbol('context-db request');
type EntryRequest = FastifyRequest & { [kEntry]?: Entry };

function entryOf(request: FastifyRequest): Entry | undefined {
  return (request as EntryRequest)[kEntry];
}

// Async so that a thrown InvalidOptionsError rejects register()/ready() instead of crashing.
const plugin: FastifyPluginAsync<ContextDbPluginOptions> = async (fastify, options) => {
  validateContextDbOptions(options, 'contextDbPlugin');
  // Only what the hooks need: Fastify adds its own keys (prefix, logLevel) to plugin options.
  const { db, beforeCommit, commitOn, deadline } = options;
  const ctxOptions: ContextDbOptions = {
    db,
    ...(beforeCommit && { beforeCommit }),
    ...(commitOn && { commitOn }),
    ...(deadline !== undefined && { deadline }),
  };
  const helpers = createDbHelpers(db);

  fastify.decorateRequest('db', {
    getter: () => helpers,
  });

  fastify.addHook('onRequest', (request, reply, next) => {
    const route = request.routeOptions; // a getter that builds a new object: read it once
    const config: FastifyContextConfig & MarkedConfig = route.config;
    if (config.contextDb === false) {
      (request as EntryRequest)[kEntry] = OUTSIDE;
      return leave(next);
    }
    const joined = entryOf(request);
    if (joined !== undefined && joined !== OUTSIDE) {
      // Registered again in a child scope with options of its own: those, the more specific,
      // decide this request's outcome (silently keeping the outer ones would commit what the
      // child meant to roll back).
      joined.rc.useOptions(ctxOptions);
      return next();
    }
    const state = new RequestState(
      request,
      reply,
      ctxOptions,
      config[routeDecides] === true,
      config[headTwin] === true,
    );
    (request as EntryRequest)[kEntry] = state;
    if (config.contextDb !== undefined && config.contextDb !== true) {
      try {
        const transaction = routeOptions(config.contextDb, `${request.method} ${route.url}`);
        if (transaction !== undefined) state.rc.setTransactionOptions(transaction);
      } catch (err) {
        state.error = err;
        return state.rc.run(() => next(err as Error));
      }
    }
    watchHandlerTimeout(request, route.handlerTimeout, state);
    state.rc.run(next);
  });

  // A hook that parks the request and is resumed from another request's code leaves the rest of
  // the chain in that request's context. Re-enter the request's own before each hook the app
  // adds (see reenterBefore), around each of the route's own hooks (which run after the app's),
  // and in the route's handler (onRoute). A phase without hooks is one Fastify skips: a
  // re-entering hook there would make every request run it for nothing. onRoute sees only
  // routes declared once the plugin has loaded.
  reenterBefore(fastify);
  // The not-found handler is no route onRoute sees, and its onSend hooks are the scope's, in
  // order: an app-level hook added after the plugin would run after an app-level decision. Its
  // own onSend option runs after all of them, so the deciding hook goes there.
  // Child scopes inherit the wrapper (an instance is its parent's prototype), and call it on
  // themselves: `this` is the scope the handler belongs to.
  const setNotFoundHandler = fastify.setNotFoundHandler as (this: unknown, ...args: unknown[]) => unknown;
  fastify.setNotFoundHandler = function (this: unknown, first?: unknown, second?: unknown) {
    const [opts, handler] = typeof first === 'function' ? [{}, first] : [first ?? {}, second];
    const options = { ...(opts as NotFoundOptions), ...reenteringHooks(opts as PhaseHooks) };
    return setNotFoundHandler.call(this, decidingLast(options), inRequestScope(handler));
  } as typeof fastify.setNotFoundHandler;

  fastify.addHook('onRoute', (route) => {
    // Checked now, so that a bad value fails at start-up; kept checked, so requests skip it.
    const transaction = routeOptions(route.config?.contextDb, `${String(route.method)} ${route.url}`);
    if (transaction !== undefined) route.config = { ...route.config, contextDb: { transaction } };
    Object.assign(route, reenteringHooks(route));
    route.handler = inRequestScope(route.handler);
    // Route-level onSend hooks run after the app's: deciding in the app-level hook would commit
    // before one of them fails, so the route's own last hook decides. Only the HEAD twin Fastify
    // adds to a GET route ends with a hook of Fastify's that must run after the decision: it
    // drops the body, a stream unread, so a stream failing before its first chunk would commit.
    // Fastify's HEAD hook (and whatever other onRoute hooks put after it) stays after the decision.
    const hooks = toArray(route.onSend).filter((hook) => hook !== decideOnSend);
    const at = hooks.findIndex(isHeadRouteOnSend);
    const tail = at === -1 ? [] : hooks.splice(at);
    const decided = decidingLast({ onSend: hooks, config: route.config }, at !== -1);
    route.onSend = [...toArray(decided.onSend), ...tail];
    if (decided.config !== undefined) route.config = decided.config;
  });

  fastify.addHook('onError', (request, _reply, error, next) => {
    const state = entryOf(request);
    if (state !== undefined && state !== OUTSIDE && state.error === undefined) state.error = error;
    // The app's onError hooks and the error handler run from here on: a hook that parked the
    // request and failed it from another request's code left that request's context.
    resume(request, next);
  });

  // For a route onRoute did not see (declared before the plugin loaded, the 404 handler), the
  // app-level onSend decides; for the others it only re-enters.
  fastify.addHook('onSend', (request, reply, payload, done) => {
    const state = entryOf(request);
    if (state === undefined || state === OUTSIDE || state.routeDecides) return resume(request, done);
    decideOnSend(request, reply, payload, done);
  });
};

type OnSendDone = Parameters<onSendHookHandler>[3];

interface NotFoundOptions {
  readonly onSend?: onSendHookHandler | onSendHookHandler[] | undefined;
  readonly config?: FastifyContextConfig | undefined;
}

type PhaseHooks = { readonly [P in ReenteredPhase]?: unknown };

/** A route's (or the not-found handler's) own hooks of each phase, each between re-entering hooks. */
function reenteringHooks(options: PhaseHooks): Record<ReenteredPhase, unknown[]> {
  const hooks = Object.entries(reentering).map(([phase, re]) => [
    phase,
    aroundEach(options[phase as ReenteredPhase], re),
  ]);
  return Object.fromEntries(hooks) as Record<ReenteredPhase, unknown[]>;
}

/** `options` with the deciding hook as its last onSend (the route's own re-entering). */
function decidingLast<O extends NotFoundOptions>(options: O, dropsBody = false): O {
  const own = toArray(options.onSend).filter((hook) => hook !== decideOnSend);
  if (options.config?.contextDb === false) return { ...options, onSend: aroundEach(own, reenterPassing) };
  const marked: MarkedConfig = dropsBody ? { [routeDecides]: true, [headTwin]: true } : { [routeDecides]: true };
  return {
    ...options,
    onSend: [...aroundEach(own, reenterPassing), decideOnSend],
    config: { ...options.config, ...marked },
  };
}

// onSend runs before any byte of the response is written: the last moment a failed commit can
// still turn the response into an error. A callback hook, not an async one: a request that
// made no session passes without a promise.
function decideOnSend(request: FastifyRequest, reply: FastifyReply, payload: unknown, done: OnSendDone): void {
  const state = entryOf(request);
  if (state === undefined || state === OUTSIDE || state.phase === 'decided') {
    done(null, payload);
  } else if (state.phase === 'deciding') {
    // A second send while the first waits for its COMMIT: Fastify alone would have written
    // the first and refused this one, so drop it. An undefined payload is Fastify sending an
    // async handler's undefined result after `reply.send(x)` without `return reply`, which it
    // skips silently when the first send is out; anything else it warns about.
    state.dropped = true;
    if (payload !== undefined) {
      reply.log.warn({ err: new errorCodes.FST_ERR_REP_ALREADY_SENT(request.url, request.method) });
    }
  } else if (state.rc.idle && !mayStream(payload)) {
    state.phase = 'decided';
    void state.rc.end(reply.statusCode, state.error);
    done(null, payload);
  } else {
    state.phase = 'deciding';
    decide(state, reply, payload, done);
  }
}

/**
 * A payload that may still run database work as it is read (a stream, a Response's body): a
 * request with no session yet is decided like any other, after its first chunk, so that the
 * query the stream starts finds the request's context. Strings and buffers are final.
 */
function mayStream(payload: unknown): boolean {
  return typeof payload === 'object' && payload !== null && !Buffer.isBuffer(payload);
}

/**
 * Commit or roll back, then let Fastify write the first send, or hand it the error that replaces
 * it. Whatever would fail before the first byte decides first: a header Node refuses, a stream
 * body that fails before its first chunk.
 */
function decide(state: RequestState, reply: FastifyReply, sent: unknown, done: OnSendDone): void {
  let payload = sent;
  let refused: unknown;
  let held: Readable | undefined;
  // A web stream converted to be held: on a HEAD twin Fastify would cancel it, not read it.
  let converted = false;
  try {
    payload = unwrapResponse(reply, sent);
    // The deciding hook is the last to see the payload: check it as Fastify's writer will.
    if (state.routeDecides) checkPayload(payload, state.dropsBody);
    // Any stream Fastify would send, held until its first chunk; a web stream that cannot be
    // read (locked) throws here and rolls back like a stream that fails.
    const stream = carriesBody(reply.statusCode) ? toReadable(payload) : undefined;
    if (stream !== undefined) {
      converted = stream !== payload && isWebStream(payload);
      payload = stream;
      held = stream;
    }
  } catch (err) {
    refused = err;
  }
  const head: Head = { statusCode: reply.statusCode, headers: reply.getHeaders() };
  refused ??= refusedHeader(head.headers);
  const errorBefore = state.error;
  const outcome = (early?: unknown): void => {
    state.held = undefined;
    // An error reported while the first send was held (a throw after `reply.send(stream)`)
    // rolls back, so it must be the response too, not the held send.
    const late = state.error === errorBefore ? undefined : state.error;
    void state.rc.end(head.statusCode, state.error ?? early).then((failure) => {
      state.phase = 'decided';
      const error = failure ?? early ?? late;
      if (converted && (error !== undefined || state.dropsBody)) held?.destroy();
      if (error !== undefined) return replaceWithError(reply, error, done);
      // A dropped second send (or the error handler of a throw after the first send) may have
      // changed the head: the first send goes out as it was sent.
      if (state.dropped) restoreHead(reply, head);
      write(payload, done);
    });
  };
  if (refused !== undefined) {
    outcome(refused);
  } else if (held !== undefined) {
    state.held = held;
    state.rc.awaitingBody();
    firstChunk(held).then(() => outcome(), outcome);
  } else {
    outcome();
  }
}

// Fastify applies a Response's status and headers after onSend: apply them now, before the
// decision. Recognised as Fastify does, so that one from another realm (npm undici) counts.
function unwrapResponse(reply: FastifyReply, payload: unknown): unknown {
  if (Object.prototype.toString.call(payload) !== '[object Response]') return payload;
  const response = payload as Response;
  if (response.body !== null && response.bodyUsed) throw new errorCodes.FST_ERR_REP_RESPONSE_BODY_CONSUMED();
  reply.code(response.status);
  for (const [name, value] of response.headers) reply.header(name, value);
  return response.body;
}

// What Fastify's writer would throw only after the COMMIT: refuse it before, like a header Node
// refuses. On a HEAD twin Fastify's HEAD hook measures the payload instead (Buffer.byteLength).
function checkPayload(payload: unknown, dropsBody: boolean): void {
  if (payload === undefined || typeof payload === 'string' || isStreamBody(payload)) return;
  if (
    dropsBody
      ? ArrayBuffer.isView(payload) || payload instanceof ArrayBuffer
      : payload === null || Buffer.isBuffer(payload)
  ) {
    return;
  }
  throw new errorCodes.FST_ERR_REP_INVALID_PAYLOAD_TYPE(typeof payload);
}

// 1xx, 204 and 304 carry no body: Fastify (or Node) discards it, so there is nothing to wait for.
function carriesBody(status: number): boolean {
  return status >= 200 && status !== 204 && status !== 304;
}

function write(payload: unknown, done: OnSendDone): void {
  try {
    done(null, payload);
  } catch (err) {
    // Fastify writes the reply inside done(): what it throws there becomes its error response,
    // as Fastify's own runner does for async onSend hooks, never an unhandled rejection.
    done(err as Error);
  }
}

function replaceWithError(reply: FastifyReply, error: unknown, done: OnSendDone): void {
  // Nothing of the replaced response goes out with the error: no location or set-cookie for
  // data that was not stored, and not its status.
  for (const name of Object.keys(reply.getHeaders())) reply.removeHeader(name);
  reply.code(500);
  done(error instanceof Error ? error : new Error(String(error)));
}

function restoreHead(reply: FastifyReply, head: Head): void {
  for (const name of Object.keys(reply.getHeaders())) if (!(name in head.headers)) reply.removeHeader(name);
  reply.headers(head.headers);
  reply.code(head.statusCode);
}

// Node checks header names and values only when it writes the head, which is after the COMMIT:
// check them before, so that a header it would refuse rolls back like any error before the
// first byte. Returns Node's error for the first one it refuses. Each value goes to Node's
// check as it is, as writeHead gives it: an undefined item of an array, or a Symbol, is refused
// there, not after converting it to a string. (No array or entry list is made for it.)
function refusedHeader(headers: Headers): unknown {
  try {
    for (const name in headers) {
      validateHeaderName(name);
      const value: unknown = headers[name];
      if (Array.isArray(value)) for (const item of value) validateHeaderValue(name, item);
      else if (value !== undefined) validateHeaderValue(name, value as string); // typed string, checks any
    }
  } catch (err) {
    return err;
  }
  return undefined;
}

// Once the head is on the wire its status is the outcome, whatever statusCode says later. Only
// a hijacked reply needs this (onSend decides the others), but the hijack is not known in time.
function recordSentStatus(res: ServerResponse, state: RequestState): void {
  const writeHead = res.writeHead;
  res.writeHead = function (this: ServerResponse, ...args: Parameters<ServerResponse['writeHead']>) {
    const result = writeHead.apply(this, args);
    state.sentStatus ??= this.statusCode;
    return result;
  } as ServerResponse['writeHead'];
}

/** Runs `fn` in the request's context (an opted-out request: outside any), entered if need be. */
function within<R>(request: FastifyRequest, fn: () => R): R {
  const state = entryOf(request);
  if (state === undefined) return fn();
  if (state === OUTSIDE) return leave(fn);
  return state.rc.current ? fn() : state.rc.run(fn);
}

function resume(request: FastifyRequest, next: () => void): void {
  within(request, next);
}

function leave<R>(fn: () => R): R {
  return isContextInitiated() ? runOutsideCtx(fn) : fn();
}

type Handler = (this: unknown, request: FastifyRequest, reply: FastifyReply) => unknown;
const kInScope = Symbol('context-db handler');

/** The route's handler, run in the request's context whatever context a parked hook left. */
function inRequestScope<H>(handler: H): H {
  if (typeof handler !== 'function' || kInScope in handler) return handler;
  const own = handler as unknown as Handler;
  const wrapped = function (this: unknown, request: FastifyRequest, reply: FastifyReply): unknown {
    return within(request, () => own.call(this, request, reply));
  };
  return Object.assign(wrapped, { [kInScope]: true }) as H;
}

// Hook shapes: (request, reply, done) and, for the phases that pass a payload on,
// (request, reply, payload, done), where done() without a payload keeps it.
function reenter(request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction): void {
  resume(request, done);
}

function reenterPassing(request: FastifyRequest, _reply: FastifyReply, _payload: unknown, done: () => void): void {
  resume(request, done);
}

function toArray<H>(hooks: H | H[] | undefined): H[] {
  return hooks === undefined ? [] : Array.isArray(hooks) ? hooks : [hooks];
}

/** `[re, hook1, re, hook2, …, re]`, the same when applied twice; no hooks stay none. */
function aroundEach<H, R>(hooks: H | H[] | undefined, re: R): (H | R)[] {
  const own = toArray(hooks).filter((hook) => hook !== (re as unknown));
  return own.length === 0 ? [] : [...own.flatMap((hook) => [re, hook]), re];
}

type Scope = Parameters<FastifyPluginAsync>[0];
type HookName = Parameters<Scope['addHook']>[0];

// The phases whose hooks (the app's, added after the plugin's own onRequest, which opens the
// context; and a route's own) are each preceded by a re-entering hook.
const reentering = {
  onRequest: reenter,
  preParsing: reenterPassing,
  preValidation: reenter,
  preHandler: reenter,
  preSerialization: reenterPassing,
} as const;
type ReenteredPhase = keyof typeof reentering;

const kReentering = Symbol('context-db addHook');

/**
 * Makes `addHook` of this scope and its children (the plugin's instance is the prototype of its
 * children, so they call this `addHook` too) put a re-entering hook right before each hook of
 * those phases. Right before each, not once per phase: Fastify adds hooks later than `addHook`
 * is called (a plugin registered before may add its own in between), and a hook that parks
 * the request may run before any other hook of its phase.
 */
function reenterBefore(fastify: Scope): void {
  const addHook = fastify.addHook as ((this: Scope, name: HookName, hook: unknown) => Scope) & { [kReentering]?: true };
  // Registered again in a child scope: the inherited addHook re-enters already.
  if (addHook[kReentering]) return;
  const reenteringAddHook = function (this: Scope, name: HookName, hook: unknown) {
    const re = Object.hasOwn(reentering, name) ? reentering[name as ReenteredPhase] : undefined;
    if (re !== undefined) addHook.call(this, name, re);
    return addHook.call(this, name, hook);
  };
  fastify.addHook = Object.assign(reenteringAddHook, { [kReentering]: true }) as Scope['addHook'];
}

// Fastify's handlerTimeout (a server or route option) aborts request.signal with its own error,
// then answers 503: the request's database work is past its deadline too, so the running
// statement is cancelled and the transaction rolled back rather than left to run. Fastify makes
// request.signal on first use, so it is only touched when a timeout can abort it.
function watchHandlerTimeout(request: FastifyRequest, ms: number, state: RequestState): void {
  if (!(ms > 0)) return;
  const { signal } = request;
  signal.addEventListener(
    'abort',
    () => {
      const code = (signal.reason as { code?: unknown } | undefined)?.code;
      if (code === 'FST_ERR_HANDLER_TIMEOUT') state.rc.abort(new DeadlineExceededError(ms));
    },
    { once: true },
  );
}

// 'close' fires on every response whose request made a session: after a normal end (nothing
// left to do), after a hijacked reply the handler finished itself (onSend never ran), or when
// the client went away first.
function onClose(state: RequestState, reply: FastifyReply): void {
  state.rc.responseOver();
  if (state.phase === 'decided') return;
  if (!reply.raw.writableEnded) {
    // The client went away first: roll back and release now, and drop a stream still held.
    state.rc.abort();
    state.held?.destroy();
    if (state.phase === 'open') state.phase = 'decided';
    return;
  }
  if (state.phase === 'deciding') return;
  state.phase = 'decided';
  // A hijacked reply (or Fastify's last-resort error writer) finished without onSend: the
  // response is already out, so a failed commit can only be logged.
  void state.rc.end(state.sentStatus ?? reply.raw.statusCode, state.error).then((failure) => {
    if (failure !== undefined) reply.log.error({ err: failure }, 'context-db: commit after a hijacked reply failed');
  });
}

/**
 * Fastify plugin that runs each request in its own context-db context: `dbSession(db)` anywhere
 * in the handler gets the request's session, which is committed (status below 400 by default,
 * see `commitOn`) or rolled back in `onSend`, before any byte of the response is sent. A failed
 * commit turns the response into a 500; a client that goes away rolls back at once. Opt a route
 * out with `config: { contextDb: false }`; `request.db` holds the helpers bound to `db`.
 *
 * @example
 * ```ts
 * const db = new DbConnect({ connectionString: process.env.DATABASE_URL });
 * const app = Fastify();
 * await app.register(contextDbPlugin, { db });
 * app.post('/notes', async (request) => {
 *   const session = await request.db.session();
 *   await session.query('INSERT INTO notes (text) VALUES ($1)', [request.body]);
 *   return { ok: true }; // committed before this reply is written
 * });
 * ```
 */
export const contextDbPlugin = fp(plugin, { name: '@context-db/fastify', fastify: '5.x' });

export default contextDbPlugin;

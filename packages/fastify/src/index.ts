import { type ServerResponse, validateHeaderName, validateHeaderValue } from 'node:http';
import { Readable } from 'node:stream';
import {
  type ContextDbOptions,
  createDbHelpers,
  type DbHelpers,
  firstChunk,
  RequestCtx,
  validateContextDbOptions,
} from '@context-db/core';
import {
  errorCodes,
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
    /** `false` runs the route without a context-db context (no `dbSession()`, no commit/rollback). */
    contextDb?: boolean;
  }
}

/** Options of `contextDbPlugin`: `{ db, beforeCommit?, commitOn? }`. */
export type ContextDbPluginOptions = ContextDbOptions;

// 'open': the reply is not sent yet. 'deciding': onSend holds the first send until the outcome
// is known; any other send meanwhile is dropped. 'decided': the outcome stands; what follows
// (the error response of a failed commit) goes out as Fastify makes it.
type Phase = 'open' | 'deciding' | 'decided';

interface RequestState {
  readonly rc: RequestCtx;
  error: unknown;
  phase: Phase;
  /** The status in the head that went out: a hijacked reply's outcome. */
  sentStatus: number | undefined;
  /** A stream body held until its first chunk; destroyed if the client goes away meanwhile. */
  held: Readable | undefined;
  /** A second send was dropped while deciding (it may have changed the status or headers). */
  dropped: boolean;
}

type Headers = ReturnType<FastifyReply['getHeaders']>;

interface Head {
  readonly statusCode: number;
  readonly headers: Headers;
}

// Module-level rather than per plugin instance: a second registration in a child scope finds the
// request's state and joins it, so one request keeps one context and one transaction.
const states = new WeakMap<FastifyRequest, RequestState>();

// Async so that a thrown InvalidOptionsError rejects register()/ready() instead of crashing.
const plugin: FastifyPluginAsync<ContextDbPluginOptions> = async (fastify, options) => {
  validateContextDbOptions(options, 'contextDbPlugin');
  // Only what the hooks need: Fastify adds its own keys (prefix, logLevel) to plugin options.
  const { db, beforeCommit, commitOn } = options;
  const ctxOptions: ContextDbOptions = { db, ...(beforeCommit && { beforeCommit }), ...(commitOn && { commitOn }) };
  const helpers = createDbHelpers(db);

  fastify.decorateRequest('db', {
    getter: () => helpers,
  });

  fastify.addHook('onRequest', (request, reply, next) => {
    if (request.routeOptions.config.contextDb === false) return next();
    const joined = states.get(request);
    if (joined !== undefined) {
      // Registered again in a child scope with options of its own: those, the more specific,
      // decide this request's outcome (silently keeping the outer ones would commit what the
      // child meant to roll back).
      joined.rc.useOptions(ctxOptions);
      return next();
    }
    const state: RequestState = {
      rc: RequestCtx.open(ctxOptions),
      error: undefined,
      phase: 'open',
      sentStatus: undefined,
      held: undefined,
      dropped: false,
    };
    states.set(request, state);
    recordSentStatus(reply.raw, state);
    // 'close' fires on every response: after a normal end (nothing left to do), after a hijacked
    // reply the handler finished itself (onSend never ran), or when the client went away first.
    reply.raw.once('close', () => onClose(state, reply));
    state.rc.run(next);
  });

  // Re-enter the request's context at the start of each phase before the handler, and around
  // each of the route's own hooks (the last one right before the handler, so that the handler and
  // everything Fastify does with its result run in it too). onRoute sees only routes declared
  // once the plugin has loaded; the phase-start hooks apply to every route.
  fastify.addHook('preValidation', reenter);
  fastify.addHook('preHandler', reenter);
  fastify.addHook('onRoute', (route) => {
    if (route.config?.contextDb === false) return;
    route.preValidation = aroundEach(route.preValidation);
    route.preHandler = aroundEach(route.preHandler);
  });

  fastify.addHook('onError', (request, _reply, error, next) => {
    const state = states.get(request);
    if (state !== undefined && state.error === undefined) state.error = error;
    next();
  });

  // onSend runs before any byte of the response is written: the last moment a failed commit can
  // still turn the response into an error. A callback hook, not an async one: a request that
  // made no session passes without a promise.
  fastify.addHook('onSend', (request, reply, payload, done) => {
    const state = states.get(request);
    if (state === undefined || state.phase === 'decided') return done(null, payload);
    if (state.phase === 'deciding') {
      // A second send while the first waits for its COMMIT: Fastify alone would have written
      // the first and refused this one, so drop it. An undefined payload is Fastify sending an
      // async handler's undefined result after `reply.send(x)` without `return reply`, which it
      // skips silently when the first send is out; anything else it warns about.
      state.dropped = true;
      if (payload !== undefined) {
        reply.log.warn({ err: new errorCodes.FST_ERR_REP_ALREADY_SENT(request.url, request.method) });
      }
      return;
    }
    if (state.rc.idle) {
      state.phase = 'decided';
      void state.rc.end(reply.statusCode, state.error);
      return done(null, payload);
    }
    state.phase = 'deciding';
    decide(state, reply, payload, done);
  });
};

/**
 * Commit or roll back, then let Fastify write the first send, or hand it the error that replaces
 * it. Whatever would fail before the first byte decides first: a header Node refuses, a stream
 * body that fails before its first chunk.
 */
function decide(state: RequestState, reply: FastifyReply, payload: unknown, done: OnSendDone): void {
  const head: Head = { statusCode: reply.statusCode, headers: reply.getHeaders() };
  const outcome = (early?: unknown): void => {
    state.held = undefined;
    void state.rc.end(head.statusCode, state.error ?? early).then((failure) => {
      state.phase = 'decided';
      const error = failure ?? early;
      if (error !== undefined) return replaceWithError(reply, error, done);
      // A dropped second send (or the error handler of a throw after the first send) may have
      // changed the head: the first send goes out as it was sent.
      if (state.dropped) restoreHead(reply, head);
      write(payload, done);
    });
  };
  const badHeader = invalidHeader(head.headers);
  if (badHeader !== undefined) {
    outcome(badHeader);
  } else if (payload instanceof Readable) {
    state.held = payload;
    firstChunk(payload).then(() => outcome(), outcome);
  } else {
    outcome();
  }
}

type OnSendDone = Parameters<onSendHookHandler>[3];

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
// first byte.
function invalidHeader(headers: Headers): unknown {
  try {
    for (const [name, value] of Object.entries(headers)) {
      validateHeaderName(name);
      if (value !== undefined) for (const item of [value].flat()) validateHeaderValue(name, String(item));
    }
    return undefined;
  } catch (err) {
    return err;
  }
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

// A callback-style hook (a gate, a queue, a rate limiter) may resume the request from another
// request's code, in that request's async context: re-enter this request's own.
function reenter(request: FastifyRequest, _reply: FastifyReply, next: HookHandlerDoneFunction): void {
  const state = states.get(request);
  if (state === undefined || state.rc.current) next();
  else state.rc.run(next);
}

/** `[reenter, hook1, reenter, hook2, …, reenter]`, the same when applied twice. */
function aroundEach<H>(hooks: H | H[] | undefined): (H | typeof reenter)[] {
  const own = (hooks === undefined ? [] : Array.isArray(hooks) ? hooks : [hooks]).filter((hook) => hook !== reenter);
  return [...own.flatMap((hook) => [reenter, hook]), reenter];
}

function onClose(state: RequestState, reply: FastifyReply): void {
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

import {
  type ContextDbOptions,
  createDbHelpers,
  type DbHelpers,
  RequestCtx,
  validateContextDbOptions,
} from '@context-db/core';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
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

interface RequestState {
  readonly rc: RequestCtx;
  error: unknown;
  /** Set once the outcome has been decided, so the error response that follows cannot decide it again. */
  ended: boolean;
}

// Async so that a thrown InvalidOptionsError rejects register()/ready() instead of crashing.
const plugin: FastifyPluginAsync<ContextDbPluginOptions> = async (fastify, options) => {
  validateContextDbOptions(options, 'contextDbPlugin');
  // Only what the hooks need: Fastify adds its own keys (prefix, logLevel) to plugin options.
  const { db, beforeCommit, commitOn } = options;
  const ctxOptions: ContextDbOptions = { db, ...(beforeCommit && { beforeCommit }), ...(commitOn && { commitOn }) };
  const helpers = createDbHelpers(db);
  const states = new WeakMap<FastifyRequest, RequestState>();

  fastify.decorateRequest('db', {
    getter: () => helpers,
  });

  fastify.addHook('onRequest', (request, reply, next) => {
    if (request.routeOptions.config.contextDb === false) return next();
    const state: RequestState = { rc: RequestCtx.open(ctxOptions), error: undefined, ended: false };
    states.set(request, state);
    // 'close' fires on every response: after a normal end (nothing left to do), after a hijacked
    // reply the handler finished itself (onSend never ran), or when the client went away first.
    reply.raw.once('close', () => onClose(state, reply));
    state.rc.run(next);
  });

  // Fastify carries the async context through body parsing itself, but a callback-style hook
  // (a throttle, a queue) may resume the request on someone else's stack, in another request's
  // context. Re-enter this request's own context before validation and the handler.
  fastify.addHook('preValidation', (request, _reply, next) => {
    const state = states.get(request);
    // Usually Fastify has kept the context through body parsing: nothing to re-enter.
    if (state === undefined || state.rc.current) return next();
    state.rc.run(next);
  });

  fastify.addHook('onError', (request, _reply, error, next) => {
    const state = states.get(request);
    if (state !== undefined && state.error === undefined) state.error = error;
    next();
  });

  // onSend runs before any byte of the response is written: the last moment a failed commit can
  // still turn the response into an error.
  // A callback hook, not an async one: a request that made no session passes without a promise.
  fastify.addHook('onSend', (request, reply, payload, done) => {
    const state = states.get(request);
    if (state === undefined || state.ended) return done(null, payload);
    state.ended = true;
    if (state.rc.idle) {
      void state.rc.end(reply.statusCode, state.error);
      return done(null, payload);
    }
    // Passed as an error, Fastify's error handler answers 500 and sends that through onSend
    // again, where `ended` lets it pass.
    void state.rc.end(reply.statusCode, state.error).then((failure) => {
      if (failure === undefined) done(null, payload);
      else done(failure instanceof Error ? failure : new Error(String(failure)));
    });
  });
};

function onClose(state: RequestState, reply: FastifyReply): void {
  if (state.ended) return;
  state.ended = true;
  // Not ended by the app: the client went away first.
  if (!reply.raw.writableEnded) {
    state.rc.abort();
    return;
  }
  // A hijacked reply (or Fastify's last-resort error writer) finished without onSend: the
  // response is already out, so a failed commit can only be logged.
  void state.rc.end(reply.raw.statusCode, state.error).then((failure) => {
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
 *   await session.query('INSERT INTO notes (text) VALUES ($1)', ['hello']);
 *   return { ok: true }; // committed before this reply is written
 * });
 * ```
 */
export const contextDbPlugin = fp(plugin, { name: '@context-db/fastify', fastify: '5.x' });

export default contextDbPlugin;

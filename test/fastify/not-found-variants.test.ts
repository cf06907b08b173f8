// The not-found handler and its own hooks re-enter the request's context: setNotFoundHandler's
// own preValidation and preHandler hooks (a function and arrays), a gate among them that parks
// the request, a not-found handler in a prefixed child scope, Fastify's default 404, reply.callNotFound() from a route, and an
// opted-out not-found handler. Each time a request parked by a callback-style gate is resumed by
// POST /open, which writes `/open handler` and answers 409 (rolls back): the parked request's
// writes must commit or roll back by its own status, an opted-out one must run outside any
// context.
import { isContextInitiated } from '@context-db/core';
import type {
  FastifyInstance,
  FastifyReply,
  FastifyRequest,
  HookHandlerDoneFunction,
  RouteShorthandOptions,
} from 'fastify';
import t, { type Test } from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { addOpener, gatedApp, postJson } from '../fixtures/fastify.js';

interface Setup {
  readonly app: FastifyInstance;
  readonly write: (text: string) => Promise<void>;
  /** A callback-style hook that parks every request until POST /open. */
  readonly gate: (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) => void;
  /** An async hook writing `<url> <name>`. */
  readonly hook: (name: string) => (request: FastifyRequest) => Promise<void>;
  readonly contexts: boolean[];
}

async function run(
  t: Test,
  declare: (setup: Setup) => Promise<void> | void,
  url: string,
  status: number,
  expected: string[],
) {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const { app, write, parked, listen } = await gatedApp(t, db, table);
  const contexts: boolean[] = [];
  const setup: Setup = {
    app,
    write,
    gate: (_request, _reply, done) => void parked.push(() => done()),
    hook: (name) => async (request) => {
      contexts.push(isContextInitiated());
      if (isContextInitiated()) await write(`${request.url} ${name}`);
    },
    contexts,
  };
  await declare(setup);
  addOpener(app, write, parked, 409, { config: { open: true } } as RouteShorthandOptions);
  const port = await listen();
  const parkedAnswer = postJson(port, url, '{}');
  t.ok(await eventually(() => parked.length === 1), 'a request is parked');
  t.equal(await postJson(port, '/open', '{}'), 409, 'the request that resumed it rolls back');
  t.equal(await parkedAnswer, status, "the parked request's answer");
  t.same((await texts(table)).sort(), expected.sort(), "each request's writes follow its own status");
  t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
  t.equal((await activity(appName)).idleInTransaction, 0);
  return contexts;
}

for (const shape of ['functions', 'arrays'] as const) {
  t.test(`setNotFoundHandler's own hooks (${shape}), parked by its own preValidation gate`, async (t) => {
    await run(
      t,
      ({ app, gate, hook, write }) => {
        const one = <H>(hooks: H[]): H | H[] => (shape === 'arrays' ? hooks : (hooks[0] as H));
        app.setNotFoundHandler(
          {
            preValidation: one([gate, hook('404 preValidation')]),
            preHandler:
              shape === 'arrays' ? [hook('404 preHandler 1'), hook('404 preHandler 2')] : hook('404 preHandler 1'),
          },
          async (request, reply) => {
            await write(`${request.url} 404 handler`);
            return reply.code(200).send({ fallback: true });
          },
        );
      },
      '/missing',
      200,
      shape === 'arrays'
        ? [
            '/missing 404 preValidation',
            '/missing 404 preHandler 1',
            '/missing 404 preHandler 2',
            '/missing 404 handler',
          ]
        : ['/missing 404 preHandler 1', '/missing 404 handler'],
    );
  });
}

t.test('a not-found handler in a prefixed child scope, after an app onRequest gate', async (t) => {
  await run(
    t,
    async ({ app, gate, hook, write }) => {
      app.addHook('onRequest', (request, reply, done) =>
        request.url.startsWith('/api') ? gate(request, reply, done) : done(),
      );
      await app.register(
        async (api) => {
          api.addHook('preHandler', hook('api preHandler'));
          api.setNotFoundHandler({ preHandler: hook('404 preHandler') }, async (request, reply) => {
            await write(`${request.url} 404 handler`);
            return reply.code(200).send({ fallback: true });
          });
          api.get('/there', async () => ({ ok: true }));
        },
        { prefix: '/api' },
      );
    },
    '/api/missing',
    200,
    ['/api/missing api preHandler', '/api/missing 404 preHandler', '/api/missing 404 handler'],
  );
});

t.test("Fastify's default 404 after an app onRequest gate: its app preHandler write rolls back", async (t) => {
  await run(
    t,
    ({ app, gate, hook }) => {
      app.addHook('onRequest', (request, reply, done) =>
        request.url === '/missing' ? gate(request, reply, done) : done(),
      );
      app.addHook('preHandler', hook('preHandler'));
    },
    '/missing',
    404,
    [],
  );
});

t.test('reply.callNotFound() from a route parked by its own preValidation gate', async (t) => {
  await run(
    t,
    ({ app, gate, hook, write }) => {
      app.setNotFoundHandler({ preHandler: hook('404 preHandler') }, async (request, reply) => {
        await write(`${request.url} 404 handler`);
        return reply.code(200).send({ fallback: true });
      });
      app.post('/call', { preValidation: gate }, async (request, reply) => {
        await write(`${request.url} route handler`);
        return reply.callNotFound();
      });
    },
    '/call',
    200,
    ['/call route handler', '/call 404 preHandler', '/call 404 handler'],
  );
});

t.test('an opted-out not-found handler (a prefixed scope) stays outside any context', async (t) => {
  const contexts = await run(
    t,
    async ({ app, gate, hook, contexts }) => {
      app.addHook('onRequest', (request, reply, done) =>
        request.url.startsWith('/out') ? gate(request, reply, done) : done(),
      );
      await app.register(
        async (out) => {
          out.addHook('preHandler', hook('out preHandler'));
          // Fastify reads the not-found handler's config (its types leave it out).
          const options = { config: { contextDb: false }, preHandler: [hook('404 preHandler')] };
          out.setNotFoundHandler(options, async (_request, reply) => {
            contexts.push(isContextInitiated());
            return reply.code(200).send({ fallback: true });
          });
        },
        { prefix: '/out' },
      );
    },
    '/out/missing',
    200,
    [],
  );
  t.same(contexts, [false, false, false], 'its app hook, its own hook and its handler ran outside any context');
});

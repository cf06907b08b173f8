// Review of 2c86b15: the plugin's addHook puts a callback-style re-entering hook right before each
// app hook of preParsing, preValidation, preHandler and preSerialization. Does that change what
// Fastify does with the app's hooks? Held, for a request parked by an app onRequest gate and
// resumed by POST /open (writes `/open handler`, answers 409): an async preParsing hook that
// returns a new stream (the next hook and the body parser get it), async and callback
// preSerialization hooks that replace the payload, a reply sent early from a preHandler hook (its
// status decides), a hook that fails (done(err), a throw) after the gate resumed the request (its
// writes roll back), hooks given as an array (refused at ready, as without the plugin), an async
// hook with a callback's arity (refused at once). Two defects, both costing every request a hook
// call, no wrong session: a hook refused by Fastify's arity check leaves its re-entering hook
// behind (added first), and registering the plugin again in a child scope wraps the inherited
// addHook once more, so each hook of the child gets three re-entering hooks.
// Todo (REVIEW_RUN_TODO=1 runs the failing assertions).
import { PassThrough, type Readable } from 'node:stream';
import { contextDbPlugin } from '@context-db/fastify';
import Fastify, { type FastifyInstance } from 'fastify';
import t, { type Test } from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { addOpener, gatedApp, postJson } from '../fixtures/fastify.js';

const runTodo = process.env.REVIEW_RUN_TODO === '1';

type Write = (text: string) => Promise<void>;

/**
 * An app with an onRequest gate parking `?park` requests and POST /open; `declare` adds the rest
 * in a child scope (so that its hooks leave /open alone).
 */
async function parkedRun(
  t: Test,
  declare: (app: FastifyInstance, write: Write) => void,
  path: string,
  body: string,
  status: number,
  expected: string[],
): Promise<string> {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const { app, write, parked, listen } = await gatedApp(t, db, table);
  app.addHook('onRequest', (request, _reply, done) => {
    if ('park' in (request.query as object)) parked.push(done);
    else done();
  });
  app.register(async (child) => declare(child, write));
  addOpener(app, write, parked);
  const port = await listen();
  let answer = '';
  const parkedAnswer = fetch(`http://127.0.0.1:${port}${path}?park`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body,
  }).then(async (res) => {
    answer = await res.text();
    return res.status;
  });
  t.ok(await eventually(() => parked.length === 1), 'a request is parked');
  t.equal(await postJson(port, '/open', '{}'), 409, 'the request that resumed it rolls back');
  t.equal(await parkedAnswer, status, "the parked request's status");
  t.same((await texts(table)).sort(), expected.sort(), "the parked request's writes follow its own status");
  t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
  t.equal((await activity(appName)).idleInTransaction, 0);
  return answer;
}

t.test('an async preParsing hook returning a new stream, after a re-entering hook', async (t) => {
  const answer = await parkedRun(
    t,
    (app, write) => {
      app.addHook('preParsing', async (_request, _reply, payload) => {
        await write('preParsing 1');
        // A new stream: the body upper-cased.
        const upper = new PassThrough();
        payload.on('data', (chunk: Buffer) => upper.write(chunk.toString().toUpperCase()));
        payload.on('end', () => upper.end());
        return upper;
      });
      app.addHook('preParsing', (_request, _reply, payload: Readable, done) => {
        // A callback hook of 4: sees the first hook's stream, passes it on unchanged.
        write(`preParsing 2 ${payload instanceof PassThrough}`).then(() => done(null, payload), done);
      });
      app.post('/w', async (request) => {
        await write('handler');
        return request.body;
      });
    },
    '/w',
    '{"a":"b"}',
    200,
    ['preParsing 1', 'preParsing 2 true', 'handler'],
  );
  t.equal(answer, '{"A":"B"}', "the body parser read the hook's stream");
});

t.test('async and callback preSerialization hooks replacing the payload, after re-entering hooks', async (t) => {
  const answer = await parkedRun(
    t,
    (app, write) => {
      app.addHook('preSerialization', async (_request, _reply, payload: { n: number }) => {
        await write('preSerialization 1');
        return { n: payload.n + 1 };
      });
      app.addHook('preSerialization', (_request, _reply, payload: { n: number }, done) => {
        write('preSerialization 2').then(() => done(null, { n: payload.n * 10 }), done);
      });
      app.post('/w', async () => {
        await write('handler');
        return { n: 1 };
      });
    },
    '/w',
    '{}',
    200,
    ['preSerialization 1', 'preSerialization 2', 'handler'],
  );
  t.equal(answer, '{"n":20}', 'both hooks changed the payload');
});

for (const [status, expected] of [
  [201, ['preValidation', 'preHandler']],
  [403, []],
] as const) {
  t.test(`a reply sent early (${status}) from a preHandler hook after a re-entering hook`, async (t) => {
    const answer = await parkedRun(
      t,
      (app, write) => {
        app.addHook('preValidation', async () => write('preValidation'));
        app.addHook('preHandler', async (_request, reply) => {
          await write('preHandler');
          return reply.code(status).send({ early: true });
        });
        app.addHook('preHandler', async () => write('second preHandler (not run)'));
        app.post('/w', async () => {
          await write('handler (not run)');
          return { ok: true };
        });
      },
      '/w',
      '{}',
      status,
      [...expected],
    );
    t.equal(answer, '{"early":true}', "the hook's reply");
  });
}

for (const how of ['done(err)', 'a throw'] as const) {
  t.test(`a callback preHandler hook failing with ${how} after a re-entering hook`, async (t) => {
    await parkedRun(
      t,
      (app, write) => {
        app.addHook('preValidation', async () => write('preValidation'));
        app.addHook('preHandler', (_request, _reply, done) => {
          const err = Object.assign(new Error('refused'), { statusCode: 418 });
          if (how === 'a throw') throw err;
          done(err);
        });
        app.post('/w', async () => {
          await write('handler (not run)');
          return { ok: true };
        });
      },
      '/w',
      '{}',
      418,
      [],
    );
  });
}

t.test('hooks given to addHook as an array are refused at ready, as without the plugin', async (t) => {
  const { db } = testDb(t);
  const codes: unknown[] = [];
  for (const withPlugin of [false, true]) {
    const app = Fastify();
    t.teardown(() => app.close());
    if (withPlugin) await app.register(contextDbPlugin, { db });
    app.addHook('preHandler', [async () => {}] as never);
    codes.push(
      await app.ready().then(
        () => 'ready',
        (err: { code?: string }) => err.code,
      ),
    );
  }
  t.same(codes, ['FST_ERR_HOOK_INVALID_HANDLER', 'FST_ERR_HOOK_INVALID_HANDLER']);
});

t.test('an async hook with a callback arity is refused and leaves nothing behind', async (t) => {
  const { db } = testDb(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  t.throws(
    () => app.addHook('preValidation', async function refused(_a: unknown, _b: unknown, _c: unknown) {} as never),
    { code: 'FST_ERR_HOOK_INVALID_ASYNC_HANDLER' },
    'Fastify refuses it at once, as without the plugin',
  );
  app.get('/r', async () => ({ ok: true }));
  await app.ready();
  const routes = app.printRoutes({ commonPrefix: false, includeHooks: true });
  t.comment(routes);
  t.notMatch(routes, /preValidation/, 'no route runs a preValidation hook', {
    todo: !runTodo && 'the re-entering hook is added before Fastify checks the hook: it stays',
  });
});

t.test('the plugin registered again in a child scope: one re-entering hook before each app hook', async (t) => {
  const { db } = testDb(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  await app.register(async (child) => {
    await child.register(contextDbPlugin, { db });
    child.addHook('preHandler', async function appHook() {});
    child.get('/c', async () => ({ ok: true }));
  });
  await app.ready();
  const routes = app.printRoutes({ commonPrefix: false, includeHooks: true });
  t.comment(routes);
  t.match(routes, /\(preHandler\) \["reenter\(\)","appHook\(\)"\]/, 'one re-entering hook, then the app hook');
});

// Two requests interleaved by a gate: one request parks a hook's callback, another request's
// handler releases it. The parked request resumes on the other's stack, so in the other's async
// context; its hooks and handler must still run in its own context, with its own session, in
// every phase; an opted-out request must still run outside any context.
import { setTimeout as sleep } from 'node:timers/promises';
import type { DbConnect } from '@context-db/core';
import { ContextNotInitiatedError, dbSession } from '@context-db/core';
import type { FastifyInstance, preHandlerHookHandler } from 'fastify';
import t, { type Test } from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { probeApp } from '../fixtures/fastify.js';

/** A callback-style gate (a throttle, a queue): parked callbacks run on whoever opens it. */
function gate(): { readonly hook: preHandlerHookHandler; readonly parked: (() => void)[] } {
  const parked: (() => void)[] = [];
  return { hook: (_request, _reply, done) => void parked.push(() => done()), parked };
}

type Where = 'route preHandler' | 'app preHandler';

/**
 * POST /parked (behind the gate) writes `parked-hook` in a route hook and `parked` in its
 * handler; POST /opener writes `opener` and opens the gate.
 */
async function gatedApp(t: Test, db: DbConnect, table: string, where: Where) {
  const app = await probeApp(t, db, table);
  const { hook, parked } = gate();
  const routes = async (scope: FastifyInstance) => {
    if (where === 'app preHandler') scope.addHook('preHandler', hook);
    // A route hook after the gate, with database work of its own (loading the user, say).
    const load = async () => {
      await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('parked-hook')`);
    };
    scope.post<{ Querystring: { status: string } }>(
      '/parked',
      { preHandler: where === 'route preHandler' ? [hook, load] : [load] },
      async (request, reply) => {
        // Both ways of getting the session must give the parked request's own.
        const session = await dbSession(db);
        if (session !== (await request.db.session())) throw new Error('two sessions in one request');
        await session.query(`INSERT INTO ${table} (text) VALUES ('parked')`);
        return reply.code(Number(request.query.status)).send({ parked: true });
      },
    );
  };
  app.register(routes);
  app.post<{ Querystring: { status: string } }>('/opener', async (request, reply) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('opener')`);
    for (const resume of parked.splice(0)) resume();
    return reply.code(Number(request.query.status)).send({ opener: true });
  });
  return { app, parked };
}

for (const where of ['route preHandler', 'app preHandler'] as const) {
  for (const [parkedStatus, openerStatus, expected] of [
    [200, 409, ['parked-hook', 'parked']],
    [409, 200, ['opener']],
  ] as const) {
    t.test(
      `a request parked in a ${where} and resumed by another (${parkedStatus} vs ${openerStatus}) commits by its own status`,
      async (t) => {
        const { db, appName } = testDb(t);
        const table = await createTable(t);
        const { app, parked } = await gatedApp(t, db, table, where);
        const parkedRes = app.inject({ method: 'POST', url: '/parked', query: { status: String(parkedStatus) } });
        t.ok(await eventually(() => parked.length === 1), 'the request is parked');
        const opener = await app.inject({ method: 'POST', url: '/opener', query: { status: String(openerStatus) } });
        t.equal(opener.statusCode, openerStatus, opener.body);
        const res = await parkedRes;
        t.equal(res.statusCode, parkedStatus, res.body);
        t.same(await texts(table), expected, 'each row committed or rolled back with its own request');
        t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
        t.equal((await activity(appName)).idleInTransaction, 0);
      },
    );
  }
}

type Phase =
  | 'a route onRequest hook'
  | 'a route preParsing hook'
  | 'an app onRequest hook, then an app preParsing hook'
  | 'a route preSerialization hook';

/**
 * POST /parked parks in the callback hook `phase` names (passing the payload on where the phase has
 * one), then a hook after it writes `parked-hook` and the handler writes `parked`; POST /opener
 * writes `opener`, opens the gate, keeps working a little and answers 409.
 */
async function phaseApp(t: Test, db: DbConnect, table: string, phase: Phase) {
  const app = await probeApp(t, db, table);
  const parked: (() => void)[] = [];
  const park = (done: () => void) => void parked.push(done);
  const hook = (_request: unknown, _reply: unknown, done: () => void) => park(done);
  const passing = (_request: unknown, _reply: unknown, _payload: unknown, done: () => void) => park(done);
  const write = async () => {
    await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('parked-hook')`);
  };
  const writePassing = async (_request: unknown, _reply: unknown, payload: unknown) => {
    await write();
    return payload;
  };
  const routes = async (scope: FastifyInstance) => {
    if (phase === 'an app onRequest hook, then an app preParsing hook') {
      scope.addHook('onRequest', hook);
      scope.addHook('preParsing', writePassing);
    }
    const routeHooks =
      phase === 'a route onRequest hook'
        ? { onRequest: [hook, write] }
        : phase === 'a route preParsing hook'
          ? { preParsing: [passing, writePassing] }
          : phase === 'a route preSerialization hook'
            ? { preSerialization: [passing, writePassing] }
            : {};
    scope.post('/parked', routeHooks, async () => {
      await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('parked')`);
      return { parked: true };
    });
  };
  app.register(routes);
  app.post('/opener', async (request, reply) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('opener')`);
    for (const resume of parked.splice(0)) resume();
    await sleep(100);
    return reply.code(409).send({ opener: 'conflict' });
  });
  return { app, parked };
}

for (const phase of [
  'a route onRequest hook',
  'a route preParsing hook',
  'an app onRequest hook, then an app preParsing hook',
  'a route preSerialization hook',
] as const) {
  t.test(`a request parked in ${phase} and resumed by another commits by its own status`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const { app, parked } = await phaseApp(t, db, table, phase);
    const parkedRes = app.inject({ method: 'POST', url: '/parked', payload: { a: 1 } });
    t.ok(await eventually(() => parked.length === 1), 'the request is parked');
    const opener = await app.inject({ method: 'POST', url: '/opener' });
    t.equal(opener.statusCode, 409, opener.body);
    const res = await parkedRes;
    t.equal(res.statusCode, 200, res.body);
    t.same((await texts(table)).sort(), ['parked', 'parked-hook'], 'the 200 keeps both its rows, the 409 none');
    t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
    t.equal((await activity(appName)).idleInTransaction, 0);
  });
}

t.test('an opted-out route resumed by another request stays outside any context', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = await probeApp(t, db, table);
  const { hook, parked } = gate();
  let seen: unknown;
  app.get('/health', { config: { contextDb: false }, preHandler: hook }, async () => {
    try {
      await (await dbSession(db)).query(`INSERT INTO ${table} (text) VALUES ('opted-out')`);
      seen = 'dbSession() worked';
    } catch (err) {
      seen = err;
    }
    return 'ok';
  });
  app.post('/work', async (request) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('work')`);
    for (const resume of parked.splice(0)) resume();
    await sleep(100);
    return { ok: true };
  });
  const health = app.inject({ method: 'GET', url: '/health' });
  t.ok(await eventually(() => parked.length === 1), 'the opted-out request is parked');
  t.equal((await app.inject({ method: 'POST', url: '/work' })).statusCode, 200);
  t.equal((await health).statusCode, 200);
  t.type(seen, ContextNotInitiatedError, 'dbSession() in the opted-out handler has no context');
  t.same(await texts(table), ['work'], "nothing of the opted-out route in the other request's transaction");
});

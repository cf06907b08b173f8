// Two requests interleaved by a gate: one request parks a hook's callback, another request's
// handler releases it. The parked request resumes on the other's stack, so in the other's async
// context; its hooks and handler must still run in its own context, with its own session.
import type { DbConnect } from '@context-db/core';
import { dbSession } from '@context-db/core';
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
function gatedApp(t: Test, db: DbConnect, table: string, where: Where) {
  const app = probeApp(t, db, table);
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
        const { app, parked } = gatedApp(t, db, table, where);
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

// The deciding onSend checks the reply's headers as Node's writeHead will, before the COMMIT:
// a header Node refuses rolls back and answers 500, one it accepts commits. Node checks each
// value as it is (an undefined item of an array, a Symbol are refused), not its string form: a
// check on String(value) let those through, and the request committed before Node refused the
// head (found by review; over a real socket, since light-my-request's response validates headers
// differently).
import { contextDbPlugin } from '@context-db/fastify';
import Fastify from 'fastify';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { request } from '../fixtures/koa.js';

// ---------------------------------------------------------------------------------------------

for (const [label, value] of [
  ['an array header with an undefined item', ['a', undefined]],
  ['a Symbol header value', Symbol('s')],
] as const) {
  t.test(`fastify: ${label} Node refuses at writeHead is refused before the COMMIT`, async (t) => {
    const { db, appName } = testDb(t);
    const table = await createTable(t);
    const app = Fastify();
    t.teardown(() => app.close());
    await app.register(contextDbPlugin, { db });
    app.post('/note', async (request, reply) => {
      await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('note')`);
      reply.header('x-odd', value as unknown as string);
      return reply.send('saved');
    });
    // A real socket: light-my-request's response has headers of its own (raw setHeader), and
    // Node validates a writeHead object's array items only when none were set that way.
    const url = await app.listen({ port: 0, host: '127.0.0.1' });
    const res = await request(`${url}/note`).catch((err: Error) => ({ status: 0, body: err.message }));
    t.equal(res.status, 500, 'Node refuses the head: the client gets a 500');
    t.same(await texts(table), [], 'a 500 means none of the writes are durable');
    t.ok(await eventually(() => checkedOut(db) === 0), 'nothing checked out');
    t.equal((await activity(appName)).idleInTransaction, 0);
  });
}

t.test('fastify: headers Node accepts or refuses the same way before and after held', async (t) => {
  const { db } = testDb(t);
  const table = await createTable(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.post<{ Querystring: { kind: string } }>('/note', async (request, reply) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ($1)`, [request.query.kind]);
    const { kind } = request.query;
    if (kind === 'number') reply.header('x-n', 5 as unknown as string);
    if (kind === 'array') reply.header('x-a', ['a', 'b']);
    if (kind === 'badname') reply.header('x a', 'v');
    if (kind === 'badarray') reply.header('x-a', ['a', 'b\r\nInjected: 1']);
    if (kind === 'raw') reply.raw.setHeader('x-raw', ['a', 'b']);
    if (kind === 'response') {
      return reply.send(new Response('r', { status: 201, headers: { 'x-r': 'ok' } }));
    }
    return reply.send('saved');
  });
  const status = async (kind: string): Promise<number> =>
    (await app.inject({ method: 'POST', url: `/note?kind=${kind}` })).statusCode;
  t.equal(await status('number'), 200);
  t.equal(await status('array'), 200);
  t.equal(await status('badname'), 500);
  t.equal(await status('badarray'), 500);
  t.equal(await status('raw'), 200);
  t.equal(await status('response'), 201);
  t.same((await texts(table)).sort(), ['array', 'number', 'raw', 'response'].sort());
});

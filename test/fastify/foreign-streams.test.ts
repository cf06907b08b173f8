// A stream body Fastify pipes (it has pipe()) that is not a node:stream Readable
// (minipass, as node-tar and many npm libraries return; readable-stream's classes). Fastify
// sends it like any stream: the plugin must hold it like one.
import { createRequire } from 'node:module';
import { setTimeout as sleep } from 'node:timers/promises';
import { contextDbPlugin } from '@context-db/fastify';
import Fastify, { type FastifyInstance } from 'fastify';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';

const { Minipass } = createRequire(import.meta.url)(
  '../../node_modules/.pnpm/minipass@7.1.3/node_modules/minipass',
) as {
  Minipass: new () => NodeJS.ReadWriteStream & { emit(event: string, ...args: unknown[]): boolean };
};

function failingBody() {
  const body = new Minipass();
  setTimeout(() => body.emit('error', new Error('the archive failed before any byte')), 20);
  return body;
}

t.test('without the plugin, Fastify answers 500 for such a stream failing first', async (t) => {
  const app: FastifyInstance = Fastify();
  t.teardown(() => app.close());
  app.get('/archive', async (_request, reply) => reply.type('application/octet-stream').send(failingBody()));
  const res = await app.inject({ method: 'GET', url: '/archive' });
  t.equal(res.statusCode, 500);
});

t.test('a non-node:stream body that fails before its first chunk rolls back', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = Fastify();
  t.teardown(() => app.close());
  await app.register(contextDbPlugin, { db });
  app.post('/archive', async (request, reply) => {
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ('export logged')`);
    await sleep(1);
    return reply.type('application/octet-stream').send(failingBody());
  });
  const res = await app.inject({ method: 'POST', url: '/archive' });
  t.equal(res.statusCode, 500);
  t.same(await texts(table), [], 'a 500 means none of the writes are durable');
  t.ok(await eventually(() => checkedOut(db) === 0));
  t.equal((await activity(appName)).idleInTransaction, 0);
});

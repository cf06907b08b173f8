// A hijacked reply writes its own head. Once that head is on the wire, its status is the outcome:
// a status changed after it (reply.raw.statusCode = 500 before end()) does not decide. Over a
// real socket: app.inject() reports the status the response ends with, not the one in its head.
import type { AddressInfo } from 'node:net';
import t from 'tap';
import { activity, checkedOut, createTable, eventually, testDb, texts } from '../fixtures/db.js';
import { probeApp } from '../fixtures/fastify.js';

interface Query {
  readonly text: string;
  /** The status written in the head. */
  readonly sent: string;
  /** The status set on the raw response after the head went out. */
  readonly after: string;
  /** 'explicit': writeHead(); 'implicit': the first write() sends the head. */
  readonly head: 'explicit' | 'implicit';
}

t.test('a hijacked reply is decided by the status in the head it sent, not one set after', async (t) => {
  const { db, appName } = testDb(t);
  const table = await createTable(t);
  const app = await probeApp(t, db, table);
  app.get<{ Querystring: Query }>('/hijack', async (request, reply) => {
    const { text, sent, after, head } = request.query;
    reply.hijack();
    await (await request.db.session()).query(`INSERT INTO ${table} (text) VALUES ($1)`, [text]);
    if (head === 'explicit') reply.raw.writeHead(Number(sent), { 'content-type': 'text/plain' });
    else reply.raw.statusCode = Number(sent);
    reply.raw.write('partial,');
    reply.raw.statusCode = Number(after);
    reply.raw.end('done');
  });
  const cases: Query[] = [
    { text: 'explicit-200-then-500', sent: '200', after: '500', head: 'explicit' },
    { text: 'explicit-500-then-200', sent: '500', after: '200', head: 'explicit' },
    { text: 'implicit-201-then-500', sent: '201', after: '500', head: 'implicit' },
    { text: 'implicit-409-then-200', sent: '409', after: '200', head: 'implicit' },
  ];
  await app.listen({ port: 0, host: '127.0.0.1' });
  const { port } = app.server.address() as AddressInfo;
  for (const query of cases) {
    const res = await fetch(`http://127.0.0.1:${port}/hijack?${new URLSearchParams({ ...query })}`);
    t.equal(res.status, Number(query.sent), `${query.text}: the client got the head's status`);
    t.equal(await res.text(), 'partial,done');
  }
  t.ok(await eventually(() => checkedOut(db) === 0), 'every request released its connection');
  t.same(
    (await texts(table)).sort(),
    ['explicit-200-then-500', 'implicit-201-then-500'],
    'committed exactly where the head said success',
  );
  t.equal((await activity(appName)).idleInTransaction, 0);
});

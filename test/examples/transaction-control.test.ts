// The example apps' transaction-control routes, in all three frameworks: concurrent tickets under
// SERIALIZABLE with retry each get a number of their own; the report route runs read-only; an
// order's outbox event is published by onCommit before the 201 goes out, and never for an order
// that was rolled back.
import { type ExampleStore, outbox } from '@context-db/examples-shared';
import t, { type Test } from 'tap';
import { buildApp as expressApp } from '../../examples/express/src/app.js';
import { buildApp as fastifyApp } from '../../examples/fastify/src/app.js';
import { buildApp as koaApp } from '../../examples/koa/src/app.js';
import { checkedOut, createTable, testDb, texts } from '../fixtures/db.js';
import { listen } from '../fixtures/express.js';
import { request } from '../fixtures/koa.js';

type Call = (method: 'GET' | 'POST', path: string) => Promise<{ status: number; body: string }>;

const frameworks: Record<string, (t: Test, store: ExampleStore) => Promise<Call>> = {
  async fastify(t, store) {
    const app = fastifyApp(store);
    t.teardown(() => app.close());
    return async (method, url) => {
      const res = await app.inject({ method, url });
      return { status: res.statusCode, body: res.body };
    };
  },
  async express(t, store) {
    const app = expressApp(store);
    app.set('env', 'test');
    const url = await listen(t, app);
    return (method, path) => request(`${url}${path}`, { method });
  },
  async koa(t, store) {
    const app = koaApp(store);
    app.silent = true;
    const url = await listen(t, app.callback());
    return (method, path) => request(`${url}${path}`, { method });
  },
};

for (const [name, start] of Object.entries(frameworks)) {
  t.test(`${name}: tickets, the read-only report, the outbox`, async (t) => {
    const { db } = testDb(t);
    const table = await createTable(t);
    const call = await start(t, { db, table });

    const tickets = await Promise.all(Array.from({ length: 5 }, () => call('POST', '/ticket')));
    t.same(
      tickets.map((r) => r.status),
      [200, 200, 200, 200, 200],
    );
    t.same(tickets.map((r) => (JSON.parse(r.body) as { ticket: number }).ticket).sort(), [1, 2, 3, 4, 5]);
    t.same((await texts(table)).sort(), ['ticket-1', 'ticket-2', 'ticket-3', 'ticket-4', 'ticket-5']);

    const report = await call('GET', '/report');
    t.same(JSON.parse(report.body), { rows: 5, readOnly: 'on' });

    const id = `${name}-${Date.now()}`;
    t.equal((await call('POST', `/orders/${id}`)).status, 201);
    t.ok(outbox.includes(`order-${id} placed`), 'published before the response was sent');
    t.equal((await call('POST', `/orders/${id}-r/rejected`)).status, 422);
    t.notOk(outbox.includes(`order-${id}-r placed`), 'no event for a rolled-back order');
    t.same(JSON.parse((await call('GET', '/outbox')).body), outbox);
    t.equal(checkedOut(db), 0);
  });
}

import { type ExampleStore, outbox, placeOrder, REPORT_OPTIONS, report, takeTicket } from '@context-db/examples-shared';
import type { FastifyInstance } from 'fastify';

/** Transaction control: a serializable retried block, a read-only route, an after-commit event. */
export function transactionControlRoutes(app: FastifyInstance, store: ExampleStore): void {
  app.post('/ticket', async () => ({ ticket: await takeTicket(store) }));
  app.get('/report', { config: { contextDb: { transaction: REPORT_OPTIONS } } }, () => report(store));
  app.post<{ Params: { id: string } }>('/orders/:id', async (request, reply) => {
    await placeOrder(store, request.params.id);
    return reply.code(201).send({ ok: true }); // the event is in the outbox before this is sent
  });
  app.post<{ Params: { id: string } }>('/orders/:id/rejected', async (request, reply) => {
    await placeOrder(store, request.params.id);
    return reply.code(422).send({ error: 'rejected: the order is rolled back, no event' });
  });
  app.get('/outbox', async () => outbox);
}

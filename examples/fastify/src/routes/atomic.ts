import { atomic, atomicWithPreviousTransaction, type ExampleStore } from '@context-db/examples-shared';
import type { FastifyInstance } from 'fastify';

/** atomicDbSession: a transaction of its own, then the same with a transaction already open. */
export function atomicRoutes(app: FastifyInstance, store: ExampleStore): void {
  app.post('/atomic', async () => {
    await atomic(store);
    return { ok: true };
  });
  app.post('/atomic-prev-transaction', async () => {
    await atomicWithPreviousTransaction(store);
    return { ok: true };
  });
}

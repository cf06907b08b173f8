import { concurrentQueries, type ExampleStore } from '@context-db/examples-shared';
import type { FastifyInstance } from 'fastify';

/** The seed's five ways to run queries concurrently, plus one that fails, all at once. */
export function concurrentRoute(app: FastifyInstance, store: ExampleStore): void {
  app.post('/concurrent', async () => {
    await concurrentQueries(store);
    return { ok: true };
  });
}

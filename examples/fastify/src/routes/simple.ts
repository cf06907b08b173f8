import { type ExampleStore, simpleUsage } from '@context-db/examples-shared';
import type { FastifyInstance } from 'fastify';

/** A query on the request's session, committed before the 200 is sent. */
export function simpleRoute(app: FastifyInstance, store: ExampleStore): void {
  app.post('/simple', async () => {
    await simpleUsage(store);
    return { ok: true };
  });
}

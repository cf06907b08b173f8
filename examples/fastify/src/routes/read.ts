import { type ExampleStore, listRows } from '@context-db/examples-shared';
import type { FastifyInstance } from 'fastify';

/** GET /rows reads on the request's session; GET /health never touches the database. */
export function readRoutes(app: FastifyInstance, store: ExampleStore): void {
  app.get('/rows', async () => listRows(store));
  app.get('/health', async () => ({ ok: true }));
}
